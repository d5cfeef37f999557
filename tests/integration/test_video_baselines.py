"""bench/video_baselines.py on 3 vtest.avi frames: one HEVC QP, one feature configuration, table and JSON."""

from __future__ import annotations

import json

import pytest

from baf.predictor import packaged_checkpoint
from baf.ranking import load_ranking
from bench.video_baselines import main

pytestmark = pytest.mark.slow


def test_three_frames_one_qp_one_feature_config(tmp_path, capsys):
    out = tmp_path / "video.json"
    assert main(["--frames", "3", "--hevc-qps", "37", "--feature-configs", "64:8:37", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["frames"], report["width"], report["height"], report["pseudo_gt_min_score"]) == (3, 768, 576, 0.5)
    shipped = packaged_checkpoint("yolov3-tiny", 8, load_ranking("yolov3-tiny", 8).id)  # what the server serves
    assert report["reference_boxes"] > 0 and report["predictor"]["path"] == str(shipped)
    hevc, feature = report["rows"]
    assert (hevc["method"], hevc["setting"]) == ("hevc video", "qp=37")
    assert (feature["method"], feature["setting"]) == ("feature stream", "C=64 n=8 qp=37")
    for row in (hevc, feature):
        assert row["bytes_per_frame"] > 100 and 0 <= row["ap50_agreement"] <= 1 and row["detections"] > 0
        assert row["kbps"] == pytest.approx(8 * row["bytes_per_frame"] * 10 / 1000)
    assert hevc["ap50_agreement"] > 0.5  # QP 37 keeps most of what the detector sees in this clip
    table = capsys.readouterr().out
    assert "hevc video" in table and "feature stream" in table and "AP50 agree" in table


def test_bad_config_and_unserved_c_are_refused(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit):
        main(["--feature-configs", "64:8"])
    assert "C:n:QP" in capsys.readouterr().err
    assert main(["--frames", "1", "--feature-configs", "64:12:37"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--feature-configs 64:12" in errors[0]
