"""Images in and out of the model: loading JPEG/PNG files, darknet-style letterboxing, and mapping boxes back."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from baf.errors import ImageError

# Darknet fills the letterbox border with mid grey.
PAD_VALUE = 0.5


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file (JPEG, PNG, anything Pillow opens) as RGB uint8 [H,W,3].

    EXIF orientation is deliberately ignored: COCO boxes refer to the stored pixel grid.
    """
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {Path(path)}: {e}") from None


@dataclass(frozen=True)
class Letterbox:
    """Where a `width` x `height` source image sits in the `size` x `size` model input.

    It was resized to `new_width` x `new_height` and placed with its top-left corner at (`left`, `top`).
    """

    size: int
    width: int
    height: int
    new_width: int
    new_height: int
    left: int
    top: int

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        """The darknet placement: the longer side fills `size`, the image is centred (integer arithmetic)."""
        if width < 1 or height < 1 or size < 1:
            raise ValueError(f"letterbox needs positive sizes, got {width}x{height} into {size}")
        if width >= height:
            new_width, new_height = size, max(1, height * size // width)
        else:
            new_width, new_height = max(1, width * size // height), size
        return cls(size, width, height, new_width, new_height, (size - new_width) // 2, (size - new_height) // 2)

    def rescaled_source(self, width: int, height: int) -> Letterbox:
        """The same placement for an image that was a `width` x `height` source before it was rescaled.

        `to_source` of the result maps boxes to that original's pixels (cloud-only baselines recode a
        scaled copy of each image; COCO boxes refer to the original).
        """
        if width < 1 or height < 1:
            raise ValueError(f"source size must be positive, got {width}x{height}")
        return replace(self, width=width, height=height)

    def to_source(self, boxes: Tensor) -> Tensor:
        """Boxes [N,4] (x1, y1, x2, y2) in model-input pixels -> source-image pixels, clipped to the image."""
        sx, sy = self.width / self.new_width, self.height / self.new_height
        x = ((boxes[:, 0::2] - self.left) * sx).clamp(0, self.width)
        y = ((boxes[:, 1::2] - self.top) * sy).clamp(0, self.height)
        return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), 1)


def letterbox(image: np.ndarray, size: int) -> tuple[Tensor, Letterbox]:
    """RGB uint8 [H,W,3] -> model input float32 [3,size,size] in [0,1], and its placement.

    Bilinear resize, grey border, as darknet does.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H,W,3], got {image.dtype} {list(image.shape)}")
    box = Letterbox.fit(image.shape[1], image.shape[0], size)
    if (box.new_width, box.new_height) != (box.width, box.height):
        image = np.asarray(Image.fromarray(image).resize((box.new_width, box.new_height), Image.Resampling.BILINEAR))
    out = torch.full((3, size, size), PAD_VALUE)
    pixels = torch.tensor(image).permute(2, 0, 1).float().div_(255)
    out[:, box.top : box.top + box.new_height, box.left : box.left + box.new_width] = pixels
    return out, box
