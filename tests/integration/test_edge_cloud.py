"""Edge encoder -> bitstream -> cloud decoder on real yolov3-tiny weights, a val164 image and vtest.avi."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from baf import bitstream, ops
from baf.basis import VIRTUAL, SentBasis
from baf.cloud import CloudPipeline, FrameDecoder, ZerosRestorer, read_bitstreams
from baf.edge import EdgeEncoder
from baf.errors import BafError, BitstreamError, HeaderMismatchError
from baf.images import load_image
from baf.models.detect import detect
from baf.models.split import edge_image
from baf.models.zoo import load_split
from baf.ranking import load_ranking
from baf.sources import open_source
from client.demo import DEMO_CLIP as VTEST  # Debian opencv-doc's clip, installed by `make sysdeps`

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def split():
    return load_split("yolov3-tiny")


@pytest.fixture(scope="module")
def ranking():
    return load_ranking("yolov3-tiny", 8)


@pytest.fixture(scope="module")
def pipeline(split, ranking):
    return CloudPipeline(split, ranking)


@pytest.fixture(scope="module")
def image(shared_data):
    return load_image(sorted((shared_data / "coco-val164" / "images").glob("*.jpg"))[0])


@pytest.mark.parametrize("codec", ["jxl", "png"])
def test_round_trip_gives_dequantized_ranked_channels(split, ranking, pipeline, image, codec):
    encoder = EdgeEncoder(split, ranking, channels=64, bits=6, codec=codec, effort=2 if codec == "jxl" else None)
    z, box = encoder.features(image)
    full, _ = edge_image(split.edge, image, 512)
    np.testing.assert_array_equal(z, full[0, list(ranking.order[:64])].numpy())
    data = encoder.encode_features(z, box)
    frame = pipeline.stream().decode(data)
    q, lo, hi = ops.quantize(z, 6)
    np.testing.assert_array_equal(frame.q, q)
    np.testing.assert_array_equal(frame.z, ops.dequantize(q, lo, hi, 6))
    h = frame.header
    assert (h.model, h.split_layer, h.channels_total, h.channels, h.bits, h.height, h.width) == (
        "yolov3-tiny", 8, 256, 64, 6, 32, 32)
    assert (h.source_width, h.source_height, h.pad_x, h.pad_y, h.ranking_hex) == (
        image.shape[1], image.shape[0], box.left, box.top, ranking.id)
    assert pipeline.letterbox(h) == box
    assert encoder.sequence == 1


def test_all_channels_detect_like_the_unsplit_model(split, ranking, pipeline, image):
    encoder = EdgeEncoder(split, ranking, channels=256, bits=16, codec="raw")
    frame = pipeline.stream().decode(encoder.encode(image))
    [found] = pipeline.detect([frame])
    z, box = edge_image(split.edge, image, 512)
    with torch.inference_mode():
        [direct] = detect(split.cloud(z), split.model.heads, 512, 0.25, 0.45, 300)
    direct = direct.to_source(box)
    assert len(found) == len(direct) > 0
    torch.testing.assert_close(found.boxes, direct.boxes, atol=0.5, rtol=0)
    assert torch.equal(found.labels, direct.labels)


def test_zeros_restorer_puts_channels_in_ranked_positions():
    q = torch.tensor([[[[3]], [[1]]]], dtype=torch.int32)  # [1, C=2, 1, 1]
    lo, hi = torch.zeros(1, 2, dtype=torch.float16), torch.full((1, 2), 3.0, dtype=torch.float16)
    z = ZerosRestorer(SentBasis.ranked([2, 0, 1], 3)).restore(q, lo, hi, 2)
    assert z.flatten().tolist() == [1.0, 0.0, 3.0]
    # A virtual row has no channel of its own: it is dropped, the ranked row after it still lands in place.
    mixed = SentBasis([2, VIRTUAL, 0], torch.ones(1, 3), 3)
    q3 = torch.tensor([[[[3]], [[2]], [[1]]]], dtype=torch.int32)
    lo3, hi3 = torch.zeros(1, 3, dtype=torch.float16), torch.full((1, 3), 3.0, dtype=torch.float16)
    assert ZerosRestorer(mixed).restore(q3, lo3, hi3, 2).flatten().tolist() == [1.0, 0.0, 3.0]


def _header(split, ranking, **changes) -> bitstream.Header:
    base = bitstream.Header(
        model="yolov3-tiny", split_layer=8, channels_total=256, channels=4, bits=8, height=32, width=32,
        source_width=640, source_height=480, scale=0.8, pad_y=64.0, ranking_id=bytes.fromhex(ranking.id), codec=4,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "yolov3"}, "model yolov3 (decoder: yolov3-tiny)"),
        ({"split_layer": 12}, "split layer 12 (decoder: 8)"),
        ({"channels_total": 512}, "P 512 (decoder: 256)"),
        ({"ranking_id": b"\x00" * 8}, "ranking 0000000000000000"),
        ({"height": 33, "width": 33}, "H x W 33x33"),
        ({"width": 16}, "H x W 32x16"),
    ],
)
def test_header_that_does_not_fit_the_model_is_refused(split, ranking, pipeline, changes, message):
    header = _header(split, ranking, **changes)
    data = bitstream.pack(header, np.zeros(4), np.ones(4), bytes(header.tile_shape[0] * header.tile_shape[1]))
    with pytest.raises(HeaderMismatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipeline.stream().decode(data)
    FrameDecoder().decode(data)  # without a model to check against, it decodes


def test_letterbox_that_is_not_darknets_is_refused(split, ranking, pipeline):
    with pytest.raises(BitstreamError, match="letterbox"):
        pipeline.letterbox(_header(split, ranking, pad_y=10.0))


def test_bad_settings_are_refused(split, ranking):
    with pytest.raises(BafError, match="C=300"):
        EdgeEncoder(split, ranking, channels=300)
    with pytest.raises(BafError, match="stream coding needs hevc"):
        EdgeEncoder(split, ranking, codec="jxl", stream=True)
    with pytest.raises(BafError, match="lossless only"):
        EdgeEncoder(split, ranking, codec="png", qp=30)


@pytest.fixture(scope="module")
def video_features(split, ranking):
    encoder = EdgeEncoder(split, ranking, channels=16, bits=8)
    return [encoder.features(f.image) for f in open_source(VTEST, max_frames=5).frames()]


@pytest.mark.parametrize("codec, stream", [("jxl", False), ("hevc", True)])
def test_video_stream_round_trip(split, ranking, pipeline, video_features, codec, stream, tmp_path):
    buffer = io.BytesIO()
    writer = bitstream.StreamWriter(buffer)
    with EdgeEncoder(split, ranking, channels=16, bits=8, codec=codec, effort=1 if codec == "jxl" else None,
                     stream=stream) as encoder:  # fmt: skip
        for z, box in video_features:
            writer.write(encoder.encode_features(z, box))
    data = buffer.getvalue()
    frames = list(bitstream.read_stream(io.BytesIO(data)))
    assert len(frames) == 5
    with pipeline.stream() as decoder:
        decoded = [decoder.decode(f) for f in frames]
    assert [d.header.sequence for d in decoded] == [0, 1, 2, 3, 4]
    assert [d.header.inter for d in decoded] == [False] + [stream] * 4
    for d, (z, _) in zip(decoded, video_features, strict=True):
        np.testing.assert_array_equal(d.q, ops.quantize(z, 8)[0])  # lossless hevc is exact too
    assert len(pipeline.detect(decoded)) == 5
    path = tmp_path / "v.bafs"
    path.write_bytes(data)
    assert [name for name, _ in read_bitstreams(path)] == [f"v.bafs#{i}" for i in range(5)]
