"""`baf eval` end to end on a few val164 images, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baf.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reports(shared_data: Path, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("eval")
    data = shared_data / "coco-val164"
    results = {}
    for mode in ("--baseline", "--split-only"):
        path = out / f"{mode[2:]}.json"
        assert main(["eval", mode, "--data", str(data), "--limit", "6", "--json", str(path)]) == 0
        results[mode[2:]] = json.loads(path.read_text())
    return results


def test_report_has_scores_and_stage_timings(reports):
    base = reports["baseline"]
    assert {k: base[k] for k in ("model", "size", "images", "mode")} == {
        "model": "yolov3-tiny",
        "size": 512,
        "images": 6,
        "mode": "baseline",
    }
    assert 0.1 < base["AP"] < base["AP50"] <= 1
    timings = base["timings_ms_per_frame"]
    assert set(timings) == {"preprocess", "edge", "transform", "cloud", "decode_nms", "total"}
    assert timings["cloud"] > 0 and timings["edge"] == 0


def test_split_only_scores_exactly_like_the_baseline(reports):
    base, cut = reports["baseline"], reports["split-only"]
    assert (cut["mode"], cut["split_layer"]) == ("split-only", 8)
    assert (cut["AP"], cut["AP50"], cut["detections"]) == (base["AP"], base["AP50"], base["detections"])
    assert cut["timings_ms_per_frame"]["edge"] > 0


def test_summary_table_goes_to_stdout(shared_data, tmp_path, capsys):
    assert main(["eval", "--data", str(shared_data / "coco-val164"), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["model", "yolov3-tiny"] and "AP50" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "{tmp}"], "no images/ folder"),
        (["--data", "{data}", "--model", "yolov9"], "unknown model 'yolov9'"),
        (
            ["--data", "{data}", "--size", "500"],
            "input size 500 does not fit yolov3-tiny: use a positive multiple of 32",
        ),
        (["--data", "{data}", "--split-only", "--layer", "9"], "layer 9: it is a maxpool"),
        (["--data", "{data}", "--layer", "8"], "--layer only applies to a split mode"),
        (["--data", "{data}", "--model", "yolov3"], "yolov3 needs yolov3.weights"),
        (["--data", "{data}", "--weights", "{tmp}/none.weights"], "weights file .*none.weights not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(shared_data, tmp_path, caplog, argv, message):
    argv = [a.format(tmp=tmp_path, data=shared_data / "coco-val164") for a in argv]
    assert main(["eval", *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert __import__("re").search(message, errors[0])
