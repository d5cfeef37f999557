"""Seed bitstreams and the mutations the pure-Python fuzzer (and the hypothesis test) apply to them.

Seeds are valid `.baf` frames the default server serves (yolov3-tiny, layer 8, its packaged ranking,
C=64 n=6 on 32x32 features of a 640x480 source) in every codec: raw, png, jxl, an hevc intra frame and
the inter frame after it. Mutations aim at the checks: header fields set to edge values (zero, one,
the maximum, huge declared sizes, wrong codec ids, C/n/H/W that disagree with each other or the payload),
truncation, trailing bytes, bit flips in the payload, and payloads spliced between codecs.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import struct

import numpy as np

from baf import bitstream, codecs, ops
from baf.bitstream import Header
from baf.codecs.hevc import HevcStreamEncoder
from baf.images import Letterbox
from baf.ranking import load_ranking

MODEL, LAYER, CHANNELS_TOTAL, FEATURE_SIDE, INPUT_SIDE = "yolov3-tiny", 8, 256, 32, 512

# (byte offset, struct format) of each header field a mutation may overwrite (layout: baf/bitstream.py)
FIELDS: dict[str, tuple[int, str]] = {
    "version": (4, "<B"), "split_layer": (21, "<H"), "channels_total": (23, "<H"), "channels": (25, "<H"),
    "bits": (27, "<B"), "height": (28, "<H"), "width": (30, "<H"), "codec": (32, "<B"), "flags": (33, "<B"),
    "qp": (34, "<B"), "sequence": (35, "<Q"), "source_width": (43, "<H"), "source_height": (45, "<H"),
    "scale": (47, "<f"), "pad_x": (51, "<f"), "pad_y": (55, "<f"), "payload_length": (67, "<I"),
}  # fmt: skip
_EDGE_INTS = (0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 51, 52, 63, 64, 127, 128, 255, 256, 4096, 4097, 32767, 65535)
_EDGE_FLOATS = (0.0, -0.0, -1.0, 1e-45, 0.8, 1.0, 64.0, 1e38, float("inf"), float("-inf"), float("nan"))


def server_header(channels: int = 64, bits: int = 6, sequence: int = 0) -> Header:
    """A header the default server accepts: its model, split, ranking, served C/n, a 640x480 letterboxed source."""
    box = Letterbox.fit(640, 480, INPUT_SIDE)
    return Header(model=MODEL, split_layer=LAYER, channels_total=CHANNELS_TOTAL, channels=channels, bits=bits,
                  height=FEATURE_SIDE, width=FEATURE_SIDE, sequence=sequence, source_width=640, source_height=480,
                  scale=box.new_width / box.width, pad_x=box.left, pad_y=box.top,
                  ranking_id=bytes.fromhex(load_ranking(MODEL, LAYER).id))  # fmt: skip


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[bytes, ...]:
    """Valid frames in every codec (computed once): raw, png, jxl, hevc intra, then an hevc inter frame."""
    rng = np.random.default_rng(0)
    header = server_header()
    shape = (header.channels, header.height, header.width)
    z = rng.normal(size=shape).astype(np.float32)
    q, lo, hi = ops.quantize(z, header.bits)
    out = [bitstream.encode_frame(header, q, lo, hi, codecs.create(name, bits=header.bits))
           for name in ("raw", "png", "jxl")]  # fmt: skip
    with HevcStreamEncoder(bits=header.bits, qp=30, preset="ultrafast") as encoder:
        for i in range(2):
            moved = np.roll(q, i, axis=2)  # the second frame predicts from the first
            out.append(bitstream.encode_frame(dataclasses.replace(header, sequence=i), moved, lo, hi, encoder))
    return tuple(out)


def set_field(data: bytes, name: str, value: int | float) -> bytes:
    """`data` with header field `name` overwritten (the value wrapped or cast to the field's type)."""
    offset, fmt = FIELDS[name]
    if len(data) < offset + struct.calcsize(fmt):
        return data
    if fmt != "<f":
        value = int(value) % (1 << (8 * struct.calcsize(fmt)))
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):]


def _field(rng: random.Random, data: bytes) -> bytes:
    name = rng.choice(list(FIELDS))
    fmt = FIELDS[name][1]
    if fmt == "<f":
        return set_field(data, name, rng.choice(_EDGE_FLOATS))
    value = rng.choice(_EDGE_INTS + (rng.getrandbits(8 * struct.calcsize(fmt)), (1 << 8 * struct.calcsize(fmt)) - 1))
    return set_field(data, name, value)


def _flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 8))):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _payload_bytes(rng: random.Random, data: bytes) -> bytes:
    start = min(len(data), bitstream.HEADER_BYTES + 256)  # past the side info of small C: the codec payload
    if start >= len(data):
        return _flip(rng, data)
    out = bytearray(data)
    for _ in range(rng.randrange(1, 16)):
        out[rng.randrange(start, len(out))] = rng.getrandbits(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _extend(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.choice((1, 3, 64, 4096)))


def _splice(rng: random.Random, data: bytes) -> bytes:
    """This header and side info with another seed's payload (a codec's bytes under another codec's id)."""
    other = rng.choice(seeds())
    cut = bitstream.HEADER_BYTES + 4 * 64
    body = data[:cut] + other[cut:]
    return set_field(body, "payload_length", len(body) - cut)


def _consistent_length(rng: random.Random, data: bytes) -> bytes:
    """Fix the payload length after another mutation, so that the deeper checks run."""
    out = _field(rng, data) if rng.random() < 0.5 else _payload_bytes(rng, data)
    if len(out) < bitstream.HEADER_BYTES:
        return out
    channels = struct.unpack_from("<H", out, 25)[0]
    return set_field(out, "payload_length", len(out) - bitstream.HEADER_BYTES - 4 * channels)


MUTATIONS = (_field, _field, _flip, _payload_bytes, _truncate, _extend, _splice, _consistent_length)


def mutate(rng: random.Random, data: bytes, steps: int | None = None) -> bytes:
    """`data` after 1-4 (or `steps`) random mutations."""
    for _ in range(steps if steps is not None else rng.choice((1, 1, 2, 4))):
        data = rng.choice(MUTATIONS)(rng, data)
    return data


def generate(rng: random.Random) -> bytes:
    """One fuzz input: mostly a mutated seed, sometimes a seed as it is or random bytes behind the magic."""
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(seeds())
    if roll < 0.1:
        return bitstream.MAGIC + rng.randbytes(rng.randrange(200))
    return mutate(rng, rng.choice(seeds()))
