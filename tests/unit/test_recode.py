"""baf.recode: scaling to the long side, JPEG and HEVC intra round trips (real Pillow and ffmpeg), refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from baf import recode
from baf.errors import CodecError
from baf.images import Letterbox, load_image


@pytest.fixture(scope="module")
def scaled(shared_data: Path) -> np.ndarray:
    """The first val164 image (640x426) scaled to long side 512."""
    first = sorted((shared_data / "coco-val164" / "images").iterdir())[0]
    return recode.scale_to_long_side(load_image(first), 512)


@pytest.mark.parametrize("height, width, expected", [(426, 640, (340, 512)), (640, 480, (512, 384)),
                                                     (512, 300, (512, 300)), (100, 200, (256, 512))])
def test_long_side_becomes_the_model_size_with_darknet_arithmetic(height, width, expected):
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    out = recode.scale_to_long_side(image, 512)
    assert out.shape == (*expected, 3) and out.dtype == np.uint8
    box = Letterbox.fit(width, height, 512)
    assert (box.new_height, box.new_width) == expected  # so the evaluator's letterbox never resizes again
    assert (recode.scale_to_long_side(out, 512) is out) == (max(expected) == 512)


def test_jpeg_bytes_fall_with_quality_and_shape_survives(scaled):
    sizes = []
    for quality in (90, 50, 10):
        data = recode.encode_jpeg(scaled, quality)
        assert data[:2] == b"\xff\xd8"
        decoded = recode.decode_jpeg(data)
        assert decoded.shape == scaled.shape == (340, 512, 3)
        sizes.append(len(data))
    assert sizes[0] > sizes[1] > sizes[2]
    error = np.abs(recode.decode_jpeg(recode.encode_jpeg(scaled, 90)).astype(int) - scaled).mean()
    assert error < 6


def test_hevc_intra_bytes_fall_with_qp_and_shape_survives(scaled):
    sizes = []
    for qp in (27, 37, 47):
        data = recode.encode_hevc_intra(scaled, qp)
        assert data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
        decoded = recode.decode_hevc(data, scaled.shape[:2])
        assert decoded.shape == (1, *scaled.shape)
        sizes.append(len(data))
    assert sizes[0] > sizes[1] > sizes[2]


def test_hevc_pads_odd_sides_and_crops_them_off(scaled):
    odd = np.ascontiguousarray(scaled[:339, :511])
    decoded = recode.decode_hevc(recode.encode_hevc_intra(odd, 22), odd.shape[:2])[0]
    assert decoded.shape == odd.shape
    assert np.abs(decoded.astype(int) - odd).mean() < 6


def test_hevc_video_holds_every_frame(scaled):
    frames = [np.roll(scaled, 4 * i, axis=1) for i in range(3)]
    data = recode.encode_hevc_video(frames, 32, fps=10)
    decoded = recode.decode_hevc(data, scaled.shape[:2], 3)
    assert decoded.shape == (3, *scaled.shape)
    assert len(data) < 2 * len(recode.encode_hevc_intra(scaled, 32))  # inter frames cost far less than intra
    with pytest.raises(CodecError, match="expected 4 frames"):
        recode.decode_hevc(data, scaled.shape[:2], 4)


@pytest.mark.parametrize("quality", [0, 101, 50.0, "50", True, None])
def test_bad_quality_names_the_flag(scaled, quality):
    with pytest.raises(CodecError, match="--quality"):
        recode.encode_jpeg(scaled, quality)
    with pytest.raises(CodecError, match="--quality"):
        recode.Recoder("jpeg", quality=quality)


@pytest.mark.parametrize("qp", [-1, 52, 37.0, None])
def test_bad_qp_names_the_flag(scaled, qp):
    with pytest.raises(CodecError, match="--qp"):
        recode.encode_hevc_intra(scaled, qp)
    with pytest.raises(CodecError, match="--qp"):
        recode.Recoder("hevc", qp=qp)


def test_damaged_data_and_bad_options_are_codec_errors(scaled):
    with pytest.raises(CodecError, match="jpeg: cannot decode"):
        recode.decode_jpeg(b"\xff\xd8not a jpeg")
    with pytest.raises(CodecError, match="hevc: "):
        recode.decode_hevc(b"\x00\x00\x00\x01garbage", (8, 8))
    with pytest.raises(CodecError, match="RGB uint8"):
        recode.encode_jpeg(scaled[..., 0], 50)
    with pytest.raises(CodecError, match="unknown coder 'webp'"):
        recode.Recoder("webp", quality=50)
    with pytest.raises(CodecError, match="--recode jpeg takes --quality"):
        recode.Recoder("jpeg", quality=50, qp=37)
    with pytest.raises(CodecError, match="--recode hevc takes --qp"):
        recode.Recoder("hevc", quality=50, qp=37)


def test_recoder_counts_bytes_and_returns_the_scaled_size(shared_data):
    first = sorted((shared_data / "coco-val164" / "images").iterdir())[0]
    image = load_image(first)
    recoder = recode.Recoder("jpeg", quality=50)
    out = recoder(image)
    assert out.shape == (340, 512, 3) and recoder.label == "recode jpeg q=50"
    assert recoder.sizes == [len(recode.encode_jpeg(recode.scale_to_long_side(image, 512), 50))]
    assert recoder.mean_bytes == recoder.sizes[0]
    assert recode.Recoder("hevc", qp=37).label == "recode hevc qp=37"


def test_boxes_on_the_rescaled_image_map_to_the_original():
    box = Letterbox.fit(512, 340, 512).rescaled_source(640, 426)  # the recoded copy of a 640x426 image
    mapped = box.to_source(torch.tensor([[0.0, 86.0, 512.0, 426.0], [256.0, 256.0, 256.0, 256.0]]))
    expected = torch.tensor([[0.0, 0.0, 640.0, 426.0], [320.0, 170 * 426 / 340, 320.0, 170 * 426 / 340]])
    torch.testing.assert_close(mapped, expected)
    with pytest.raises(ValueError, match="positive"):
        box.rescaled_source(0, 426)
