"""bench/virtual_channels.py on a 12-image feature cache: flat and nested bases, scored runs (the directions' own
tests are in tests/unit/test_residual_ranking.py)."""

from __future__ import annotations

import json

import pytest
import torch

from baf.models.zoo import load_split
from baf.ranking import find_ranking
from baf.train import build_cache
from bench.virtual_channels import Config, Fitter, main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(shared_data, tmp_path_factory):
    paths = sorted((shared_data / "train-images").iterdir())[:12]
    return build_cache(load_split("yolov3-tiny"), paths, tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def fitter(cache):
    split = load_split("yolov3-tiny")
    return Fitter(split, find_ranking("yolov3-tiny", split.layer), cache, kernel=3, images=10, heldout=2, ridge=1e-4)


def test_fitter_builds_flat_and_nested_bases_from_the_ranking(fitter):
    order = list(fitter.ranking.order)
    flat = fitter.flat(8, 8)
    assert flat.channels == (*order[:8], *[-1] * 8) and flat.virtual == 8
    z = next(iter(fitter.batches()))
    assert torch.equal(flat.send(z)[:, :8], z[:, order[:8]])
    nested = fitter.nested([4, 8], share=0.5)
    assert nested.channels[:8] == (*order[:2], -1, -1, *order[2:4], -1, -1)
    weight, bias = fitter.fit(nested.prefix(8), 3)
    assert weight.shape == (256, 8, 3, 3) and bias.shape == (256,)


def test_scored_run_writes_rows(cache, shared_data, tmp_path, capsys):
    out = tmp_path / "vc.json"
    argv = ["--data", str(shared_data / "coco-val164"), "--limit", "2", "--cache", str(cache.root), "--heldout", "2",
            "--fit-images", "10", "--kernel", "3", "--threads", "1", "--configs", "8:0:8,8:8:3:37", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert (report["kernel"], report["fit_images"], report["data_id"]) == (3, 10, cache.data_id)
    plain, virtual = report["rows"]
    assert (plain["sequence"], plain["channels"], virtual["channels"]) == ("flat", 8, 16)
    assert (plain["ranked"], plain["virtual"], plain["bits"]) == (8, 0, 8)
    assert (virtual["ranked"], virtual["virtual"], virtual["bits"]) == (8, 8, 3)
    assert (plain["codec"], plain["qp"], virtual["codec"], virtual["qp"]) == ("jxl", None, "hevc", 37)
    for row in report["rows"]:
        assert row["images"] == 2 and 0 <= row["AP50"] <= 1 and row["mean_bytes"] > 71 + 4 * 8
    assert "mean bytes" in capsys.readouterr().out


def test_nested_run_scores_every_prefix(cache, shared_data, tmp_path):
    out = tmp_path / "nested.json"
    argv = ["--data", str(shared_data / "coco-val164"), "--limit", "1", "--cache", str(cache.root), "--heldout", "2",
            "--fit-images", "10", "--kernel", "3", "--threads", "1", "--nested", "4,8", "--nested-bits", "8,4:37",
            "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["sequence"], r["channels"], r["ranked"], r["bits"], r["qp"]) for r in rows] == [
        ("nested", 4, 2, 8, None), ("nested", 4, 2, 4, 37), ("nested", 8, 4, 8, None), ("nested", 8, 4, 4, 37)]


def test_bad_configs_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--data", "x", "--configs", "64:8"])
    assert "RANKED:VIRTUAL:BITS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", "x", "--configs", "64:0:8:52"])
    assert "QP must be in 0..51" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", "x"])
    assert "give --configs, --nested or both" in capsys.readouterr().err
    assert main(["--data", "x", "--configs", "200:100:8"]) == 2
    assert Config.parse("48:16:4") == Config(48, 16, 4) and Config.parse("48:16:4").width == 64
    assert Config.parse("32:32:6:37").qp == 37
