"""Frame sources: image files, folders of images, videos through one ffmpeg process, and clear errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from baf.errors import SourceError
from baf.sources import open_source
from client.demo import DEMO_CLIP as VTEST  # Debian opencv-doc's clip, installed by `make sysdeps`



def _png(path: Path, value: int, size: tuple[int, int] = (20, 12)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def test_image_and_folder(tmp_path):
    one = open_source(_png(tmp_path / "b.png", 7))
    assert one.kind == "image"
    [frame] = list(one.frames())
    assert (frame.index, frame.name, frame.image.shape) == (0, "b", (12, 20, 3))
    _png(tmp_path / "a.png", 3)
    (tmp_path / "notes.txt").write_text("not an image")
    folder = open_source(tmp_path, max_frames=5)
    assert folder.kind == "images"
    assert [(f.name, int(f.image[0, 0, 0])) for f in folder.frames()] == [("a", 3), ("b", 7)]


def test_video_frames_come_from_one_ffmpeg(tmp_path):
    source = open_source(VTEST, max_frames=3)
    assert (source.kind, source.width, source.height, source.fps) == ("video", 768, 576, 10.0)
    frames = list(source.frames())
    assert [f.name for f in frames] == ["frame_000000", "frame_000001", "frame_000002"]
    assert all(f.image.shape == (576, 768, 3) and f.image.dtype == np.uint8 for f in frames)
    first = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(VTEST), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    np.testing.assert_array_equal(frames[0].image.reshape(-1), np.frombuffer(first, np.uint8))


def test_stopping_early_ends_the_process():
    frames = open_source(VTEST).frames()
    next(frames)
    frames.close()  # the generator's cleanup kills ffmpeg; nothing is left running or blocking


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: d, "no image files"),
        (lambda d: _write(d / "junk.mp4", b"\x00junk" * 50), "cannot open"),
        (lambda d: _write(d / "broken.jpg", b"\xff\xd8 not really"), "cannot read image"),
    ],
)
def test_unreadable_sources_raise_source_error(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        list(open_source(make(tmp_path)).frames())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
