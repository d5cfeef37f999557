"""ServerConfig: flags > BAF_* env > defaults, checked at start-up with messages naming flag and env var."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from baf.errors import ConfigError
from server.config import ServerConfig, load


def test_flags_win_over_env_over_defaults():
    cfg = load(["--max-batch", "4"], {"BAF_MAX_BATCH": "2", "BAF_MAX_QUEUE": "9", "BAF_METRICS_PORT": "off"})
    assert (cfg.max_batch, cfg.max_queue, cfg.metrics_port, cfg.overflow) == (4, 9, None, "reject")


def test_port_shorthand_keeps_the_listen_host():
    assert load(["--listen", "127.0.0.1:0", "--port", "6000"], {}).address == "127.0.0.1:6000"


@pytest.mark.parametrize("argv, env, expected", [
    (["--max-batch", "0"], {}, "--max-batch / BAF_MAX_BATCH: must be >= 1"),
    ([], {"BAF_MAX_QUEUE": "many"}, "BAF_MAX_QUEUE: 'many' is not a valid integer"),
    (["--listen", "nowhere"], {}, "--listen / BAF_LISTEN: expected HOST:PORT"),
    (["--overflow", "spill"], {}, "--overflow / BAF_OVERFLOW: expected one of reject, drop-oldest"),
    (["--tls-cert", __file__], {}, "TLS needs both --tls-cert and --tls-key"),
    (["--token-file", "/no/such/token"], {}, "--token-file / BAF_TOKEN_FILE: file /no/such/token not found"),
    (["--conf-threshold", "2"], {}, "--conf-threshold / BAF_CONF_THRESHOLD: must be in [0, 1]"),
    ([], {"BAF_MAX_STREAMS_PER_CLIENT": "0"}, "--max-streams-per-client / BAF_MAX_STREAMS_PER_CLIENT: must be >= 1"),
    (["--restoration", "zeros", "--predictor", __file__], {}, "choose one"),
    (["--ranking", "nope"], {}, "--ranking / BAF_RANKING: file nope not found"),
])  # fmt: skip
def test_bad_values_name_flag_and_env(argv, env, expected):
    with pytest.raises(ConfigError) as e:
        load(argv, env)
    assert expected in str(e.value)


def test_token_from_env_or_file_never_in_repr(tmp_path: Path):
    assert load([], {"BAF_TOKEN": " s3cret\n"}).bearer_token() == "s3cret"
    (tmp_path / "t").write_text("from-file\n")
    cfg = ServerConfig(token_file=tmp_path / "t")
    assert cfg.bearer_token() == "from-file"
    assert "s3cret" not in repr(load([], {"BAF_TOKEN": "s3cret"}))
    with pytest.raises(ConfigError, match="choose one"):
        load(["--token-file", str(tmp_path / "t")], {"BAF_TOKEN": "x"})


def test_cli_reports_a_bad_flag_in_one_line_and_exits_2():
    done = subprocess.run([sys.executable, "-m", "server", "--max-batch", "0"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --max-batch / BAF_MAX_BATCH: must be >= 1, got 0"]


def test_ranking_takes_a_packaged_name():
    assert load(["--ranking", "residual-pca"], {}).ranking == Path("residual-pca")
