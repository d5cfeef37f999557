"""`baf stream` against a real server (server.testing.background, real weights and checkpoint): every frame
answered exactly once, JSON lines, the annotated video, a server restart mid-stream, and clear failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baf.cli import main
from client.config import ClientConfig
from client.demo import DEMO_CLIP as VTEST  # Debian opencv-doc's clip, installed by `make sysdeps`
from client.output import Summary
from client.stream import stream
from server.config import ServerConfig
from server.testing import background
from test_server_security import pki  # noqa: F401  the test CA, server and client certificates
from tests.integration.server_util import stream_in_background

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"

pytestmark = [
    pytest.mark.slow,
]


def _server_config(port: int = 0) -> ServerConfig:
    return ServerConfig(listen=f"127.0.0.1:{port}", metrics_port=None, device="cpu", token=TOKEN)


@pytest.fixture(scope="module")
def server():
    with background(_server_config()) as handle:
        yield handle


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _count_frames(video: Path) -> int:
    done = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                           "stream=nb_read_frames", "-of", "csv=p=0", str(video)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout.strip().rstrip(","))


def test_every_frame_answered_once_with_json_lines_and_video(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BAF_TOKEN", TOKEN)
    out, video = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    rc = main(["stream", str(VTEST), "--server", server.target, "--frames", "8", "-o", str(out),
               "--annotate", str(video), "--compare-jpeg", "--window", "4"])  # fmt: skip
    assert rc == 0
    lines = _lines(out)
    assert [d["sequence"] for d in lines] == list(range(8))
    assert [d["frame"] for d in lines] == list(range(8))
    assert [d["name"] for d in lines] == [f"frame_{i:06d}" for i in range(8)]
    for d in lines:
        assert d["error"] is None and (d["width"], d["height"]) == (768, 576)
        assert (d["channels"], d["bits"], d["codec"]) == (64, 4, "jxl")
        assert 0 < d["bytes"] < d["jpeg_bytes"] and d["round_trip_ms"] > 0 and d["batch_size"] >= 1
        for det in d["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 768 and 0 <= y1 <= y2 <= 576 and 0 < det["score"] <= 1
            assert det["class_name"] and det["category_id"] >= 1
    # vtest.avi is people walking: the detector must find persons in most frames
    assert sum(any(det["class_name"] == "person" for det in d["detections"]) for d in lines) >= 6
    assert _count_frames(video) == 8
    printed = capsys.readouterr().out
    assert "8 frames from" in printed and "smaller" in printed and "round trip p50" in printed


def test_image_folder_with_adaptive_rate(server, tmp_path, shared_data):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((shared_data / "coco-val164" / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "out.jsonl"
    summary = stream(ClientConfig(source=str(images), server=server.target, output=out, token=TOKEN,
                                  target_kbps=400, compare_jpeg=True, progress=False))  # fmt: skip
    lines = _lines(out)
    assert [d["name"] for d in lines] == sorted(p.stem for p in images.iterdir())
    assert all(d["error"] is None for d in lines)
    assert [d["jpeg_bytes"] for d in lines] == [(images / f"{d['name']}.jpg").stat().st_size for d in lines]
    assert summary.frames == 3 and summary.reconnects == 0


def test_server_restart_mid_stream_loses_and_duplicates_nothing(tmp_path):
    """hevc inter frames: after the restart the first resent frame must be intra, or the server reports errors."""
    out = tmp_path / "out.jsonl"
    frames = 24
    with background(_server_config()) as first:
        port = first.port
        config = ClientConfig(source=str(VTEST), server=first.target, output=out, frames=frames, token=TOKEN,
                              codec="hevc", qp=30, window=6, backoff_initial_s=0.2, backoff_max_s=1.0,
                              progress=False)  # fmt: skip

        thread, result = stream_in_background(config)
        deadline = time.monotonic() + 60
        while not (out.is_file() and len(out.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        answered_before = len(out.read_text().splitlines())
        assert 5 <= answered_before < frames
    with background(_server_config(port)):
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert isinstance(summary, Summary) and summary.reconnects >= 1
    lines = _lines(out)
    assert [d["sequence"] for d in lines] == list(range(frames))  # each frame once, in order
    assert [d["error"] for d in lines] == [None] * frames
    assert sum(len(d["detections"]) for d in lines[answered_before:]) > 0


def _baf_stream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", str(VTEST), "--frames", "2", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip


def test_bad_address_and_refused_token_give_one_line_and_exit_2(server, tmp_path):
    refused = _baf_stream("--server", "127.0.0.1:1", "--connect-timeout-s", "1")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: cannot reach the server at 127.0.0.1:1 (DEADLINE_EXCEEDED: Deadline Exceeded); is it running there?"
    ]
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token\n")
    denied = _baf_stream("--server", server.target, "--token-file", str(wrong))
    assert denied.returncode == 2
    [line] = denied.stderr.strip().splitlines()
    assert line.startswith(f"error: {server.target} refused the GetCapabilities call: UNAUTHENTICATED")
    assert "--token-file / BAF_TOKEN" in line and "not-the-token" not in line
    malformed = _baf_stream("--server", "localhost")
    assert malformed.returncode == 2 and "expected HOST:PORT" in malformed.stderr


def test_mtls_with_client_certificate(pki, tmp_path):
    """--tls-ca with --tls-cert/--tls-key against a server that requires client certificates."""
    (tmp_path / "client.pem").write_bytes(pki["client_pem"])
    (tmp_path / "client.key").write_bytes(pki["client_key"])
    server_config = ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu", tls_cert=pki["cert"],
                                 tls_key=pki["key"], tls_client_ca=pki["ca"])  # fmt: skip
    with background(server_config) as server:
        summary = stream(ClientConfig(source=str(VTEST), server=f"localhost:{server.port}", frames=2,
                                      tls_ca=pki["ca"], tls_cert=tmp_path / "client.pem",
                                      tls_key=tmp_path / "client.key", progress=False))  # fmt: skip
    assert summary.frames == 2 and summary.errors == 0
