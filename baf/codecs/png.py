"""`png`: lossless PNG (8- or 16-bit grayscale) through imagecodecs; a fallback that needs no JPEG XL."""

from __future__ import annotations

import struct
from typing import ClassVar

import numpy as np

from baf.codecs import register
from baf.codecs._common import check_bits, check_decoded, check_image, check_shape
from baf.errors import CodecError, CodecUnavailableError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@register
class PngCodec:
    """Lossless PNG; `level` is the zlib level (1..9, default imagecodecs')."""

    name: ClassVar[str] = "png"
    wire_id: ClassVar[int] = 3
    supports_lossy: ClassVar[bool] = False
    supports_inter: ClassVar[bool] = False
    lossless = True
    qp = 0

    def __init__(self, *, bits: int = 8, level: int | None = None) -> None:
        try:
            import imagecodecs
        except ImportError:
            raise CodecUnavailableError("png: imagecodecs is not installed; pip install imagecodecs") from None
        if level is not None and not (isinstance(level, int) and 1 <= level <= 9):
            raise CodecError(f"png: level must be an int in 1..9, got {level!r}")
        self._ic = imagecodecs
        self.bits = check_bits(self.name, bits)
        self.level = level

    def encode(self, image: np.ndarray) -> bytes:
        """Compress a 2-D uint8/uint16 image as grayscale PNG."""
        image = check_image(self.name, image, self.bits)
        try:
            return bytes(self._ic.png_encode(image, level=self.level))
        except Exception as e:  # imagecodecs raises its own PngError and also ValueError/RuntimeError
            raise CodecError(f"png: encoding failed: {e}") from None

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """Decompress a PNG whose header must already declare `shape` (checked before decoding)."""
        shape = check_shape(self.name, shape)
        if len(data) < 24 or not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
            raise CodecError("png: payload is not a PNG (bad signature or missing IHDR)")
        width, height = struct.unpack(">II", data[16:24])
        if (height, width) != shape:
            raise CodecError(f"png: header declares {height}x{width}, expected {shape[0]}x{shape[1]}")
        try:
            image = self._ic.png_decode(data)
        except Exception as e:
            raise CodecError(f"png: damaged payload: {e}") from None
        return check_decoded(self.name, image, shape, self.bits)

    def is_intra(self, data: bytes) -> bool:
        """Always: every PNG stands alone."""
        return True
