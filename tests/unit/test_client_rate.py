"""The client's rate controller and its config: ladder order, steps in the right direction, clear config errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from baf.errors import ConfigError
from client.config import ClientConfig, add_arguments, from_args
from client.rate import RateController, Rung, build_ladder

SERVED_C = (8, 16, 32, 64, 128)
SERVED_N = (2, 3, 4, 5, 6, 7, 8)


def test_ladder_is_cheapest_first_and_prefers_channels():
    ladder = build_ladder(SERVED_C, SERVED_N, "jxl")
    costs = [r.cost for r in ladder]
    assert costs == sorted(costs)
    assert all(r.bits >= 4 for r in ladder)  # n below 4 only when nothing else is served
    assert Rung(16, 4) in ladder and Rung(8, 8) not in ladder  # equal cost: the larger C only
    assert build_ladder((64,), (2, 3), "png") == [Rung(64, 2), Rung(64, 3)]
    hevc = build_ladder(SERVED_C, SERVED_N, "hevc")
    assert {r.bits for r in hevc} == {8} and {r.qp for r in hevc} == {22, 27, 32, 37}
    assert hevc[0] == Rung(8, 8, 37) and hevc[-1] == Rung(128, 8, 22)


def _run(controller: RateController, fps: float, frames: int, start: float = 0.0, bytes_per_cost: float = 10.0):
    """Feed a synthetic trace: each frame's bytes are proportional to its rung's cost, sent at `fps`."""
    t = start
    for _ in range(frames):
        controller.update(t, int(controller.rung.cost * bytes_per_cost))
        t += 1 / fps
    return t


def test_controller_follows_the_throughput():
    ladder = build_ladder(SERVED_C, SERVED_N, "jxl")
    # 64x4 -> 256 cost units -> 2,560 bytes/frame; at 10 fps that is ~205 kbps
    controller = RateController(ladder, target_kbps=205, start=ladder.index(Rung(64, 4)))
    t = _run(controller, fps=10, frames=40)
    settled = controller.rung
    assert settled.cost * 10 * 10 * 8 / 1000 <= 205 * 1.1
    # the frame rate doubles: the same target allows half the bytes per frame, so C*n goes down
    t = _run(controller, fps=20, frames=60, start=t)
    faster = controller.rung
    assert faster.cost < settled.cost
    assert faster.cost * 20 * 10 * 8 / 1000 <= 205 * 1.1
    # and back at 5 fps there is room to send more per frame
    _run(controller, fps=5, frames=80, start=t)
    assert controller.rung.cost > faster.cost
    assert controller.rung.cost * 5 * 10 * 8 / 1000 <= 205 * 1.1


def test_controller_stays_inside_the_ladder_and_holds_when_on_target():
    ladder = build_ladder(SERVED_C, SERVED_N, "jxl")
    low = RateController(ladder, target_kbps=0.001)
    _run(low, fps=30, frames=400)
    assert low.rung == ladder[0]
    high = RateController(ladder, target_kbps=1e9)
    _run(high, fps=1, frames=400)
    assert high.rung == ladder[-1]
    steady = RateController(ladder, target_kbps=205, start=ladder.index(Rung(64, 4)))
    t = _run(steady, fps=10, frames=40)
    moves = steady.moves
    _run(steady, fps=10, frames=40, start=t)
    assert steady.moves == moves  # no oscillation at a constant rate


def _config(argv: list[str], environ: dict[str, str] | None = None) -> ClientConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), environ or {})


def test_config_from_flags_and_environment(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = _config(["clip.mp4", "--channels", "32"], {"BAF_SERVER": "127.0.0.1:50051", "BAF_CHANNELS": "16",
                                                        "BAF_TOKEN_FILE": str(token), "BAF_INTRA": "no"})
    assert (config.server, config.channels, config.intra, config.bearer_token()) == ("127.0.0.1:50051", 32, False,
                                                                                     "s3cret")
    assert "s3cret" not in repr(_config(["x", "--server", "[::1]:9"], {"BAF_TOKEN": "s3cret"}))


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["x"], {}, "--server / BAF_SERVER: the server address is required"),
        (["x", "--server", "host"], {}, "expected HOST:PORT"),
        (["x", "--server", "h:70000"], {}, "port 1..65535"),
        (["x", "--server", "h:1", "--target-kbps", "300", "--bits", "4"], {}, "drop --bits / BAF_BITS"),
        (["x", "--server", "h:1", "--qp", "30"], {}, "applies to hevc only"),
        (["x", "--server", "h:1", "--codec", "webp"], {}, "unknown codec 'webp'"),
        (["x", "--server", "h:1", "--tls-cert", "c.pem"], {}, "go together"),
        (["x", "--server", "h:1", "--tls-ca", "/nonexistent.pem"], {}, "no such file"),
        (["x", "--server", "h:1", "--ranking", "nope"], {}, "--ranking / BAF_RANKING: no such file nope"),
        (["x", "--server", "h:1"], {"BAF_WINDOW": "many"}, "--window / BAF_WINDOW: bad value 'many'"),
    ],
)
def test_config_errors_name_the_flag(argv, environ, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _config(argv, environ)


def test_ranking_takes_a_packaged_name():
    assert _config(["x", "--server", "h:1", "--ranking", "residual-pca"], {}).ranking == Path("residual-pca")
