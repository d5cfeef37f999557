"""`baf eval --codec/--all-channels`: the real bitstream path inside the evaluator, on a few val164 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from baf import ops
from baf.cli import main
from baf.cloud import CloudPipeline
from baf.edge import EdgeEncoder
from baf.images import Letterbox
from baf.models.zoo import load_split
from baf.ranking import load_ranking
from baf.rate import frame_rate
from baf.roundtrip import BitstreamPath
from tests.conftest import REPO, SHIPPED_CHECKPOINT

pytestmark = pytest.mark.slow

CHECKPOINT = REPO / f"{SHIPPED_CHECKPOINT}.json"
LIMIT = 3


@pytest.fixture(scope="module")
def runs(shared_data: Path, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """(report, bitstream folder) per run; every run sees the same first LIMIT images."""
    out = tmp_path_factory.mktemp("eval")
    data = str(shared_data / "coco-val164")
    argvs = {
        "split": ["--split-only"],
        "lossless": ["--codec", "jxl", "--channels", "256", "--bits", "16", "--restoration", "zeros"],
        "baf": ["--codec", "hevc", "--channels", "64", "--bits", "6", "--qp", "32", "--predictor", str(CHECKPOINT)],
    }
    results = {}
    for name, argv in argvs.items():
        report, folder = out / f"{name}.json", out / name
        extra = [] if name == "split" else ["--save-bitstreams", str(folder)]
        assert main(["eval", *argv, "--data", data, "--limit", str(LIMIT), "--json", str(report), *extra]) == 0
        results[name] = (json.loads(report.read_text()), folder)
    return results


@pytest.mark.parametrize("name", ["lossless", "baf"])
def test_mean_bytes_are_the_real_bitstreams(runs, name):
    report, folder = runs[name]
    files = sorted(folder.glob("*.baf"))
    assert len(files) == report["images"] == LIMIT
    sizes = [len(p.read_bytes()) for p in files]
    assert report["mean_bytes"] == pytest.approx(sum(sizes) / len(sizes), abs=1e-9)
    assert [frame_rate(p.read_bytes()).total_bytes for p in files] == sizes  # each file parses whole
    assert report["saved_vs_jpeg"] == pytest.approx(1 - report["mean_bytes"] / report["jpeg_mean_bytes"])


def test_report_names_the_configuration_and_checkpoint(runs):
    report, _ = runs["baf"]
    assert {k: report[k] for k in ("channels", "bits", "codec", "qp", "restoration", "mode")} == {
        "channels": 64, "bits": 6, "codec": "hevc", "qp": 32, "restoration": "linear", "mode": "linear C=64 n=6 hevc qp=32",
    }  # fmt: skip
    assert len(report["predictor_sha256"]) == 64 and report["predictor_steps"] == 0  # fitted in closed form
    assert report["jpeg_mean_bytes"] == runs["lossless"][0]["jpeg_mean_bytes"] > report["mean_bytes"]
    assert runs["lossless"][0]["predictor_sha256"] is None


def test_lossless_all_channels_at_16_bits_scores_like_split_only(runs):
    """Lossless jxl of all 256 channels at n=16 gives the cloud dequantize(quantize(Z)): each element moves by at
    most half a step, (max - min) / 131070 of its channel. That cannot move detections enough to change AP by
    more than a rounding; the exact claim (decoded == dequantized) is checked on the tensors below."""
    lossless, split = runs["lossless"][0], runs["split"][0]
    assert lossless["AP"] == pytest.approx(split["AP"], abs=2e-3)
    assert lossless["AP50"] == pytest.approx(split["AP50"], abs=2e-3)


@pytest.mark.parametrize("codec", ["jxl", "png"])
def test_lossless_path_hands_the_cloud_exactly_the_dequantized_tensor(codec):
    split, ranking = load_split("yolov3-tiny"), load_ranking("yolov3-tiny", 8)
    encoder = EdgeEncoder(split, ranking, channels=split.channels, bits=16, codec=codec)
    path = BitstreamPath(encoder, CloudPipeline(split, ranking))
    z = torch.randn(2, split.channels, 16, 16) * 3
    boxes = [Letterbox.fit(640, 480, 512)] * 2
    out = path(z, boxes)
    order = np.asarray(ranking.order)
    for sample, restored in zip(z, out, strict=True):
        q, lo, hi = ops.quantize(np.ascontiguousarray(sample[order].numpy()), 16)
        expected = np.empty_like(sample.numpy())
        expected[order] = ops.dequantize(q, lo, hi, 16)
        assert np.array_equal(restored.numpy(), expected)
    assert len(path.sizes) == 2 and path.mean_bytes == sum(path.sizes) / 2
    path.close()


def test_all_channels_sends_every_channel_with_hevc(shared_data, tmp_path):
    report = tmp_path / "all.json"
    argv = ["eval", "--all-channels", "--qp", "37", "--data", str(shared_data / "coco-val164"), "--limit", "1"]
    assert main([*argv, "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert {k: data[k] for k in ("channels", "bits", "codec", "qp", "restoration")} == {
        "channels": 256, "bits": 8, "codec": "hevc", "qp": 37, "restoration": "zeros",
    }  # fmt: skip
    assert data["predictor_sha256"] is None and 0 < data["mean_bytes"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--codec", "jxl"], "--codec needs one restoration"),
        (["--codec", "jxl", "--restoration", "zeros", "--predictor", "x.json"], "--codec needs one restoration"),
        (["--qp", "30"], "--qp needs --codec"),
        (["--all-channels", "--predictor", "x.json"], "--all-channels sends every channel"),
        (["--all-channels", "--codec", "jxl"], "--all-channels codes with hevc"),
        (["--codec", "jxl", "--restoration", "zeros", "--split-only"], "replace --split-only"),
        (["--codec", "hevc", "--qp", "30", "--predictor", "x.json", "--record"], "--record stores lossless"),
        (["--codec", "nope", "--restoration", "zeros"], "nope"),
        (["--ranking", "r.json"], "--ranking needs --predictor"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(shared_data, caplog, argv, message):
    assert main(["eval", "--data", str(shared_data / "coco-val164"), "--limit", "1", *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]


def test_a_predictor_refuses_a_ranking_it_was_not_fitted_with(shared_data, tmp_path, caplog):
    import dataclasses

    from baf.ranking import load_ranking, ranking_id, write_ranking

    packaged = load_ranking("yolov3-tiny", 8)
    order = packaged.order[::-1]
    other = dataclasses.replace(packaged, order=order, id=ranking_id(packaged.model, packaged.layer, order))
    write_ranking(other, tmp_path / "reversed.json")
    argv = ["eval", "--data", str(shared_data / "coco-val164"), "--limit", "1", "--predictor",
            str(CHECKPOINT), "--ranking", str(tmp_path / "reversed.json")]
    assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and other.id in errors[0]
