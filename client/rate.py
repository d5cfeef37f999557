"""Adaptive rate: pick C, n (and the hevc QP) frame by frame so the stream's bitrate tracks a target.

The ladder is every configuration the server serves (GetCapabilities: C values x n values; hevc adds
QPs), ordered by an estimated cost: bits grow with C * n, and for lossy hevc halve every 6 QP (x265's
rate rule of thumb). For jxl/png/raw, n below 4 is left out whenever 4 or more is served: at C=64,
n=4 costs at most a point of AP50 while fewer channels or bits cost much more (docs/FINDINGS.md), so
the ladder spends bytes on channels first. Of rungs with equal cost only the one with the larger C
is kept, so every step up costs more.

The controller measures throughput where the client sends: bytes of the frames sent over the time they
took to send, over the last `window` frames of the current rung. The in-flight window ties sending to
answers, so a slow link or server shows up as a lower send rate. Then, at most one rung per decision:
- above target * (1 + tolerance): one rung down;
- below target, and the next rung's estimate (measured rate x cost ratio) still within target: one rung up;
- otherwise stay. After a move, the new rung is measured afresh (`min_frames` sends) before the next move.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

HEVC_QPS: tuple[int, ...] = (37, 32, 27, 22)
HEVC_BITS = 8  # hevc codes n-bit values scaled to the full 8-bit range; the QP sets the rate
MIN_USEFUL_BITS = 4


@dataclass(frozen=True)
class Rung:
    """One coding configuration: C channels at n bits, hevc QP (None: lossless, or not hevc)."""

    channels: int
    bits: int
    qp: int | None = None

    @property
    def cost(self) -> float:
        """Estimated bits relative to other rungs: C * n, halved every 6 QP above 27 (doubled below)."""
        scale = 2.0 ** ((27 - self.qp) / 6) if self.qp is not None else 1.0
        return self.channels * self.bits * scale

    def __str__(self) -> str:
        return f"C={self.channels} n={self.bits}" + (f" qp={self.qp}" if self.qp is not None else "")


def build_ladder(channels: Sequence[int], bits: Sequence[int], codec: str) -> list[Rung]:
    """The rungs for `codec` over the served C and n values, cheapest first (see the module docstring)."""
    if not channels or not bits:
        raise ValueError("channels and bits: the server must serve at least one value of each")
    if codec == "hevc":
        n = HEVC_BITS if HEVC_BITS in bits else max(bits)
        rungs = [Rung(c, n, qp) for c in channels for qp in HEVC_QPS]
    else:
        useful = [n for n in bits if n >= MIN_USEFUL_BITS] or list(bits)
        rungs = [Rung(c, n) for c in channels for n in useful]
    ladder: list[Rung] = []
    for rung in sorted(set(rungs), key=lambda r: (r.cost, -r.channels)):
        if not ladder or rung.cost > ladder[-1].cost:  # of equal costs, keep the larger C only
            ladder.append(rung)
    return ladder


class RateController:
    """Chooses the rung for the next frame from the measured send rate (see the module docstring)."""

    def __init__(
        self,
        ladder: Sequence[Rung],
        target_kbps: float,
        *,
        start: int | None = None,
        window: int = 8,
        min_frames: int = 4,
        tolerance: float = 0.1,
    ) -> None:
        if not ladder:
            raise ValueError("ladder: needs at least one rung")
        if target_kbps <= 0 or not 2 <= min_frames <= window or not 0 <= tolerance < 1:
            raise ValueError(
                f"target_kbps > 0, 2 <= min_frames <= window and 0 <= tolerance < 1 needed, got "
                f"{target_kbps}, {min_frames}, {window}, {tolerance}"
            )
        self.ladder = list(ladder)
        self.target_kbps = target_kbps
        self.min_frames, self.tolerance = min_frames, tolerance
        self.index = len(self.ladder) // 2 if start is None else start
        self._sends: collections.deque[tuple[float, int]] = collections.deque(maxlen=window)
        self.moves = 0

    @property
    def rung(self) -> Rung:
        """The configuration for the next frame."""
        return self.ladder[self.index]

    def measured_kbps(self) -> float | None:
        """kbit/s over the recent sends of this rung: bytes after the first over the time since it (None: too few)."""
        if len(self._sends) < self.min_frames:
            return None
        span = self._sends[-1][0] - self._sends[0][0]
        if span <= 0:
            return None
        return 8 * sum(n for _, n in list(self._sends)[1:]) / span / 1000

    def update(self, sent_at: float, nbytes: int) -> Rung:
        """Record a frame of `nbytes` sent at `sent_at` (seconds, monotonic) with the current rung; the next rung."""
        self._sends.append((sent_at, nbytes))
        kbps = self.measured_kbps()
        if kbps is None:
            return self.rung
        step = 0
        if kbps > self.target_kbps * (1 + self.tolerance) and self.index > 0:
            step = -1
        elif kbps < self.target_kbps and self.index + 1 < len(self.ladder):
            estimate = kbps * self.ladder[self.index + 1].cost / self.rung.cost
            step = 1 if estimate <= self.target_kbps else 0
        if step:
            before = self.rung
            self.index += step
            self.moves += 1
            self._sends.clear()
            log.debug("rate kbps=%.0f target=%.0f from=%s to=%s", kbps, self.target_kbps, before, self.rung)
        return self.rung
