"""Image loading and darknet-style letterboxing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from baf.errors import ImageError
from baf.images import PAD_VALUE, Letterbox, letterbox, load_image


@pytest.mark.parametrize(
    "width, height, expected",
    [
        (640, 480, Letterbox(512, 640, 480, 512, 384, 0, 64)),
        (480, 640, Letterbox(512, 480, 640, 384, 512, 64, 0)),
        (512, 512, Letterbox(512, 512, 512, 512, 512, 0, 0)),
        (333, 101, Letterbox(512, 333, 101, 512, 155, 0, 178)),
    ],
)
def test_fit_matches_darknet_integer_arithmetic(width, height, expected):
    assert Letterbox.fit(width, height, 512) == expected


def test_letterbox_pads_with_grey_and_keeps_pixels():
    image = np.zeros((2, 4, 3), np.uint8)
    image[..., 0] = 255
    x, box = letterbox(image, 8)  # 4x2 -> 8x4, rows 2..5
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert box == Letterbox(8, 4, 2, 8, 4, 0, 2)
    assert torch.all(x[:, :2] == PAD_VALUE) and torch.all(x[:, 6:] == PAD_VALUE)
    assert torch.all(x[0, 2:6] == 1) and torch.all(x[1:, 2:6] == 0)


def test_letterbox_and_to_source_are_inverse_for_box_corners():
    box = Letterbox.fit(640, 427, 512)
    corners = torch.tensor(
        [[box.left, box.top, box.left + box.new_width, box.top + box.new_height]], dtype=torch.float32
    )
    torch.testing.assert_close(box.to_source(corners), torch.tensor([[0.0, 0, 640, 427]]))


def test_letterbox_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="uint8 \\[H,W,3\\]"):
        letterbox(np.zeros((4, 4), np.uint8), 8)


def test_load_image_gives_rgb_for_grey_png(tmp_path):
    Image.fromarray(np.full((3, 5), 77, np.uint8), mode="L").save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8 and (image == 77).all()


def test_load_image_refuses_junk(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")
