"""`baf rank`: both methods write a verified, nested ranking file from real images; bad flags are one line."""

from __future__ import annotations

import pytest

from baf.cli import main
from baf.ranking import read_ranking

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method, kernel", [("correlation", None), ("restoration", 1)])
def test_rank_writes_a_ranking_of_its_method(shared_data, tmp_path, method, kernel):
    out = tmp_path / "r.json"
    argv = ["rank", "--images", str(shared_data / "train-images"), "--limit", "2", "--size", "256",
            "--method", method, "-o", str(out), *(["--kernel", str(kernel)] if kernel else [])]
    assert main(argv) == 0
    ranking = read_ranking(out)
    assert (ranking.model, ranking.layer, ranking.channels, ranking.method) == ("yolov3-tiny", 8, 256, method)
    assert ranking.kernel == kernel and ranking.images["count"] == 2
    if method == "restoration":
        # Unexplained variance falls with every pick; all 256 picked, nothing is left to restore.
        assert list(ranking.scores) == sorted(ranking.scores, reverse=True)
        assert ranking.scores[0] < 1 and ranking.scores[-1] == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize("argv", [["--kernel", "2"], ["--method", "magic"]])
def test_bad_rank_flags_exit_2(shared_data, tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(["rank", "--images", str(shared_data / "train-images"), "-o", str(tmp_path / "r.json"), *argv])
    assert stop.value.code == 2 and "Traceback" not in capsys.readouterr().err
