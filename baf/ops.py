"""BaF tensor kernels (paper eq. 4-6): native NumPy versions, and torch versions for tensors on a GPU.

Numeric contract (docs/architecture.md): tensors are C-contiguous `[C, H, W]` float32; `lo`/`hi`
are per-channel float16 side info; `q` is uint8 for bits <= 8 and uint16 up to 16. Every bad
argument raises `ValueError` whose message starts with the argument's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from baf import _native

if TYPE_CHECKING:
    import torch

MAX_BITS = 16


def quantize(z: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize each channel of `z` [C,H,W] float32 to `bits` bits (eq. 4).

    Returns `(q, lo, hi)`: `q` [C,H,W] (uint8 or uint16) and the per-channel minimum and maximum
    rounded to float16 [C]. A channel that is constant after rounding gives q = 0.
    Raises ValueError for NaN/inf or values beyond the float16 range (|z| >= 65520).
    """
    return _native.quantize(z, bits)


def dequantize(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Map quantized channels back to float32 (eq. 5) as `q * step + lo`, `step = (hi - lo) / (2**bits - 1)`."""
    return _native.dequantize(q, lo, hi, bits)


def clamp_to_bins(pred: np.ndarray, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Clip each element of `pred` [C,H,W] into the quantizer bin of `q` (eq. 6); in-bin values stay."""
    return _native.clamp_to_bins(pred, q, lo, hi, bits)


def tile(q: np.ndarray) -> np.ndarray:
    """Lay the channels of `q` [C,H,W] out as one 2-D image, row-major on `grid(C)`, unused cells 0."""
    return _native.tile(q)


def untile(image: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Exact inverse of `tile`: cut `image` back into [channels, height, width]."""
    return _native.untile(image, channels, height, width)


def grid(channels: int) -> tuple[int, int]:
    """The `(rows, cols)` of the tile grid: cols = 2**ceil(log2(C)/2), rows = ceil(C/cols)."""
    return _native.grid(channels)


def _check_torch_args(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> float:
    """Validate the shared arguments of the torch kernels; returns 2**bits - 1 as a float."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected an int in 1..{MAX_BITS}, got {bits!r}")
    if q.dim() < 3:
        raise ValueError(f"q: expected [..., C, H, W], got shape {tuple(q.shape)}")
    if q.dtype.is_floating_point:
        raise ValueError(f"q: expected an integer dtype, got {q.dtype}")
    for name, side in (("lo", lo), ("hi", hi)):
        if tuple(side.shape) != tuple(q.shape[:-2]):
            raise ValueError(f"{name}: expected shape {tuple(q.shape[:-2])}, got {tuple(side.shape)}")
    return float(2**bits - 1)


def _side_info(lo: torch.Tensor, hi: torch.Tensor, maxq: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, step) as float32 broadcastable over [..., C, H, W], step = (hi - lo) / maxq."""
    lo32 = lo.float()[..., None, None]
    return lo32, (hi.float()[..., None, None] - lo32) / maxq


def dequantize_torch(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """`dequantize` for torch tensors on any device; q [..., C, H, W], lo/hi [..., C] (float16 or float32).

    Same float32 operations in the same order as the native kernel, so equal to it on CPU.
    """
    maxq = _check_torch_args(q, lo, hi, bits)
    lo32, step = _side_info(lo, hi, maxq)
    return q.float() * step + lo32


def clamp_to_bins_torch(
    pred: torch.Tensor, q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int
) -> torch.Tensor:
    """`clamp_to_bins` for torch tensors on any device; shapes as in `dequantize_torch`, pred like q."""
    maxq = _check_torch_args(q, lo, hi, bits)
    if pred.shape != q.shape:
        raise ValueError(f"pred: shape {tuple(pred.shape)} differs from q's {tuple(q.shape)}")
    lo32, step = _side_info(lo, hi, maxq)
    k = q.float()
    lower = lo32 + (k - 0.5).clamp(min=0.0) * step
    upper = lo32 + (k + 0.5).clamp(max=maxq) * step
    return pred.float().maximum(lower).minimum(upper)


def quantize_torch(z: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantize` for a batch of torch tensors on any device: z [..., C, H, W] float32 -> (q, lo, hi).

    q is int32 (torch has no uint16), lo/hi float16 [..., C]. Same float32 operations as the native
    kernel; torch.round breaks ties to even, so q may differ from it by one step at exact ties.
    """
    import torch

    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected an int in 1..{MAX_BITS}, got {bits!r}")
    if z.dim() < 3 or z.dtype != torch.float32:
        raise ValueError(f"z: expected float32 [..., C, H, W], got {z.dtype} {tuple(z.shape)}")
    maxq = float(2**bits - 1)
    flat = z.flatten(-2)
    lo, hi = flat.amin(-1).half(), flat.amax(-1).half()
    lo32, span = lo.float()[..., None, None], (hi.float() - lo.float())[..., None, None]
    v = torch.where(span == 0, torch.zeros_like(z), (z - lo32) / span * maxq)
    return v.round().clamp(0, maxq).to(torch.int32), lo, hi
