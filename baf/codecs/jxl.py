"""`jxl`: lossless JPEG XL through imagecodecs, the best lossless codec measured on tiled features."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from baf.codecs import register
from baf.codecs._common import check_bits, check_decoded, check_image, check_shape
from baf.errors import CodecError, CodecUnavailableError

_SIGNATURE = b"\xff\x0a"  # a bare codestream starts with this
_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"  # the ISO BMFF container libjxl uses for > 8-bit images
_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


class _Bits:
    """LSB-first bit reader over the first bytes of a JPEG XL codestream."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "little")
        self._left = 8 * len(data)
        self._pos = 0

    def read(self, n: int) -> int:
        if n > self._left - self._pos:
            raise CodecError("jxl: payload ends inside the size header")
        out = (self._value >> self._pos) & ((1 << n) - 1)
        self._pos += n
        return out

    def u32_size(self) -> int:
        """A size coded as U32(1 + u(9), 1 + u(13), 1 + u(18), 1 + u(30))."""
        return 1 + self.read((9, 13, 18, 30)[self.read(2)])


def _codestream(data: bytes) -> bytes:
    """The start of the codestream: `data` itself, or the payload of its first jxlc/jxlp box."""
    if not data.startswith(_CONTAINER):
        return data
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        head = 8
        if size == 1:  # a 64-bit size follows the type
            size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # the box runs to the end
            size = len(data) - pos
        if size < head:
            break
        if kind == b"jxlc":
            return data[pos + head : pos + size]
        if kind == b"jxlp":  # partial codestream boxes start with a 4-byte index
            return data[pos + head + 4 : pos + size]
        pos += size
    raise CodecError("jxl: container holds no codestream box")


def declared_shape(data: bytes) -> tuple[int, int]:
    """The (height, width) in a JPEG XL image's SizeHeader, read without decoding anything."""
    data = _codestream(data)
    if not data.startswith(_SIGNATURE):
        raise CodecError("jxl: payload is not a JPEG XL image (bad signature)")
    bits = _Bits(data[2:14])
    small = bits.read(1)
    height = 8 * (bits.read(5) + 1) if small else bits.u32_size()
    ratio = bits.read(3)
    if ratio:
        num, den = _RATIOS[ratio]
        return height, height * num // den
    return height, 8 * (bits.read(5) + 1) if small else bits.u32_size()


@register
class JxlCodec:
    """Lossless JPEG XL; `effort` 1..9 trades encode time for size (2: ~8 ms, 7: smallest measured)."""

    name: ClassVar[str] = "jxl"
    wire_id: ClassVar[int] = 1
    supports_lossy: ClassVar[bool] = False
    supports_inter: ClassVar[bool] = False
    lossless = True
    qp = 0

    def __init__(self, *, bits: int = 8, effort: int = 7) -> None:
        try:
            import imagecodecs
        except ImportError:
            raise CodecUnavailableError("jxl: imagecodecs is not installed; pip install imagecodecs") from None
        if not imagecodecs.JPEGXL.available:
            raise CodecUnavailableError("jxl: this imagecodecs build lacks JPEG XL; install a wheel from PyPI")
        if not (isinstance(effort, int) and 1 <= effort <= 9):
            raise CodecError(f"jxl: effort must be an int in 1..9, got {effort!r}")
        self._ic = imagecodecs
        self.bits = check_bits(self.name, bits)
        self.effort = effort

    def encode(self, image: np.ndarray) -> bytes:
        """Compress a 2-D uint8/uint16 image losslessly."""
        image = check_image(self.name, image, self.bits)
        try:
            return bytes(self._ic.jpegxl_encode(image, lossless=True, effort=self.effort))
        except Exception as e:  # imagecodecs raises JpegxlError, ValueError, ...
            raise CodecError(f"jxl: encoding failed: {e}") from None

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """Decompress a codestream whose size header must already declare `shape` (checked first)."""
        shape = check_shape(self.name, shape)
        found = declared_shape(data)
        if found != shape:
            raise CodecError(f"jxl: header declares {found[0]}x{found[1]}, expected {shape[0]}x{shape[1]}")
        try:
            image = self._ic.jpegxl_decode(data)
        except Exception as e:
            raise CodecError(f"jxl: damaged payload: {e}") from None
        return check_decoded(self.name, image, shape, self.bits)

    def is_intra(self, data: bytes) -> bool:
        """Always: every JPEG XL image stands alone."""
        return True
