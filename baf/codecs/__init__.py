"""Payload codecs for tiled feature images, keyed by name (CLI, proto) and by wire id (`.baf` header).

A codec turns one 2-D tiled image of n-bit values (uint8 for n <= 8, uint16 up to 16) into bytes
and back. `create(name, bits=n, **options)` builds one; every codec takes `bits` and checks that
decoded values fit in n bits. Registered codecs: `jxl` (lossless JPEG XL, the default), `png`,
`raw` and `hevc` (x265 through ffmpeg, single intra frames). Video uses the per-stream pair
`baf.codecs.hevc.HevcStreamEncoder` / `HevcStreamDecoder`, which write the same `hevc` payloads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np

from baf.errors import UnknownCodecError


class Codec(Protocol):
    """What every payload codec offers; instances hold their options (and, for streams, state)."""

    name: ClassVar[str]  # CLI and proto name, e.g. "jxl"
    wire_id: ClassVar[int]  # codec byte in the .baf header: fixed forever, never reused
    supports_lossy: ClassVar[bool]  # if so, the constructor takes `qp: int | None` (None: lossless)
    supports_inter: ClassVar[bool]  # payloads may depend on earlier frames of their stream
    bits: int  # n: values are in 0 .. 2**n - 1
    lossless: bool
    qp: int  # quantization parameter of lossy codecs; 0 when lossless

    def encode(self, image: np.ndarray) -> bytes:
        """Compress a 2-D uint8/uint16 image of n-bit values."""
        ...

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """Decompress `data` into an image of `shape`; raises CodecError on damaged data."""
        ...

    def is_intra(self, data: bytes) -> bool:
        """Whether `data` decodes without earlier frames of its stream."""
        ...


_CODECS: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator adding a codec to the registry; a name or wire id used twice is a bug."""
    if cls.name in _CODECS or cls.wire_id in {c.wire_id for c in _CODECS.values()}:
        raise RuntimeError(f"codec {cls.name!r} or wire id {cls.wire_id} registered twice")
    _CODECS[cls.name] = cls
    return cls


def names() -> list[str]:
    """The registered codec names, sorted."""
    return sorted(_CODECS)


def create(name: str, **options: Any) -> Codec:
    """Build the codec called `name` with its options (e.g. `bits=8`, `effort=7`, `qp=30`)."""
    if name not in _CODECS:
        raise UnknownCodecError(f"unknown codec {name!r}; choose from {', '.join(names())}")
    return _CODECS[name](**options)


def by_wire_id(wire_id: int) -> type[Codec]:
    """The codec class whose header byte is `wire_id`."""
    for cls in _CODECS.values():
        if cls.wire_id == wire_id:
            return cls
    known = ", ".join(f"{c.wire_id}={c.name}" for c in sorted(_CODECS.values(), key=lambda c: c.wire_id))
    raise UnknownCodecError(f"unknown codec wire id {wire_id}; known: {known}")


def wire_ids() -> frozenset[int]:
    """The wire ids of all registered codecs."""
    return frozenset(c.wire_id for c in _CODECS.values())


from baf.codecs import hevc, jxl, png, raw  # noqa: E402,F401  all registration happens here
