"""Frame sources for the edge: RGB uint8 frames [H,W,3] from an image file, a folder of images, or a video.

A video (any file or URL ffmpeg opens) or a camera (`/dev/video*`, read with v4l2) is decoded by one
long-lived `ffmpeg ... -f rawvideo -pix_fmt rgb24 -` process per source, whose frame size comes from
ffprobe; spawning a process per frame would cost 40-120 ms each. Rotation metadata is ignored, as
EXIF orientation is for images (`baf.images.load_image`). Anything unreadable raises `SourceError`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from baf.codecs.hevc import ffmpeg_path
from baf.errors import CodecUnavailableError, ImageError, SourceError
from baf.images import load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SourceFrame:
    """One frame of a source: its position, a name for per-frame outputs, and the RGB uint8 pixels [H,W,3]."""

    index: int
    name: str
    image: np.ndarray


def _ffprobe(ffmpeg: str) -> str:
    """ffprobe beside the ffmpeg in use, else on PATH."""
    beside = Path(ffmpeg).with_name("ffprobe")
    found = str(beside) if beside.is_file() else shutil.which("ffprobe")
    if not found:
        raise SourceError("ffprobe not found beside ffmpeg or on PATH; install ffmpeg (apt-get install ffmpeg)")
    return found


def _tail(stderr: IO[bytes] | bytes) -> str:
    if not isinstance(stderr, bytes):
        stderr.seek(0)
        stderr = stderr.read()
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no message from ffmpeg"


@dataclass(frozen=True)
class Source:
    """Where frames come from: one image, the images of a folder (sorted by name), or a video/camera.

    Build one with `open_source`; `frames()` yields `SourceFrame`s, at most `max_frames` of them.
    """

    location: str
    kind: Literal["image", "images", "video"]
    files: tuple[Path, ...] = ()
    width: int = 0  # video only: frame size from ffprobe
    height: int = 0
    fps: float | None = None  # video only: the stream's average frame rate, when ffprobe knows it
    input_format: str | None = None  # video only: ffmpeg -f before -i, e.g. v4l2
    max_frames: int | None = None

    def frames(self) -> Iterator[SourceFrame]:
        """The frames, in order; a video's ffmpeg process ends when the iteration does."""
        if self.kind == "video":
            yield from self._video_frames()
            return
        for index, path in enumerate(self.files[: self.max_frames]):
            try:
                image = load_image(path)
            except ImageError as e:
                raise SourceError(str(e)) from None
            yield SourceFrame(index, path.stem, image)

    def _video_frames(self) -> Iterator[SourceFrame]:
        args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin", "-noautorotate"]
        args += ["-f", self.input_format] if self.input_format else []
        args += ["-i", self.location, "-map", "0:v:0"]
        args += ["-frames:v", str(self.max_frames)] if self.max_frames is not None else []
        args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        frame_bytes = self.width * self.height * 3
        with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty ffmpeg can never block on it
            try:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
            except OSError as e:
                raise SourceError(f"cannot start ffmpeg for {self.location}: {e}") from None
            assert proc.stdout is not None
            index = 0
            try:
                while data := proc.stdout.read(frame_bytes):
                    if len(data) < frame_bytes:
                        log.warning("source=%s frame=%d truncated: %d of %d bytes", self.location, index, len(data),
                                    frame_bytes)
                        break
                    image = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
                    yield SourceFrame(index, f"frame_{index:06d}", image)
                    index += 1
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
                code = proc.wait()
            if code != 0 and index == 0:
                raise SourceError(f"cannot decode {self.location}: {_tail(stderr)}")
            if code != 0:
                log.warning("source=%s ffmpeg exit=%d after %d frames: %s", self.location, code, index, _tail(stderr))
            if index == 0:
                raise SourceError(f"{self.location}: no video frames decoded")


def _frame_rate(text: object) -> float | None:
    """ffprobe's "num/den" rate as frames per second; None for "0/0" or anything unreadable."""
    num, _, den = str(text).partition("/")
    try:
        fps = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return fps if fps > 0 else None


def _probe(location: str, input_format: str | None) -> tuple[int, int, float | None]:
    """(width, height, frames per second or None) of the first video stream, from ffprobe; SourceError if none."""
    try:
        ffmpeg = ffmpeg_path()
    except CodecUnavailableError as e:
        raise SourceError(str(e)) from None
    args = [_ffprobe(ffmpeg), "-v", "error", "-select_streams", "v:0",
            "-show_entries", "stream=width,height,avg_frame_rate",
            "-of", "json"]
    args += ["-f", input_format] if input_format else []
    try:
        done = subprocess.run([*args, location], capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SourceError(f"ffprobe on {location} took longer than {PROBE_TIMEOUT_S:g} s") from None
    except OSError as e:
        raise SourceError(f"cannot run ffprobe: {e}") from None
    if done.returncode != 0:
        raise SourceError(f"cannot open {location}: {_tail(done.stderr)}")
    try:
        stream = json.loads(done.stdout)["streams"][0]
        width, height = int(stream["width"]), int(stream["height"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise SourceError(f"{location}: no video stream found") from None
    if width < 1 or height < 1:
        raise SourceError(f"{location}: video stream has size {width}x{height}")
    return width, height, _frame_rate(stream.get("avg_frame_rate"))


def open_source(location: str | os.PathLike[str], *, max_frames: int | None = None) -> Source:
    """The frame source at `location`: a folder (its image files), an image file (by suffix), else a video.

    Files and folders are checked to exist; videos and cameras are probed with ffprobe.
    """
    if max_frames is not None and max_frames < 1:
        raise SourceError(f"max_frames must be >= 1, got {max_frames}")
    text = os.fspath(location)
    path = Path(text)
    if path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        if not files:
            raise SourceError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return Source(text, "images", files, max_frames=max_frames)
    is_camera = text.startswith("/dev/video")
    if "://" not in text and not is_camera and not path.is_file():
        raise SourceError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(text, "image", (path,), max_frames=max_frames)
    input_format = "v4l2" if is_camera else None
    width, height, fps = _probe(text, input_format)
    log.debug("source=%s video=%dx%d fps=%s", text, width, height, fps)
    return Source(text, "video", width=width, height=height, fps=fps, input_format=input_format,
                  max_frames=max_frames)
