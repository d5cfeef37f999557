"""bench/virtual_channels.py on a 12-image feature cache: the residual directions, the sent tensor, a scored run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from baf.models.zoo import load_split
from baf.ranking import find_ranking
from baf.train import build_cache
from bench.virtual_channels import Basis, Config, Fitter, main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(shared_data, tmp_path_factory):
    paths = sorted((shared_data / "train-images").iterdir())[:12]
    return build_cache(load_split("yolov3-tiny"), paths, tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def fitter(cache):
    split = load_split("yolov3-tiny")
    return Fitter(split, find_ranking("yolov3-tiny", split.layer), cache, kernel=3, images=10, heldout=2, ridge=1e-4)


def residual_energy(fitter: Fitter, basis: Basis) -> float:
    """Mean squared error of restoring all P channels from what `basis` sends, on the fit images."""
    weight, bias = fitter.fit(basis, None)
    errors = [float((F.conv2d(basis.send(z), weight, bias, padding=1) - z).pow(2).mean()) for z in fitter.batches()]
    return sum(errors) / len(errors)


def test_directions_are_orthonormal_and_send_more_than_ranked_channels(fitter):
    basis = fitter.flat(8, 8)
    assert basis.channels == (*fitter.order[:8].tolist(), *[-1] * 8)
    dirs = basis.rows[8:]
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(8), atol=1e-5, rtol=0)
    z = next(iter(fitter.batches()))
    s = basis.send(z)
    assert s.shape == (z.shape[0], 16, *z.shape[2:])
    assert torch.equal(s[:, :8], z[:, fitter.order[:8]])  # a ranked row is its channel, exactly
    torch.testing.assert_close(s[:, 8:], torch.einsum("kp,bphw->bkhw", dirs, z))
    # On the data they were fitted to, 8 residual directions beat the next 8 ranked channels.
    assert residual_energy(fitter, basis) < residual_energy(fitter, fitter.flat(16, 0))


def test_nested_sequence_is_ranked_then_virtual_per_block(fitter):
    sequence = fitter.nested([4, 8, 16], share=0.5)
    ranked = fitter.order.tolist()
    assert sequence.channels == (*ranked[:2], -1, -1, *ranked[2:4], -1, -1, *ranked[4:8], -1, -1, -1, -1)
    # Each block's directions explain what its prefix cannot: the prefix of 8 beats 8 ranked channels.
    assert residual_energy(fitter, sequence.prefix(8)) < residual_energy(fitter, fitter.flat(8, 0))


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
