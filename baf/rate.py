"""Rate accounting: bytes and bits of whole bitstreams, header and side info included (as in the paper)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from baf import bitstream

T = TypeVar("T")


@dataclass(frozen=True)
class FrameRate:
    """Where the bytes of one frame's bitstream go, and what they cost per transmitted element."""

    header_bytes: int
    side_info_bytes: int
    payload_bytes: int
    elements: int  # C * H * W

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole bitstream."""
        return self.header_bytes + self.side_info_bytes + self.payload_bytes

    @property
    def bits_per_element(self) -> float:
        """Bits of the whole bitstream per transmitted feature element."""
        return 8 * self.total_bytes / self.elements

    def ratio_to(self, reference_bytes: int) -> float:
        """total / reference, e.g. against the source frame's JPEG (below 1 means smaller)."""
        if reference_bytes <= 0:
            raise ValueError(f"reference_bytes must be > 0, got {reference_bytes}")
        return self.total_bytes / reference_bytes

    def saved_vs(self, reference_bytes: int) -> float:
        """Fraction of `reference_bytes` saved: 1 - ratio (0.707 means 70.7% smaller)."""
        return 1.0 - self.ratio_to(reference_bytes)


def frame_rate(data: bytes) -> FrameRate:
    """The rate of one bitstream (parsed, so it must be valid)."""
    frame = bitstream.parse(data)
    h = frame.header
    return FrameRate(bitstream.HEADER_BYTES, h.side_info_bytes, len(frame.payload), h.elements)


def pareto_front(items: Sequence[T], rate: Callable[[T], float], quality: Callable[[T], float]) -> list[T]:
    """The items no other item beats with fewer (or equal) rate and a higher quality, in increasing rate."""
    front: list[T] = []
    for item in sorted(items, key=lambda i: (rate(i), -quality(i))):
        if not front or quality(item) > quality(front[-1]):
            front.append(item)
    return front


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson derivatives at the knots: the Hermite cubic through them is monotone where the data is."""
    h, delta = np.diff(x), np.diff(y) / np.diff(x)
    if len(x) == 2:
        return np.array([delta[0], delta[0]])
    d = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    d[1:-1] = np.where(same, harmonic, 0.0)
    for end, (h0, h1, d0, d1) in ((0, (h[0], h[1], delta[0], delta[1])), (-1, (h[-1], h[-2], delta[-1], delta[-2]))):
        slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(slope) != np.sign(d0):
            slope = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(slope) > abs(3 * d0):
            slope = 3 * d0
        d[end] = slope
    return d


def _pchip_mean(x: np.ndarray, y: np.ndarray, lo: float, hi: float, samples: int = 4001) -> float:
    """Mean over [lo, hi] (inside [x0, x_end]) of the monotone piecewise cubic Hermite interpolant of (x, y)."""
    d = _pchip_slopes(x, y)
    t = np.linspace(lo, hi, samples)
    i = np.clip(np.searchsorted(x, t, side="right") - 1, 0, len(x) - 2)
    h = x[i + 1] - x[i]
    s = (t - x[i]) / h
    v = ((2 * s**3 - 3 * s**2 + 1) * y[i] + (s**3 - 2 * s**2 + s) * h * d[i]
         + (-2 * s**3 + 3 * s**2) * y[i + 1] + (s**3 - s**2) * h * d[i + 1])  # fmt: skip
    return float(((v[1:] + v[:-1]) / 2).mean())  # trapezoid rule on the uniform grid


def bd_rate(reference: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float | None:
    """Bjøntegaard delta rate of `test` against `reference`: mean rate change at equal quality (-0.3: 30% fewer bits).

    Each curve is (rate, quality) points, e.g. (mean bytes, AP50). Points another point of the same curve beats
    (no more rate, higher quality) are dropped, so log(rate) rises with quality; it is interpolated piecewise by
    monotone cubic Hermite (pchip) rather than VCEG-M33's one global cubic, which overshoots wildly when the
    quality of a curve saturates. The mean log-rate difference over the quality range both curves share gives
    exp(difference) - 1. None when they share no range.
    """
    curves = []
    for points in (reference, test):
        if len(points) < 2:
            raise ValueError(f"a curve needs at least 2 points, got {len(points)}")
        if any(r <= 0 for r, _ in points):
            raise ValueError("rates must be > 0")
        front = pareto_front(points, rate=lambda p: p[0], quality=lambda p: p[1])
        rate, quality = np.array(front, dtype=np.float64).T
        curves.append((quality, np.log(rate)))
    if any(len(q) < 2 for q, _ in curves):
        return None
    lo, hi = max(q[0] for q, _ in curves), min(q[-1] for q, _ in curves)
    if hi <= lo:
        return None
    ref, tst = (_pchip_mean(q, lr, lo, hi) for q, lr in curves)
    return float(np.expm1(tst - ref))
