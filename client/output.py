"""Where results go: JSON lines, an annotated H.264 video, a live progress line, and the run's summary."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from baf.codecs.hevc import ffmpeg_path
from baf.errors import BafError

log = logging.getLogger(__name__)

# One colour per class index (cycled), readable on video.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
)  # fmt: skip
FFMPEG_CLOSE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Detection:
    """One detected object: box (x1, y1, x2, y2) in source-frame pixels, score, class index, COCO id and name."""

    box: tuple[float, float, float, float]
    score: float
    class_index: int
    category_id: int
    class_name: str


@dataclass(frozen=True)
class FrameOutcome:
    """One frame's answer, as the client records it.

    `bytes` is the bitstream the server answered (after a reconnect, the one resent); `error` is
    (code, message) when the frame has no result: the proto's FrameErrorCode name without its prefix
    (e.g. DROPPED), or ENCODE_FAILED / TOO_LARGE for a frame the client could not send. `image` is kept
    only when something draws on it.
    """

    sequence: int
    index: int
    name: str
    width: int
    height: int
    bytes: int
    channels: int
    bits: int
    codec: str
    qp: int | None
    round_trip_ms: float
    server_ms: float | None = None
    batch_size: int | None = None
    detections: tuple[Detection, ...] = ()
    error: tuple[str, str] | None = None
    jpeg_bytes: int | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        """The JSON-lines object of this frame (no pixels)."""
        return {
            "sequence": self.sequence, "frame": self.index, "name": self.name,
            "width": self.width, "height": self.height, "bytes": self.bytes,
            "channels": self.channels, "bits": self.bits, "codec": self.codec, "qp": self.qp,
            "round_trip_ms": round(self.round_trip_ms, 2),
            "server_ms": None if self.server_ms is None else round(self.server_ms, 2),
            "batch_size": self.batch_size,
            "detections": [
                {"box": [round(v, 2) for v in d.box], "score": round(d.score, 5), "class": d.class_index,
                 "class_name": d.class_name, "category_id": d.category_id}
                for d in self.detections
            ],
            "error": None if self.error is None else {"code": self.error[0], "message": self.error[1]},
            **({"jpeg_bytes": self.jpeg_bytes} if self.jpeg_bytes is not None else {}),
        }  # fmt: skip


class JsonLinesWriter:
    """One JSON object per frame and line, flushed per line so a reader can follow along; '-' is stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file: TextIO = sys.stdout if str(path) == "-" else path.open("w")
        except OSError as e:
            raise BafError(f"cannot write {path}: {e.strerror}") from None

    def write(self, outcome: FrameOutcome) -> None:
        """Append the frame's line."""
        self._file.write(json.dumps(outcome.to_json(), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (not stdout)."""
        if self._file is not sys.stdout:
            self._file.close()


def draw_detections(image: np.ndarray, detections: tuple[Detection, ...]) -> np.ndarray:
    """A copy of the RGB frame with each box outlined and labelled "name score" in its class colour."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(2, round(min(image.shape[:2]) / 300))
    for d in detections:
        colour = _PALETTE[d.class_index % len(_PALETTE)]
        x1, y1, x2, y2 = d.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = f"{d.class_name or d.class_index} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        x = max(0.0, min(x1, image.shape[1] - (right - left) - 4))  # keep the label inside the frame
        y = max(0.0, y1 - (bottom - top) - 4)
        draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 4), fill=colour)
        draw.text((x + 2, y + 2 - top), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


class AnnotatedVideo:
    """Frames with their detections drawn, encoded by one long-lived ffmpeg libx264 process into `path`.

    The video takes the first frame's size; later frames of another size (a folder of images) are
    resized to it. Odd sizes are padded to even, which yuv420p needs.
    """

    def __init__(self, path: Path, fps: float = 10.0) -> None:
        self.path, self.fps = path, fps
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # a file, never a pipe that could fill and block

    def _start(self, width: int, height: int) -> subprocess.Popen[bytes]:
        args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "pipe:",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(self.path)]  # fmt: skip
        try:
            return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        except OSError as e:
            raise BafError(f"--annotate: cannot start ffmpeg: {e}") from None

    def write(self, image: np.ndarray, detections: tuple[Detection, ...]) -> None:
        """Draw the detections on the RGB frame and append it to the video."""
        if self._size is None:
            self._size = (image.shape[1], image.shape[0])
            self._proc = self._start(*self._size)
        if (image.shape[1], image.shape[0]) != self._size:
            image = np.asarray(Image.fromarray(image).resize(self._size, Image.Resampling.BILINEAR))
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(draw_detections(image, detections).tobytes())
        except BrokenPipeError:
            raise BafError(f"--annotate: ffmpeg stopped writing {self.path}: {self._tail()}") from None
        self.frames += 1

    def _tail(self) -> str:
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "no message from ffmpeg"

    def close(self) -> None:
        """Finish the file: close ffmpeg's input and wait for it to write the trailer."""
        if self._proc is None:
            self._stderr.close()
            return
        try:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            code = self._proc.wait(timeout=FFMPEG_CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise BafError(
                f"--annotate: ffmpeg did not finish {self.path} within {FFMPEG_CLOSE_TIMEOUT_S:g} s"
            ) from None
        finally:
            self._proc = None
        try:
            if code != 0:
                raise BafError(f"--annotate: ffmpeg failed on {self.path}: {self._tail()}")
        finally:
            self._stderr.close()


class ProgressLine:
    """A live line on a terminal: frames, fps, kB/frame, round-trip ms and the current C/n; at most 4 updates/s."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._start = time.monotonic()
        self._last = 0.0
        self._frames = 0
        self._bytes = 0
        self._rtt: list[float] = []
        self._latest: FrameOutcome | None = None

    def update(self, outcome: FrameOutcome) -> None:
        """Count the frame and redraw the line if 0.25 s have passed."""
        self._frames += 1
        self._bytes += outcome.bytes
        self._rtt = (self._rtt + [outcome.round_trip_ms])[-50:]
        self._latest = outcome
        if self.enabled and time.monotonic() - self._last >= 0.25:
            self._draw(outcome)

    def _draw(self, outcome: FrameOutcome) -> None:
        now = self._last = time.monotonic()
        fps = self._frames / max(now - self._start, 1e-9)
        qp = f" qp={outcome.qp}" if outcome.qp is not None else ""
        self.stream.write(
            f"\r{self._frames} frames  {fps:.1f} fps  {self._bytes / self._frames / 1000:.1f} kB/frame  "
            f"rtt {statistics.median(self._rtt):.0f} ms  C={outcome.channels} n={outcome.bits}{qp}   "
        )
        self.stream.flush()

    def close(self) -> None:
        """Show the final figures and end the line, so later output starts on a fresh one."""
        if self.enabled and self._latest is not None:
            self._draw(self._latest)
            self.stream.write("\n")
            self.stream.flush()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Summary:
    """What a stream did, accumulated frame by frame; `lines()` formats it for people."""

    server: str
    source: str
    frames: int = 0
    errors: int = 0
    detections: int = 0
    bytes: list[int] = field(default_factory=list)
    jpeg_bytes: list[int] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    rungs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def add(self, outcome: FrameOutcome) -> None:
        """Count one answered frame."""
        self.frames += 1
        self.errors += outcome.error is not None
        self.detections += len(outcome.detections)
        self.bytes.append(outcome.bytes)
        if outcome.jpeg_bytes is not None:
            self.jpeg_bytes.append(outcome.jpeg_bytes)
        self.round_trip_ms.append(outcome.round_trip_ms)
        qp = f" qp={outcome.qp}" if outcome.qp is not None else ""
        key = f"{outcome.codec} C={outcome.channels} n={outcome.bits}{qp}"
        self.rungs[key] = self.rungs.get(key, 0) + 1

    def to_json(self) -> dict[str, object]:
        """The summary's figures as plain JSON."""
        mean_bytes = statistics.fmean(self.bytes) if self.bytes else 0.0
        return {
            "server": self.server, "source": self.source, "frames": self.frames, "errors": self.errors,
            "detections": self.detections, "mean_bytes": mean_bytes,
            "mean_jpeg_bytes": statistics.fmean(self.jpeg_bytes) if self.jpeg_bytes else None,
            "fps": self.frames / self.seconds if self.seconds > 0 else None,
            "round_trip_ms_p50": percentile(self.round_trip_ms, 50),
            "round_trip_ms_p95": percentile(self.round_trip_ms, 95),
            "reconnects": self.reconnects, "configurations": self.rungs, "seconds": self.seconds,
        }  # fmt: skip

    def lines(self) -> list[str]:
        """The summary as a few lines of text."""
        j = self.to_json()
        mean_kb = float(j["mean_bytes"]) / 1000  # type: ignore[arg-type]
        out = [f"{self.frames} frames from {self.source} via {self.server} in {self.seconds:.1f} s "
               f"({j['fps'] or 0:.2f} fps); {self.detections} detections"
               + (f"; {self.errors} frames answered with an error" if self.errors else "")
               + (f"; {self.reconnects} reconnects" if self.reconnects else "")]  # fmt: skip
        size = f"mean {mean_kb:.1f} kB/frame"
        if self.jpeg_bytes:
            jpeg = statistics.fmean(self.jpeg_bytes)
            size += f" vs {jpeg / 1000:.1f} kB as JPEG ({1 - 1000 * mean_kb / jpeg:.1%} smaller)"
        out.append(size + f"; coded as {', '.join(f'{k} ({v})' for k, v in sorted(self.rungs.items()))}")
        out.append(f"round trip p50 {j['round_trip_ms_p50']:.0f} ms, p95 {j['round_trip_ms_p95']:.0f} ms")
        out += self.outputs
        return out
