"""`baf eval --recode`: the cloud-only baselines (JPEG, HEVC intra) end to end, and the flags it refuses."""

from __future__ import annotations

import json
import re

import pytest

from baf.cli import main
from baf.evaluate import CocoDataset
from tests.conftest import REPO, SHIPPED_CHECKPOINT

pytestmark = pytest.mark.slow
CHECKPOINT = REPO / f"{SHIPPED_CHECKPOINT}.json"


def test_jpeg_recode_writes_the_rate_keys(shared_data, tmp_path, capsys):
    data, report = shared_data / "coco-val164", tmp_path / "jpeg50.json"
    assert main(["eval", "--recode", "jpeg", "--quality", "50", "--data", str(data), "--limit", "2",
                 "--json", str(report)]) == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert {k: r[k] for k in ("mode", "recode", "quality", "qp", "images", "channels", "codec", "split_layer")} == {
        "mode": "recode jpeg q=50", "recode": "jpeg", "quality": 50, "qp": None, "images": 2, "channels": None,
        "codec": None, "split_layer": None,
    }  # fmt: skip
    assert r["jpeg_mean_bytes"] == pytest.approx(CocoDataset.open(data, 2).mean_file_bytes())
    assert 2_000 < r["mean_bytes"] < r["jpeg_mean_bytes"]
    assert r["saved_vs_jpeg"] == pytest.approx(1 - r["mean_bytes"] / r["jpeg_mean_bytes"])
    assert 0 < r["AP50"] <= 1 and r["timings_ms_per_frame"]["transform"] > 0
    assert "recode               jpeg q=50, long side 512" in capsys.readouterr().out


def test_hevc_recode_names_its_qp(shared_data, tmp_path):
    report = tmp_path / "hevc.json"
    assert main(["eval", "--recode", "hevc", "--qp", "47", "--data", str(shared_data / "coco-val164"), "--limit", "1",
                 "--json", str(report)]) == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert (r["mode"], r["recode"], r["qp"], r["quality"]) == ("recode hevc qp=47", "hevc", 47, None)
    assert 0 < r["mean_bytes"] < r["jpeg_mean_bytes"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recode", "jpeg", "--quality", "50", "--predictor", str(CHECKPOINT)], "drop --predictor"),
        (["--recode", "jpeg", "--quality", "50", "--codec", "jxl"], "drop --codec"),
        (["--recode", "hevc", "--qp", "37", "--all-channels"], "drop --all-channels"),
        (["--recode", "jpeg", "--quality", "50", "--split-only"], "drop --split-only"),
        (["--recode", "jpeg", "--quality", "50", "--channels", "64"], "drop --channels"),
        (["--quality", "50"], "--quality applies to --recode jpeg"),
        (["--recode", "hevc", "--qp", "37", "--quality", "50"], "--quality applies to --recode jpeg"),
        (["--recode", "jpeg", "--quality", "50", "--qp", "37"], "--qp applies to --recode hevc"),
        (["--recode", "jpeg"], "--recode jpeg needs --quality 1..100"),
        (["--recode", "hevc"], "--recode hevc needs --qp 0..51"),
        (["--recode", "jpeg", "--quality", "0"], r"--quality: JPEG quality must be an int in 1\.\.100, got 0"),
        (["--recode", "jpeg", "--quality", "101"], "--quality: .* got 101"),
        (["--recode", "hevc", "--qp", "52"], r"--qp: HEVC QP must be an int in 0\.\.51, got 52"),
        (["--recode", "hevc", "--qp", "-1"], "--qp: .* got -1"),
    ],
)
def test_senseless_recode_flags_are_one_line_and_exit_2(shared_data, caplog, argv, message):
    assert main(["eval", *argv, "--data", str(shared_data / "coco-val164"), "--limit", "1"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert re.search(message, errors[0])
