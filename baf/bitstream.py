"""The `.baf` bitstream: one frame's features, self-describing, and a container for a sequence of them.

Byte layout of one frame, version 1 (all integers little-endian, no padding):

| offset | size | field | check on parse |
|---|---|---|---|
| 0 | 4 | magic `b"BAFS"` | exact |
| 4 | 1 | version, 1 | known |
| 5 | 16 | model id, ASCII `[A-Za-z0-9._-]`, NUL padded | charset, non-empty, only NULs after it |
| 21 | 2 | split layer l | |
| 23 | 2 | P, channels of layer l | >= 1 |
| 25 | 2 | C, transmitted channels (the first C of the ranking) | 1 <= C <= P |
| 27 | 1 | n, bits per element | 1..16 |
| 28 | 2 | H, feature height | 1..4096 |
| 30 | 2 | W, feature width | 1..4096; tiled image <= 32768 a side, <= 2**26 pixels |
| 32 | 1 | codec wire id (`baf.codecs`: 1 jxl, 2 hevc, 3 png, 4 raw) | registered |
| 33 | 1 | codec flags: bit 0 lossless, bit 1 inter (needs earlier frames) | no other bits; as the codec supports |
| 34 | 1 | codec QP (0 when lossless) | 0..51, 0 if lossless |
| 35 | 8 | frame sequence number | |
| 43 | 2 | source width (pixels of the frame before letterboxing) | >= 1 |
| 45 | 2 | source height | >= 1 |
| 47 | 4 | letterbox scale, float32: model pixel = source pixel * scale + pad | finite, > 0 |
| 51 | 4 | letterbox pad x, float32 | finite, >= 0 |
| 55 | 4 | letterbox pad y, float32 | finite, >= 0 |
| 59 | 8 | ranking id: `baf.ranking.ranking_id` (16 hex digits) as 8 bytes | |
| 67 | 4 | payload length L | total length is exactly 71 + 4C + L |
| 71 | 4C | side info: C pairs (lo, hi) of float16, channel order (C*32 bits, paper 3.2) | finite, lo <= hi |
| 71 + 4C | L | codec payload: the tiled image (`baf.ops.tile`) coded by the codec | |

A box (x, y) in model pixels maps back to the source as ((x - pad x) / scale, (y - pad y) / scale).

Stream container (`.bafs`, video): magic `b"BAFV"`, version byte 1, then per frame a 4-byte
little-endian length and that many bytes of one frame bitstream as above.

Parsing checks every field and length before using it and raises only `BitstreamError`, whose
message names the failed check and its byte offset; it allocates nothing beyond the input's size.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from baf import codecs, ops
from baf.codecs import Codec
from baf.errors import BitstreamError, UnknownCodecError

MAGIC = b"BAFS"
VERSION = 1
STREAM_MAGIC = b"BAFV"
STREAM_VERSION = 1
MAX_SIDE = 4096  # feature height / width
MAX_TILE_SIDE = 1 << 15
MAX_TILE_PIXELS = 1 << 26
MAX_QP = 51
MAX_FRAME_BYTES = 1 << 28  # one record of a stream container
MODEL_ID_BYTES = 16
RANKING_ID_BYTES = 8

_HEADER = struct.Struct("<4sB16sHHHBHHBBBQHHfff8sI")
HEADER_BYTES = _HEADER.size  # 71
SIDE_INFO_BYTES_PER_CHANNEL = 4
_FLAG_LOSSLESS, _FLAG_INTER = 1, 2
_MODEL_ID = re.compile(rb"[A-Za-z0-9._-]+")
# byte offset of each header field, for error messages
_OFFSETS = dict(
    magic=0, version=4, model=5, split_layer=21, channels_total=23, channels=25, bits=27, height=28, width=30,
    codec=32, flags=33, qp=34, sequence=35, source_width=43, source_height=45, scale=47, pad_x=51, pad_y=55,
    ranking_id=59, payload_length=67,
)


def _fail(field: str, why: str) -> BitstreamError:
    return BitstreamError(f"header: {why} (byte {_OFFSETS[field]}, {field})")


def _float32(x: float) -> float:
    return float(np.float32(x))


@dataclass(frozen=True, kw_only=True)
class Header:
    """The fixed header of one frame; constructing one checks every field as `parse` does."""

    model: str
    split_layer: int
    channels_total: int  # P
    channels: int  # C
    bits: int  # n
    height: int  # H
    width: int  # W
    sequence: int = 0
    source_width: int
    source_height: int
    scale: float  # letterbox: model pixel = source pixel * scale + pad
    pad_x: float = 0.0
    pad_y: float = 0.0
    ranking_id: bytes  # bytes.fromhex(ranking.id) of the `baf.ranking` ranking that chose the C channels
    codec: int = 1  # wire id; `encode_frame` fills codec, lossless, qp and inter from the codec
    lossless: bool = True
    qp: int = 0
    inter: bool = False

    def __post_init__(self) -> None:
        for name in ("scale", "pad_x", "pad_y"):  # stored as float32: keep what a round trip gives
            object.__setattr__(self, name, _float32(getattr(self, name)))
        self._check()

    def _check(self) -> None:
        model = self.model.encode("ascii", "replace") if isinstance(self.model, str) else b""
        if not _MODEL_ID.fullmatch(model) or len(model) > MODEL_ID_BYTES:
            raise _fail("model", f"model id {self.model!r} must be 1..{MODEL_ID_BYTES} chars of [A-Za-z0-9._-]")
        for name, lo, hi in (
            ("split_layer", 0, 0xFFFF), ("channels_total", 1, 0xFFFF), ("channels", 1, self.channels_total),
            ("bits", 1, 16), ("height", 1, MAX_SIDE), ("width", 1, MAX_SIDE), ("sequence", 0, (1 << 64) - 1),
            ("source_width", 1, 0xFFFF), ("source_height", 1, 0xFFFF), ("qp", 0, MAX_QP),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise _fail(name, f"{name}={value!r} outside {lo}..{hi}")
        rows, cols = ops.grid(self.channels)
        th, tw = rows * self.height, cols * self.width
        if th > MAX_TILE_SIDE or tw > MAX_TILE_SIDE or th * tw > MAX_TILE_PIXELS:
            raise _fail("width", f"tiled image {th}x{tw} exceeds {MAX_TILE_SIDE} a side or {MAX_TILE_PIXELS} pixels")
        try:
            codec = codecs.by_wire_id(self.codec)
        except UnknownCodecError as e:
            raise _fail("codec", str(e)) from None
        if not self.lossless and not codec.supports_lossy:
            raise _fail("flags", f"codec {codec.name} is lossless only")
        if self.inter and not codec.supports_inter:
            raise _fail("flags", f"codec {codec.name} has no inter frames")
        if self.lossless and self.qp != 0:
            raise _fail("qp", f"qp={self.qp} on a lossless frame")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise _fail("scale", f"letterbox scale {self.scale} must be finite and > 0")
        for name in ("pad_x", "pad_y"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise _fail(name, f"letterbox {name} {getattr(self, name)} must be finite and >= 0")
        if not isinstance(self.ranking_id, bytes) or len(self.ranking_id) != RANKING_ID_BYTES:
            raise _fail("ranking_id", f"ranking id must be {RANKING_ID_BYTES} bytes")

    @property
    def ranking_hex(self) -> str:
        """The ranking id as `baf.ranking` writes it (16 hex digits), to compare with a loaded ranking."""
        return self.ranking_id.hex()

    @property
    def codec_name(self) -> str:
        """The registered name of the header's codec, e.g. "jxl"."""
        return codecs.by_wire_id(self.codec).name

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) of the tiled image the payload codes: grid(C) cells of H x W."""
        rows, cols = ops.grid(self.channels)
        return rows * self.height, cols * self.width

    @property
    def side_info_bytes(self) -> int:
        """Bytes of side info: 4 per transmitted channel."""
        return SIDE_INFO_BYTES_PER_CHANNEL * self.channels

    @property
    def elements(self) -> int:
        """Transmitted feature elements, C * H * W."""
        return self.channels * self.height * self.width


@dataclass(frozen=True)
class Frame:
    """One parsed bitstream: header, side info (float16 [C] each) and the codec payload."""

    header: Header
    lo: np.ndarray
    hi: np.ndarray
    payload: bytes


def _check_side_info(lo: np.ndarray, hi: np.ndarray, channels: int, where: int) -> None:
    if lo.shape != (channels,) or hi.shape != (channels,):
        raise BitstreamError(f"side info: lo/hi must have shape ({channels},), got {lo.shape} and {hi.shape}")
    bad = ~(np.isfinite(lo) & np.isfinite(hi) & (lo <= hi))
    if bad.any():
        c = int(np.argmax(bad))
        raise BitstreamError(
            f"side info: channel {c} has lo={lo[c]} hi={hi[c]}; need finite lo <= hi "
            f"(byte {where + SIDE_INFO_BYTES_PER_CHANNEL * c})"
        )


def pack(header: Header, lo: np.ndarray, hi: np.ndarray, payload: bytes) -> bytes:
    """The bitstream of one frame: header, side info lo/hi (float16 [C]), payload."""
    lo16, hi16 = np.asarray(lo, np.float16), np.asarray(hi, np.float16)
    _check_side_info(lo16, hi16, header.channels, HEADER_BYTES)
    if len(payload) > MAX_FRAME_BYTES:
        raise BitstreamError(f"payload of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    h = header
    flags = (_FLAG_LOSSLESS if h.lossless else 0) | (_FLAG_INTER if h.inter else 0)
    fixed = _HEADER.pack(
        MAGIC, VERSION, h.model.encode("ascii"), h.split_layer, h.channels_total, h.channels, h.bits, h.height,
        h.width, h.codec, flags, h.qp, h.sequence, h.source_width, h.source_height, h.scale, h.pad_x, h.pad_y,
        h.ranking_id, len(payload),
    )
    side = np.stack([lo16, hi16], axis=1).astype("<f2").tobytes()  # interleaved (lo, hi) per channel
    return b"".join((fixed, side, payload))


def parse(data: bytes) -> Frame:
    """Check and split one bitstream; raises BitstreamError naming the first failed check."""
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise BitstreamError(f"truncated: {len(data)} bytes, the header alone needs {HEADER_BYTES} (byte {len(data)})")
    (magic, version, model, split_layer, channels_total, channels, bits, height, width, codec, flags, qp, sequence,
     source_width, source_height, scale, pad_x, pad_y, rank, payload_length) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _fail("magic", f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise _fail("version", f"unsupported version {version}, this reader knows {VERSION}")
    name = model.rstrip(b"\0")
    if b"\0" in name or not _MODEL_ID.fullmatch(name):
        raise _fail("model", f"model id {model!r} is not NUL-padded [A-Za-z0-9._-]")
    if flags & ~(_FLAG_LOSSLESS | _FLAG_INTER):
        raise _fail("flags", f"unknown codec flag bits 0x{flags:02x}")
    header = Header(
        model=name.decode("ascii"), split_layer=split_layer, channels_total=channels_total, channels=channels,
        bits=bits, height=height, width=width, sequence=sequence, source_width=source_width,
        source_height=source_height, scale=scale, pad_x=pad_x, pad_y=pad_y, ranking_id=rank, codec=codec,
        lossless=bool(flags & _FLAG_LOSSLESS), qp=qp, inter=bool(flags & _FLAG_INTER),
    )
    payload_at = HEADER_BYTES + header.side_info_bytes
    if len(data) != payload_at + payload_length:
        what = "truncated" if len(data) < payload_at + payload_length else "trailing bytes"
        raise BitstreamError(
            f"{what}: {len(data)} bytes, header declares {payload_at + payload_length} "
            f"({header.side_info_bytes} side info + {payload_length} payload; byte {_OFFSETS['payload_length']})"
        )
    side = np.frombuffer(data, "<f2", count=2 * channels, offset=HEADER_BYTES).astype(np.float16)
    lo, hi = side[0::2].copy(), side[1::2].copy()
    _check_side_info(lo, hi, channels, HEADER_BYTES)
    return Frame(header, lo, hi, data[payload_at:])


def decoder_for(header: Header) -> Codec:
    """A codec that decodes single frames of `header`'s codec, bit depth and mode."""
    cls = codecs.by_wire_id(header.codec)
    options: dict[str, object] = {"bits": header.bits}
    if cls.supports_lossy:
        options["qp"] = None if header.lossless else header.qp
    return codecs.create(cls.name, **options)


def encode_frame(header: Header, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, codec: Codec) -> bytes:
    """Tile `q` [C,H,W], code it with `codec` and pack it; the codec fields of `header` come from the codec."""
    shape = (header.channels, header.height, header.width)
    if q.shape != shape:
        raise BitstreamError(f"q has shape {q.shape}, the header says {shape}")
    if codec.bits != header.bits:
        raise BitstreamError(f"codec codes {codec.bits}-bit values, the header says n={header.bits}")
    payload = codec.encode(ops.tile(q))
    header = dataclasses.replace(
        header, codec=codec.wire_id, lossless=codec.lossless, qp=codec.qp, inter=not codec.is_intra(payload)
    )
    return pack(header, lo, hi, payload)


def decode_frame(frame: Frame, codec: Codec | None = None) -> np.ndarray:
    """The quantized features q [C,H,W] of a frame; pass the stream's decoder for inter frames.

    Raises CodecError when the payload does not decode to the header's tiled image.
    """
    h = frame.header
    if codec is None:
        codec = decoder_for(h)
    elif codec.wire_id != h.codec or codec.bits != h.bits:
        raise BitstreamError(f"frame needs a {h.codec_name} decoder for n={h.bits}, got {codec.name} n={codec.bits}")
    image = codec.decode(frame.payload, h.tile_shape)
    return ops.untile(image, h.channels, h.height, h.width)


class StreamWriter:
    """Writes the stream container: magic and version, then each frame's length and bitstream."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        f.write(STREAM_MAGIC + bytes([STREAM_VERSION]))

    def write(self, bitstream: bytes) -> None:
        """Append one frame; it is parsed first, so the container only ever holds valid frames."""
        parse(bitstream)
        self._f.write(struct.pack("<I", len(bitstream)) + bitstream)


def _read(f: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes, read in bounded pieces so a lying length allocates no more than the file holds."""
    pieces, left = [], n
    while left:
        piece = f.read(min(left, 1 << 20))
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def read_stream(f: BinaryIO) -> Iterator[bytes]:
    """The frame bitstreams of a stream container, in order (each still to be `parse`d)."""
    head = _read(f, len(STREAM_MAGIC) + 1)
    if head[:4] != STREAM_MAGIC:
        raise BitstreamError(f"stream: bad magic {head[:4]!r}, expected {STREAM_MAGIC!r} (byte 0)")
    if len(head) < 5 or head[4] != STREAM_VERSION:
        raise BitstreamError(f"stream: unsupported version {head[4:5]!r}, this reader knows {STREAM_VERSION} (byte 4)")
    offset, index = len(head), 0
    while prefix := _read(f, 4):
        if len(prefix) < 4:
            raise BitstreamError(f"stream: truncated length of frame {index} (byte {offset})")
        (length,) = struct.unpack("<I", prefix)
        if not HEADER_BYTES <= length <= MAX_FRAME_BYTES:
            raise BitstreamError(
                f"stream: frame {index} length {length} outside {HEADER_BYTES}..{MAX_FRAME_BYTES} (byte {offset})"
            )
        body = _read(f, length)
        if len(body) < length:
            raise BitstreamError(f"stream: frame {index} truncated: {len(body)} of {length} bytes (byte {offset + 4})")
        yield body
        offset, index = offset + 4 + length, index + 1
