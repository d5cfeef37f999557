"""NumPy reference implementations of the BaF kernels, written straight from the paper (eq. 4-6)
and the numeric contract in docs/architecture.md. Tests and bench/kernels.py compare against them."""

import math

import numpy as np


def q_dtype(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16


def quantize(z: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 4 with m, M = per-channel min/max rounded to float16."""
    maxq = np.float32(2**bits - 1)
    lo = z.min(axis=(1, 2)).astype(np.float16)
    hi = z.max(axis=(1, 2)).astype(np.float16)
    m = lo.astype(np.float32)[:, None, None]
    span = hi.astype(np.float32)[:, None, None] - m
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (z - m) / span * maxq
    v = np.where(span == 0, np.float32(0), v)
    return np.clip(np.round(v), 0, maxq).astype(q_dtype(bits)), lo, hi


def step(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """The quantizer step (M - m) / (2^n - 1) per channel, float32 [C,1,1]."""
    return (hi.astype(np.float32) - lo.astype(np.float32))[:, None, None] / np.float32(2**bits - 1)


def dequantize(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Eq. 5, Q / (2^n - 1) * (M - m) + m, evaluated as Q * step + m (the bin centres of eq. 6)."""
    return q.astype(np.float32) * step(lo, hi, bits) + lo.astype(np.float32)[:, None, None]


def bin_bounds(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The closed interval of values that fall in each element's quantizer bin (clipped at the ends)."""
    maxq = np.float32(2**bits - 1)
    m = lo.astype(np.float32)[:, None, None]
    d = step(lo, hi, bits)
    k = q.astype(np.float32)
    lower = m + np.maximum(k - np.float32(0.5), np.float32(0)) * d
    upper = m + np.minimum(k + np.float32(0.5), maxq) * d
    return lower, upper


def clamp_to_bins(pred: np.ndarray, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Eq. 6: keep pred where it is in the bin of q, else the nearest bin boundary b."""
    lower, upper = bin_bounds(q, lo, hi, bits)
    return np.minimum(np.maximum(pred, lower), upper)


def grid(channels: int) -> tuple[int, int]:
    """Section 3.2: ceil(log2(C)/2) powers of two across, the rows needed down."""
    cols = 2 ** math.ceil(math.log2(channels) / 2)
    return math.ceil(channels / cols), cols


def tile(q: np.ndarray) -> np.ndarray:
    c, h, w = q.shape
    rows, cols = grid(c)
    image = np.zeros((rows * h, cols * w), q.dtype)
    for i in range(c):
        r, k = divmod(i, cols)
        image[r * h : (r + 1) * h, k * w : (k + 1) * w] = q[i]
    return image


def untile(image: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    _, cols = grid(channels)
    return np.stack(
        [image[(i // cols) * height : (i // cols + 1) * height, (i % cols) * width : (i % cols + 1) * width]
         for i in range(channels)]
    )
