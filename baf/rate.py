"""Rate accounting: bytes and bits of whole bitstreams, header and side info included (as in the paper)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from baf import bitstream


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


def bd_rate(reference: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float | None:
    """Bjøntegaard delta rate of `test` against `reference`: mean rate change at equal quality (-0.3: 30% fewer bits).

    Each curve is (rate, quality) points, e.g. (mean bytes, AP50). As in VCEG-M33, log(rate) is fitted by a
    polynomial in quality (cubic; lower degree with fewer than four points), both fits are integrated over the
    quality range the curves share, and exp(mean difference) - 1 is returned. None when they share no range.
    """
    import numpy as np

    fits, ranges = [], []
    for points in (reference, test):
        if len(points) < 2:
            raise ValueError(f"a curve needs at least 2 points, got {len(points)}")
        rate, quality = np.array(points, dtype=np.float64).T
        if (rate <= 0).any():
            raise ValueError("rates must be > 0")
        fits.append(np.polynomial.Polynomial.fit(quality, np.log(rate), min(3, len(points) - 1)))
        ranges.append((quality.min(), quality.max()))
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if hi <= lo:
        return None
    ref, tst = (f.integ() for f in fits)
    mean_diff = ((tst(hi) - tst(lo)) - (ref(hi) - ref(lo))) / (hi - lo)
    return float(np.expm1(mean_diff))
