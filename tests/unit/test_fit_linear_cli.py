"""`baf fit-linear`: flag refusals come back as one line and exit 2, before any model or cache loads."""

import pytest

from baf.cli import main


def test_negative_ridge_refused(caplog, tmp_path):
    assert main(["fit-linear", "--images", str(tmp_path), "--ridge", "-1", "--cache", str(tmp_path / "c")]) == 2
    err = caplog.text
    assert "--ridge must be >= 0" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_even_kernel_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["fit-linear", "--images", str(tmp_path), "--kernel", "4", "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--kernel" in err and "odd" in err and not (tmp_path / "c").exists()
