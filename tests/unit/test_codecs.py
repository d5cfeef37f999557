"""Payload codecs: registry, exact lossless round trips per bit depth, damaged input, HEVC streams (real ffmpeg)."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baf import codecs
from baf.codecs import hevc, jxl
from baf.errors import CodecError, CodecUnavailableError, UnknownCodecError

LOSSLESS_BITS = {"jxl": [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16], "png": [1, 2, 4, 8, 10, 12, 16],
                 "raw": [1, 8, 9, 16], "hevc": [2, 3, 4, 5, 6, 7, 8, 10, 12]}


def features(bits: int, shape=(48, 80), seed: int = 0) -> np.ndarray:
    """A smooth field plus noise, like a tiled feature image, using the full n-bit range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    top = (1 << bits) - 1
    field = (np.sin(x / 7.0) + np.cos(y / 5.0) + 2) / 4 * top + rng.normal(0, max(top / 50, 0.5), shape)
    image = np.clip(np.rint(field), 0, top)
    image.flat[0], image.flat[-1] = 0, top
    return image.astype(np.uint8 if bits <= 8 else np.uint16)


def test_registry_lists_and_refuses():
    assert codecs.names() == ["hevc", "jxl", "png", "raw"]
    with pytest.raises(UnknownCodecError, match="unknown codec 'webp'; choose from hevc, jxl, png, raw"):
        codecs.create("webp")
    with pytest.raises(UnknownCodecError, match="wire id 9"):
        codecs.by_wire_id(9)
    assert codecs.by_wire_id(1) is jxl.JxlCodec
    assert sorted(c.wire_id for c in map(codecs.by_wire_id, codecs.wire_ids())) == [1, 2, 3, 4]

    class Again:
        name, wire_id = "jxl2", 1

    with pytest.raises(RuntimeError, match="registered twice"):
        codecs.register(Again)


@pytest.mark.parametrize(
    ("name", "options", "reason"),
    [
        ("jxl", dict(effort=0), "effort"),
        ("jxl", dict(bits=17), "bits"),
        ("png", dict(level=10), "level"),
        ("hevc", dict(bits=14), r"bits must be an int in 1..12"),
        ("hevc", dict(qp=52), "qp"),
        ("hevc", dict(preset="warp"), "preset"),
    ],
)
def test_bad_options_fail_at_construction(name, options, reason):
    with pytest.raises(CodecError, match=reason):
        codecs.create(name, **options)


@pytest.mark.parametrize(("name", "bits"), [(n, b) for n, bits in LOSSLESS_BITS.items() for b in bits])
def test_lossless_round_trip_is_exact(name, bits):
    codec = codecs.create(name, bits=bits)
    image = features(bits)
    data = codec.encode(image)
    out = codec.decode(data, image.shape)
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)
    assert codec.is_intra(data) and codec.lossless


@pytest.mark.parametrize("name", ["jxl", "png", "hevc"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (17, 13)])
def test_odd_shapes_round_trip(name, shape):
    codec = codecs.create(name, bits=8)
    image = features(8, shape)
    np.testing.assert_array_equal(codec.decode(codec.encode(image), shape), image)


def test_jxl_compresses_smooth_features_better_than_png():
    image = features(8, (256, 256))
    jxl_bytes = len(codecs.create("jxl", bits=8).encode(image))
    png_bytes = len(codecs.create("png", bits=8).encode(image))
    assert jxl_bytes < png_bytes < image.nbytes


@pytest.mark.parametrize("bits", [4, 8, 10])
def test_hevc_lossy_scales_to_full_range_and_back(bits):
    image = features(bits, (64, 64))
    fine, coarse = codecs.create("hevc", bits=bits, qp=4), codecs.create("hevc", bits=bits, qp=40)
    fine_data, coarse_data = fine.encode(image), coarse.encode(image)
    assert len(coarse_data) < len(fine_data)
    out = fine.decode(fine_data, image.shape)
    assert out.dtype == image.dtype and out.max() <= (1 << bits) - 1
    err = np.abs(out.astype(np.int64) - image).mean()
    assert err < max(1.0, 0.01 * (1 << bits))  # a few steps at most, not a shifted or saturated range
    assert (fine.lossless, fine.qp) == (False, 4)


def test_codecs_refuse_wrong_images():
    for name in codecs.names():
        codec = codecs.create(name, bits=8)
        with pytest.raises(CodecError, match="uint8"):
            codec.encode(np.zeros((4, 4), np.uint16))
        with pytest.raises(CodecError, match="2-D"):
            codec.encode(np.zeros((2, 4, 4), np.uint8))
        with pytest.raises(CodecError, match="shape"):
            codec.decode(b"", (0, 4))


def test_decoded_values_beyond_n_bits_are_refused():
    data = codecs.create("jxl", bits=8).encode(np.full((8, 8), 200, np.uint8))
    with pytest.raises(CodecError, match="exceeds the 4-bit range"):
        codecs.create("jxl", bits=4).decode(data, (8, 8))


@pytest.mark.parametrize("name", ["jxl", "png"])
def test_declared_size_is_checked_before_decoding(name):
    data = codecs.create(name, bits=8).encode(features(8, (40, 24)))
    with pytest.raises(CodecError, match="header declares 40x24, expected 24x40"):
        codecs.create(name, bits=8).decode(data, (24, 40))


@pytest.mark.parametrize("shape", [(8, 8), (17, 23), (512, 1024), (1000, 8), (30, 32)])
@pytest.mark.parametrize("bits", [8, 16])
def test_jxl_size_header_parser(shape, bits):
    assert jxl.declared_shape(codecs.create("jxl", bits=bits).encode(features(bits, shape))) == shape


def damaged(valid: bytes, rng: np.random.Generator) -> list[bytes]:
    flipped = bytearray(valid)
    for i in rng.integers(0, len(valid), 3):
        flipped[i] ^= 1 << int(rng.integers(8))
    return [b"", b"\x00" * 10, valid[: len(valid) // 2], bytes(flipped), valid + b"junk", rng.bytes(len(valid))]


@pytest.mark.parametrize("name", ["jxl", "png", "raw", "hevc"])
def test_damaged_payloads_raise_codec_error_or_decode_consistently(name):
    codec = codecs.create(name, bits=6, **({"timeout_s": 10.0} if name == "hevc" else {}))
    image = features(6, (32, 48))
    rng = np.random.default_rng(3)
    for data in damaged(codec.encode(image), rng):
        try:
            out = codec.decode(data, image.shape)
        except CodecError:
            continue
        assert out.shape == image.shape and out.dtype == image.dtype and out.max() < 64


@settings(deadline=None, max_examples=60)
@given(data=st.binary(max_size=300), name=st.sampled_from(["jxl", "png", "raw"]))
def test_random_payloads_raise_only_codec_error(data, name):
    try:
        out = codecs.create(name, bits=8).decode(data, (8, 8))
    except CodecError:
        return
    assert out.shape == (8, 8)


def test_missing_ffmpeg_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("BAF_FFMPEG", str(tmp_path / "no-ffmpeg"))
    with pytest.raises(CodecUnavailableError, match="cannot run ffmpeg"):
        codecs.create("hevc")


def test_nal_types_and_intra_detection():
    data = codecs.create("hevc", bits=8).encode(features(8, (16, 16)))
    types = hevc.nal_types(data)
    assert types[:3] == [32, 33, 34]  # VPS, SPS, PPS first
    assert hevc.is_intra(data) and not hevc.is_intra(b"\x00\x00\x01\x02\x01")
    assert hevc.pictures(data) == 1 and hevc.pictures(data + data) == 2


def test_stream_decoder_refuses_a_payload_of_two_pictures():
    frames = pan(8, 2)
    with hevc.HevcStreamEncoder(bits=8, preset="ultrafast") as enc, hevc.HevcStreamDecoder(bits=8) as dec:
        first, second = enc.encode(frames[0]), enc.encode(frames[1])
        with pytest.raises(CodecError, match="starts 2 pictures"):
            dec.decode(first + second, frames[0].shape)
        np.testing.assert_array_equal(dec.decode(first, frames[0].shape), frames[0])
        np.testing.assert_array_equal(dec.decode(second, frames[1].shape), frames[1])


def pan(bits: int, frames: int, shape=(64, 96)) -> list[np.ndarray]:
    """A slow horizontal pan over a wider feature image: what inter prediction is for."""
    wide = features(bits, (shape[0], shape[1] + 2 * frames), seed=5)
    return [np.ascontiguousarray(wide[:, 2 * i : 2 * i + shape[1]]) for i in range(frames)]


@pytest.mark.parametrize("bits", [4, 8, 10, 12])
def test_stream_lossless_is_exact_with_inter_prediction(bits):
    frames = pan(bits, 6)
    with hevc.HevcStreamEncoder(bits=bits, preset="ultrafast", keyint=4) as enc, \
            hevc.HevcStreamDecoder(bits=bits) as dec:
        payloads = [enc.encode(f) for f in frames]
        for frame, data in zip(frames, payloads):
            np.testing.assert_array_equal(dec.decode(data, frame.shape), frame)
    assert [enc.is_intra(p) for p in payloads] == [True, False, False, False, True, False]
    assert max(len(p) for p in payloads[1:4]) < len(payloads[0])


def test_stream_lossy_round_trip():
    with hevc.HevcStreamEncoder(bits=6, qp=20, preset="ultrafast") as enc, \
            hevc.HevcStreamDecoder(bits=6, lossless=False) as dec:
        for frame in pan(6, 4):
            out = dec.decode(enc.encode(frame), frame.shape)
            assert out.dtype == np.uint8 and out.max() <= 63
            assert np.abs(out.astype(int) - frame).mean() < 1.0


def test_stream_intra_payload_decodes_on_its_own():
    frame = pan(8, 1)[0]
    with hevc.HevcStreamEncoder(bits=8, preset="ultrafast") as enc:
        data = enc.encode(frame)
    np.testing.assert_array_equal(codecs.create("hevc", bits=8).decode(data, frame.shape), frame)


def test_stream_decoder_waits_for_intra_frame():
    frames = pan(8, 3)
    with hevc.HevcStreamEncoder(bits=8, preset="ultrafast") as enc, hevc.HevcStreamDecoder(bits=8) as dec:
        payloads = [enc.encode(f) for f in frames]
        with pytest.raises(CodecError, match="waiting for the next intra frame"):
            dec.decode(payloads[1], frames[1].shape)
        with pytest.raises(CodecError, match="no intra picture"):
            codecs.create("hevc", bits=8).decode(payloads[1], frames[1].shape)


def test_stream_encoder_restarts_after_a_crash_with_an_intra_frame(caplog):
    frames = pan(8, 5)
    with hevc.HevcStreamEncoder(bits=8, preset="ultrafast") as enc, hevc.HevcStreamDecoder(bits=8) as dec:
        for frame in frames[:2]:
            np.testing.assert_array_equal(dec.decode(enc.encode(frame), frame.shape), frame)
        enc._proc.proc.kill()  # simulate a crash between frames
        enc._proc.proc.wait()
        data = enc.encode(frames[2])
        assert enc.is_intra(data)
        assert "hevc stream process killed role=encoder" in caplog.text
        for frame, payload in [(frames[2], data), (frames[3], enc.encode(frames[3]))]:
            np.testing.assert_array_equal(dec.decode(payload, frame.shape), frame)


def test_stream_decoder_survives_a_damaged_unit_and_resyncs():
    frames = pan(8, 6)
    with hevc.HevcStreamEncoder(bits=8, preset="ultrafast", keyint=3) as enc, \
            hevc.HevcStreamDecoder(bits=8, timeout_s=2.0) as dec:
        payloads = [enc.encode(f) for f in frames]
        np.testing.assert_array_equal(dec.decode(payloads[0], frames[0].shape), frames[0])
        start = time.monotonic()
        try:
            dec.decode(b"\x00\x00\x01" + bytes(range(256)) * 4, frames[1].shape)
        except CodecError:
            pass
        assert time.monotonic() - start < 5.0  # bounded: never hangs
        for i in (1, 2, 3, 4, 5):  # every unit decodes or refuses; the intra unit at 3 brings back exact frames
            try:
                out = dec.decode(payloads[i], frames[i].shape)
            except CodecError:
                assert i < 3
                continue
            if i >= 3:
                np.testing.assert_array_equal(out, frames[i])


def test_stream_shape_change_starts_a_new_sequence():
    with hevc.HevcStreamEncoder(bits=8, preset="ultrafast") as enc, hevc.HevcStreamDecoder(bits=8) as dec:
        for shape in [(32, 32), (32, 32), (48, 16)]:
            frame = features(8, shape)
            data = enc.encode(frame)
            np.testing.assert_array_equal(dec.decode(data, shape), frame)
        assert enc.is_intra(data)
