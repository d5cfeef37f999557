"""A real Prometheus (Debian's `prometheus`) scraping a real server process, both on loopback.

After frames stream, PromQL through Prometheus' HTTP API returns the frame counter and a latency quantile;
every expression of the Grafana dashboard and every alert rule evaluates there without error. Skipped
only where the binary is missing outside CI (tests/deploy/tooling.py); in CI a missing binary fails.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from tests.deploy.tooling import DEPLOY, tool
from tests.integration.server_util import ServerProcess, encode_frames, free_port

pytestmark = pytest.mark.slow

LATENCY_P95 = "histogram_quantile(0.95, sum(rate(baf_request_latency_seconds_bucket[1m])) by (le))"
POLL_S = 60.0  # scrapes every second; a loaded CI machine may lag


class Prometheus:
    """`prometheus` on 127.0.0.1:<free port>, scraping the given metrics port every second, with our alert rules."""

    def __init__(self, tmp: Path, metrics_port: int) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
            "scrape_configs": [{"job_name": "baf-server",
                                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }  # fmt: skip
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "prometheus.log"
        binary = tool("prometheus", "Debian: apt-get install prometheus; `make sysdeps` does")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; the decoded JSON `data` (fails the test on an API error)."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant vector query's samples."""
        data = self.get("/api/v1/query", query=promql)
        return data["result"] if data["resultType"] == "vector" else []

    def wait_until(self, what: str, predicate) -> None:
        """Poll `predicate()` (every 0.25 s, POLL_S at most) until it holds."""
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if predicate():
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.25)
        pytest.fail(f"timed out after {POLL_S:g} s waiting for {what}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_and_prometheus(tmp_path: Path) -> Iterator[tuple[ServerProcess, Prometheus]]:
    tool("prometheus", "Debian: apt-get install prometheus; `make sysdeps` does")  # before the slow server start
    (tmp_path / "server").mkdir()
    (tmp_path / "prometheus").mkdir()
    server = ServerProcess(tmp_path / "server", "--max-batch", "4")
    try:
        prometheus = Prometheus(tmp_path / "prometheus", server.metrics_port)
        try:
            yield server, prometheus
        finally:
            prometheus.stop()
    finally:
        assert server.stop() == 0, server.log.read_text()


def stream(server: ServerProcess, frames: list[bytes], first_sequence: int) -> None:
    """One Stream call with `frames`; every one must come back as a result."""
    with grpc.insecure_channel(server.target) as channel:
        requests = (pb.StreamRequest(sequence=first_sequence + i, bitstream=b) for i, b in enumerate(frames))
        responses = list(pb_grpc.DetectionServiceStub(channel).Stream(requests, timeout=120))
    assert [r.WhichOneof("outcome") for r in responses] == ["result"] * len(frames)


def value(samples: list[dict[str, Any]]) -> float:
    return sum(float(s["value"][1]) for s in samples)


def test_prometheus_reads_frames_and_latency_from_a_real_server(server_and_prometheus, shared_data: Path):
    server, prometheus = server_and_prometheus
    frames = encode_frames(shared_data / "coco-val164" / "images", 4)
    prometheus.wait_until("the first scrape", lambda: value(prometheus.query('up{job="baf-server"}')) == 1)

    # Two rounds with a scrape between: rate() needs a series' increase, and the labelled series only
    # appear with their first frame.
    stream(server, frames[:2], 1)
    prometheus.wait_until("2 frames scraped", lambda: value(prometheus.query('baf_frames_total{status="ok"}')) == 2)
    stream(server, frames[2:], 3)
    prometheus.wait_until("4 frames scraped", lambda: value(prometheus.query('baf_frames_total{status="ok"}')) == 4)
    prometheus.wait_until("a latency quantile", lambda: bool(prometheus.query(LATENCY_P95))
                          and math.isfinite(value(prometheus.query(LATENCY_P95))))  # fmt: skip

    (counter,) = prometheus.query("baf_frames_total")
    assert counter["metric"]["status"] == "ok" and counter["metric"]["job"] == "baf-server"
    assert 0 < value(prometheus.query(LATENCY_P95)) < 120

    # The dashboard and the alerts are valid PromQL on a real Prometheus, and the panels fed by the
    # frames just sent show data.
    dashboard = json.loads((DEPLOY / "grafana" / "baf-server.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            samples = prometheus.query(expr)
            if any(name in expr for name in ("baf_frames_total", "baf_request_latency", "baf_frame_bytes",
                                              "baf_batch_size", "baf_queue_depth")):
                assert samples, f"{panel['title']}: no data for {expr}"
    prometheus.wait_until("the alert rules evaluated", lambda: all(
        rule["health"] == "ok" for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]
    ) and prometheus.get("/api/v1/rules")["groups"])  # fmt: skip
    alerts = prometheus.get("/api/v1/alerts")["alerts"]
    firing = [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"]
    assert firing == [], f"a healthy server fires {firing}"
