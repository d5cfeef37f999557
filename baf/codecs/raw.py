"""`raw`: the image's bytes as they are (uint16 little-endian); for tests and for measuring codecs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from baf.codecs import register
from baf.codecs._common import check_bits, check_decoded, check_image, check_shape, dtype_for
from baf.errors import CodecError


@register
class RawCodec:
    """Uncompressed payload: height * width * (1 or 2) bytes, row-major."""

    name: ClassVar[str] = "raw"
    wire_id: ClassVar[int] = 4
    supports_lossy: ClassVar[bool] = False
    supports_inter: ClassVar[bool] = False
    lossless = True
    qp = 0

    def __init__(self, *, bits: int = 8) -> None:
        self.bits = check_bits(self.name, bits)

    def encode(self, image: np.ndarray) -> bytes:
        """The image's bytes, row-major, uint16 as little-endian."""
        image = check_image(self.name, image, self.bits)
        return image.astype(image.dtype.newbyteorder("<"), copy=False).tobytes()

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """Reinterpret `data` as an image of `shape`; its length must match exactly."""
        shape = check_shape(self.name, shape)
        dtype = dtype_for(self.bits).newbyteorder("<")
        if len(data) != shape[0] * shape[1] * dtype.itemsize:
            raise CodecError(f"raw: payload has {len(data)} bytes, expected {shape[0] * shape[1] * dtype.itemsize}")
        image = np.frombuffer(data, dtype).reshape(shape).astype(dtype_for(self.bits))
        return check_decoded(self.name, image, shape, self.bits)

    def is_intra(self, data: bytes) -> bool:
        """Always: every raw payload stands alone."""
        return True
