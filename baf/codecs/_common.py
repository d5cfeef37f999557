"""Checks shared by the codecs: option values, image dtypes and shapes, decoded value ranges."""

from __future__ import annotations

import numpy as np

from baf.errors import CodecError
from baf.ops import MAX_BITS

MAX_SIDE = 1 << 15  # tiled images larger than 32768 on a side are refused before any allocation


def check_bits(codec: str, bits: int, max_bits: int = MAX_BITS) -> int:
    """Validate the `bits` option; returns it."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= max_bits:
        raise CodecError(f"{codec}: bits must be an int in 1..{max_bits}, got {bits!r}")
    return bits


def dtype_for(bits: int) -> np.dtype:
    """The container dtype of n-bit values: uint8 up to 8 bits, uint16 above."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


def check_image(codec: str, image: np.ndarray, bits: int) -> np.ndarray:
    """Validate an image to encode (2-D, dtype for `bits`, bounded size); returns it C-contiguous."""
    want = dtype_for(bits)
    if not isinstance(image, np.ndarray) or image.dtype != want:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise CodecError(f"{codec}: image must be a {want} array for bits={bits}, got {got}")
    if image.ndim != 2 or not all(1 <= s <= MAX_SIDE for s in image.shape):
        raise CodecError(f"{codec}: image must be 2-D with sides in 1..{MAX_SIDE}, got shape {image.shape}")
    return np.ascontiguousarray(image)


def check_shape(codec: str, shape: tuple[int, int]) -> tuple[int, int]:
    """Validate the shape a payload should decode to; returns it as a tuple of ints."""
    if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and 1 <= s <= MAX_SIDE for s in shape):
        raise CodecError(f"{codec}: shape must be (height, width) in 1..{MAX_SIDE}, got {shape!r}")
    return int(shape[0]), int(shape[1])


def check_decoded(codec: str, image: np.ndarray, shape: tuple[int, int], bits: int) -> np.ndarray:
    """Check a decoded image against the expected shape, dtype and n-bit range; returns it."""
    if image.shape != shape:
        raise CodecError(f"{codec}: payload decodes to shape {image.shape}, expected {shape}")
    want = dtype_for(bits)
    if image.dtype != want:
        raise CodecError(f"{codec}: payload decodes to {image.dtype}, expected {want} for bits={bits}")
    top = int(image.max())
    if top > (1 << bits) - 1:
        raise CodecError(f"{codec}: decoded value {top} exceeds the {bits}-bit range")
    return np.ascontiguousarray(image)
