"""The .baf format: layout, round trips, and that damaged input only ever raises BitstreamError."""

import dataclasses
import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baf import bitstream as bs
from baf import codecs, ops, rate
from baf.errors import BitstreamError


RANKING = bytes.fromhex("0123456789abcdef")


def make_header(**changes) -> bs.Header:
    fields = dict(
        model="yolov3-tiny", split_layer=8, channels_total=256, channels=4, bits=6, height=3, width=5, sequence=7,
        source_width=640, source_height=480, scale=0.8, pad_x=0.0, pad_y=64.0, ranking_id=RANKING,
    )
    return bs.Header(**{**fields, **changes})


def side_info(channels: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.linspace(-3, 1, channels).astype(np.float16)
    return lo, (lo + np.float16(2.5)).astype(np.float16)


@pytest.fixture(scope="module")
def valid() -> bytes:
    header = make_header()
    return bs.pack(header, *side_info(header.channels), b"payload bytes")


def test_pack_parse_round_trip(valid):
    frame = bs.parse(valid)
    lo, hi = side_info(4)
    assert frame.header == make_header()
    np.testing.assert_array_equal(frame.lo, lo)
    np.testing.assert_array_equal(frame.hi, hi)
    assert frame.lo.dtype == np.float16
    assert frame.payload == b"payload bytes"
    assert len(valid) == bs.HEADER_BYTES + 4 * 4 + len(b"payload bytes")


def test_layout_matches_documented_offsets(valid):
    assert bs.HEADER_BYTES == 71
    assert valid[0:4] == b"BAFS" and valid[4] == 1
    assert valid[5:21] == b"yolov3-tiny".ljust(16, b"\0")
    assert struct.unpack_from("<HHHB", valid, 21) == (8, 256, 4, 6)
    assert struct.unpack_from("<HHBBB", valid, 28) == (3, 5, 1, 1, 0)  # H, W, jxl, lossless, qp
    assert struct.unpack_from("<QHH", valid, 35) == (7, 640, 480)
    assert struct.unpack_from("<fff", valid, 47) == pytest.approx((0.8, 0.0, 64.0))
    assert valid[59:67] == RANKING
    assert struct.unpack_from("<I", valid, 67) == (13,)
    lo, hi = side_info(4)
    assert np.frombuffer(valid, "<f2", 8, 71).tolist() == np.stack([lo, hi], 1).ravel().tolist()  # C*32 bits


def test_header_floats_are_stored_as_float32():
    header = make_header(scale=0.1)
    assert header.scale == float(np.float32(0.1))
    assert bs.parse(bs.pack(header, *side_info(4), b"")).header == header


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (dict(channels=300), "channels=300 outside 1..256"),
        (dict(channels=0), "channels=0"),
        (dict(bits=0), "bits=0 outside 1..16"),
        (dict(bits=17), "bits=17"),
        (dict(height=0), "height=0"),
        (dict(width=4097), "width=4097"),
        (dict(channels=256, height=4096, width=4096), "tiled image"),
        (dict(model="yolo v3"), "model id"),
        (dict(model="x" * 17), "model id"),
        (dict(codec=99), "unknown codec wire id 99"),
        (dict(lossless=False, qp=30), "codec jxl is lossless only"),
        (dict(inter=True), "codec jxl has no inter frames"),
        (dict(codec=2, qp=12), "qp=12 on a lossless frame"),
        (dict(codec=2, lossless=False, qp=52), "qp=52"),
        (dict(scale=0.0), "scale"),
        (dict(pad_x=float("nan")), "pad_x"),
        (dict(ranking_id=b"short"), "ranking id"),
    ],
)
def test_header_refuses_bad_fields(changes, reason):
    with pytest.raises(BitstreamError, match=reason):
        make_header(**changes)


def test_hevc_header_allows_lossy_inter():
    header = make_header(codec=2, lossless=False, qp=30, inter=True)
    assert bs.parse(bs.pack(header, *side_info(4), b"x")).header == header


def put(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:70], r"truncated: 70 bytes, the header alone needs 71"),
        (lambda d: d[:-1], r"truncated: .* header declares"),
        (lambda d: d + b"\0", r"trailing bytes"),
        (lambda d: b"JUNK" + d[4:], r"bad magic .*byte 0"),
        (lambda d: put(d, 4, "B", 2), r"unsupported version 2"),
        (lambda d: put(d, 5, "3s", b"a\0b"), r"model id .*byte 5"),
        (lambda d: put(d, 25, "H", 257), r"channels=257 outside 1..256 \(byte 25"),
        (lambda d: put(d, 27, "B", 0), r"bits=0 .*byte 27"),
        (lambda d: put(d, 32, "B", 200), r"unknown codec wire id 200;.*byte 32"),
        (lambda d: put(d, 33, "B", 0x81), r"unknown codec flag bits 0x81"),
        (lambda d: put(d, 47, "f", float("inf")), r"scale .*byte 47"),
        (lambda d: put(d, 67, "I", 2**32 - 1), r"truncated: .* header declares"),
        (lambda d: put(d, 71, "<e", float("nan")), r"channel 0 .*finite lo <= hi \(byte 71\)"),
        (lambda d: put(d, 71 + 4, "<ee", 2.0, 1.0), r"channel 1 has lo=2.0 hi=1.0.*byte 75"),
    ],
)
def test_parse_names_the_failed_check(valid, mutate, reason):
    with pytest.raises(BitstreamError, match=reason):
        bs.parse(mutate(valid))


def assert_parses_consistently_or_refuses(data: bytes) -> None:
    try:
        frame = bs.parse(data)
    except BitstreamError:
        return
    # whatever parses is self-consistent: packing it again gives the very same bytes
    assert bs.pack(frame.header, frame.lo, frame.hi, frame.payload) == data
    assert frame.lo.shape == frame.hi.shape == (frame.header.channels,)
    assert bool(np.all(frame.lo <= frame.hi))


@settings(deadline=None, max_examples=300)
@given(data=st.binary(max_size=200))
def test_random_bytes_parse_or_raise_bitstream_error(data):
    assert_parses_consistently_or_refuses(data)


@settings(deadline=None, max_examples=300)
@given(data=st.binary(min_size=bs.HEADER_BYTES, max_size=200))
def test_random_bytes_behind_valid_magic_parse_or_raise(data):
    assert_parses_consistently_or_refuses(b"BAFS\x01" + data[5:])


@settings(deadline=None, max_examples=400)
@given(
    flips=st.lists(st.integers(0, 8 * (bs.HEADER_BYTES + 16 + 13) - 1), max_size=4),
    cut=st.integers(0, 100),
    extra=st.binary(max_size=8),
)
def test_mutated_streams_parse_or_raise(valid, flips, cut, extra):
    data = bytearray(valid)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    assert_parses_consistently_or_refuses(bytes(data))
    assert_parses_consistently_or_refuses(bytes(data[: len(data) - cut]))
    assert_parses_consistently_or_refuses(bytes(data) + extra)


def test_parse_does_not_trust_a_huge_channel_count():
    header = make_header(channels_total=4096, channels=4096, height=1, width=1)
    data = bs.pack(header, *side_info(4096), b"")
    with pytest.raises(BitstreamError, match="truncated"):
        bs.parse(data[:200])


@pytest.mark.parametrize("name", ["jxl", "png", "raw", "hevc"])
def test_encode_decode_frame_is_exact(name):
    z = np.random.default_rng(1).normal(size=(16, 6, 10)).astype(np.float32)
    q, lo, hi = ops.quantize(z, 5)
    codec = codecs.create(name, bits=5)
    data = bs.encode_frame(make_header(channels=16, bits=5, height=6, width=10), q, lo, hi, codec)
    frame = bs.parse(data)
    assert frame.header.codec == codec.wire_id and frame.header.lossless and not frame.header.inter
    np.testing.assert_array_equal(bs.decode_frame(frame), q)
    np.testing.assert_array_equal(frame.lo, lo)


def test_encode_frame_records_lossy_hevc_in_header():
    q, lo, hi = ops.quantize(np.random.default_rng(2).normal(size=(4, 16, 16)).astype(np.float32), 8)
    data = bs.encode_frame(make_header(bits=8, height=16, width=16), q, lo, hi, codecs.create("hevc", bits=8, qp=30))
    header = bs.parse(data).header
    assert (header.codec_name, header.lossless, header.qp) == ("hevc", False, 30)
    assert bs.decode_frame(bs.parse(data)).shape == q.shape


def test_encode_frame_refuses_mismatches():
    q, lo, hi = ops.quantize(np.zeros((4, 3, 5), np.float32), 6)
    with pytest.raises(BitstreamError, match="shape"):
        bs.encode_frame(make_header(channels=8), ops.quantize(np.zeros((8, 3, 4), np.float32), 6)[0], lo, hi,
                        codecs.create("raw", bits=6))
    with pytest.raises(BitstreamError, match="8-bit values"):
        bs.encode_frame(make_header(), q, lo, hi, codecs.create("raw", bits=8))
    frame = bs.parse(bs.encode_frame(make_header(), q, lo, hi, codecs.create("raw", bits=6)))
    with pytest.raises(BitstreamError, match="needs a raw decoder"):
        bs.decode_frame(frame, codecs.create("png", bits=6))


def test_stream_container_round_trip(valid):
    other = bs.pack(make_header(sequence=8), *side_info(4), b"")
    buf = io.BytesIO()
    writer = bs.StreamWriter(buf)
    for data in (valid, other, valid):
        writer.write(data)
    assert list(bs.read_stream(io.BytesIO(buf.getvalue()))) == [valid, other, valid]
    assert list(bs.read_stream(io.BytesIO(b"BAFV\x01"))) == []


def test_stream_writer_refuses_invalid_frames():
    with pytest.raises(BitstreamError):
        bs.StreamWriter(io.BytesIO()).write(b"BAFS junk")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad magic"),
        (b"BAFX\x01", "bad magic"),
        (b"BAFV\x02", "unsupported version"),
        (b"BAFV\x01\x10\x00", r"truncated length of frame 0 \(byte 5\)"),
        (b"BAFV\x01" + struct.pack("<I", 2**31), r"frame 0 length 2147483648 outside"),
        (b"BAFV\x01" + struct.pack("<I", 500) + b"x" * 100, r"frame 0 truncated: 100 of 500 bytes \(byte 9\)"),
    ],
)
def test_stream_container_damage(data, reason):
    with pytest.raises(BitstreamError, match=reason):
        list(bs.read_stream(io.BytesIO(data)))


@settings(deadline=None, max_examples=200)
@given(data=st.binary(max_size=300))
def test_stream_container_random_bytes(data):
    try:
        for frame in bs.read_stream(io.BytesIO(b"BAFV\x01" + data)):
            assert_parses_consistently_or_refuses(frame)
    except BitstreamError:
        pass


def test_ranking_id_reads_back_as_the_ranking_files_hex_id(valid):
    assert bs.parse(valid).header.ranking_hex == "0123456789abcdef"


def test_frame_rate_counts_the_whole_bitstream(valid):
    r = rate.frame_rate(valid)
    assert (r.header_bytes, r.side_info_bytes, r.payload_bytes) == (71, 16, 13)
    assert r.total_bytes == len(valid)
    assert r.bits_per_element == pytest.approx(8 * len(valid) / (4 * 3 * 5))
    assert r.ratio_to(1000) == pytest.approx(len(valid) / 1000)
    assert r.saved_vs(1000) == pytest.approx(1 - len(valid) / 1000)
    with pytest.raises(ValueError):
        r.ratio_to(0)


def test_header_replace_keeps_checking():
    with pytest.raises(BitstreamError):
        dataclasses.replace(make_header(), channels=999)
