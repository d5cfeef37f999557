"""Faults the service must survive, each on a real server: a client killed mid-stream, the server killed
(SIGKILL) and restarted under a streaming client, SIGTERM under load from many streams, the hevc stream
coder's ffmpeg killed on either side, and the device running out of memory on a batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from baf import bitstream
from baf.cloud import CloudPipeline
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from client.config import ClientConfig
from client.demo import DEMO_CLIP
from client.stream import stream
from server.config import ServerConfig
from server.servicer import INTERNAL_MESSAGE
from server.testing import background
from tests.integration.server_util import (
    REPO, ServerProcess, encode_frames, encode_hevc_stream, ffmpeg_children, stream_in_background,
)

pytestmark = pytest.mark.slow


def _config(**overrides) -> ServerConfig:
    return ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu", **overrides)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# Sends the frames of a .bafs container on one Stream, prints each answer, then keeps the stream open.
_CLIENT = """
import sys, threading, grpc
from baf import bitstream
from baf.v1 import detection_service_pb2 as pb, detection_service_pb2_grpc as pb_grpc
with open(sys.argv[2], "rb") as f:
    frames = list(bitstream.read_stream(f))
def requests():
    yield from (pb.StreamRequest(sequence=i, bitstream=b) for i, b in enumerate(frames))
    threading.Event().wait()
with grpc.insecure_channel(sys.argv[1]) as channel:
    for r in pb_grpc.DetectionServiceStub(channel).Stream(requests()):
        print(r.sequence, r.WhichOneof("outcome"), flush=True)
"""


def test_client_killed_mid_stream_frees_its_state(tmp_path: Path):
    """SIGKILL of a client holding an hevc stream: the server closes the call, its ffmpeg decoder and the
    stream's queue entries, and serves the next client."""
    container = tmp_path / "clip.bafs"
    with container.open("wb") as f:
        writer = bitstream.StreamWriter(f)
        for data in encode_hevc_stream(4):
            writer.write(data)
    with background(_config()) as server:
        decoders_before = set(ffmpeg_children(os.getpid(), "decoder"))
        client = subprocess.Popen([sys.executable, "-c", _CLIENT, server.target, str(container)], cwd=REPO,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            answers = [client.stdout.readline().split() for _ in range(2)]
            assert answers == [["0", "result"], ["1", "result"]]
            assert server.registry.get_sample_value("baf_active_streams") == 1
            assert set(ffmpeg_children(os.getpid(), "decoder")) - decoders_before  # the stream's decoder
            client.send_signal(signal.SIGKILL)
            client.wait(30)
        finally:
            client.kill()
            client.stdout.close()
        _wait(lambda: server.registry.get_sample_value("baf_active_streams") == 0, 30, "the stream to close")
        _wait(lambda: not set(ffmpeg_children(os.getpid(), "decoder")) - decoders_before, 30, "its decoder to end")
        assert server.registry.get_sample_value("baf_queue_depth") == 0
        with grpc.insecure_channel(server.target) as channel:
            frames = encode_hevc_stream(1)
            (answer,) = pb_grpc.DetectionServiceStub(channel).Stream(
                iter([pb.StreamRequest(sequence=0, bitstream=frames[0])]), timeout=60)
            assert answer.WhichOneof("outcome") == "result"


def test_server_sigkill_and_restart_loses_and_duplicates_nothing(tmp_path: Path):
    """The server dies without draining; a new one comes up on the same port; the client resends."""
    out, frames = tmp_path / "out.jsonl", 12
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = ServerProcess(tmp_path / "first")
    port = first.port
    config = ClientConfig(source=str(DEMO_CLIP), server=first.target, output=out, frames=frames, window=4,
                          backoff_initial_s=0.2, backoff_max_s=1.0, reconnect_timeout_s=120, progress=False)

    thread, result = stream_in_background(config)
    second = None
    try:
        _wait(lambda: len(_lines(out)) >= 3, 120, "three answers")
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(30) == -signal.SIGKILL
        answered_before = len(_lines(out))
        assert answered_before < frames
        second = ServerProcess(tmp_path / "second", "--port", str(port))
        thread.join(180)
        assert not thread.is_alive()
    finally:
        first.stop(5)
        if second is not None:
            assert second.stop() == 0, second.log.read_text()
    assert "error" not in result, result.get("error")
    assert result["summary"].reconnects >= 1
    lines = _lines(out)
    assert [d["sequence"] for d in lines] == list(range(frames))  # every frame once, in order
    assert [d["error"] for d in lines] == [None] * frames


def test_sigterm_under_load_finishes_the_frames_in_flight(shared_data: Path, tmp_path: Path):
    """Eight streams keep frames in flight; SIGTERM: every frame the server took is answered with a result,
    then each stream ends UNAVAILABLE and the server exits 0."""
    frames = encode_frames(shared_data / "coco-val164" / "images", 2)
    server = ServerProcess(tmp_path, "--max-batch", "4", "--stream-window", "2", "--drain-seconds", "60")
    release, streams = threading.Event(), 8
    answers: list[list[pb.StreamResponse]] = [[] for _ in range(streams)]
    endings: list[grpc.StatusCode | None] = [None] * streams

    def one_stream(i: int, channel: grpc.Channel) -> None:
        def requests():
            for sequence in range(6):
                if release.is_set():
                    return
                yield pb.StreamRequest(sequence=sequence, bitstream=frames[sequence % 2])
            release.wait(120)

        try:
            for response in pb_grpc.DetectionServiceStub(channel).Stream(requests(), timeout=180):
                answers[i].append(response)
        except grpc.RpcError as e:
            endings[i] = e.code()

    try:
        with grpc.insecure_channel(server.target) as channel:
            threads = [threading.Thread(target=one_stream, args=(i, channel)) for i in range(streams)]
            for t in threads:
                t.start()
            _wait(lambda: sum(map(len, answers)) >= streams, 120, "the first answers")
            server.terminate()
            answered_at_signal = sum(map(len, answers))
            for t in threads:
                t.join(120)
            release.set()
        assert server.stop(timeout=60) == 0, server.log.read_text()
    finally:
        release.set()
        server.stop(timeout=5)
    assert endings == [grpc.StatusCode.UNAVAILABLE] * streams
    for got in answers:
        assert [a.sequence for a in got] == list(range(len(got)))
        assert all(a.WhichOneof("outcome") == "result" for a in got), [a.error for a in got if a.error.message]
    assert sum(map(len, answers)) > answered_at_signal  # frames in flight at the signal were finished


def test_ffmpeg_stream_coders_killed_mid_stream(tmp_path: Path):
    """Kill the server's hevc decoder, then the client's hevc encoder: both restart, the next frame is intra,
    every frame is answered exactly once and the stream runs to its end."""
    out, frames = tmp_path / "out.jsonl", 16
    with background(_config()) as server:
        config = ClientConfig(source=str(DEMO_CLIP), server=server.target, output=out, frames=frames, codec="hevc",
                              qp=30, window=2, progress=False)  # fmt: skip
        killed = []

        thread, result = stream_in_background(config)
        for role, after in (("decoder", 4), ("encoder", 9)):
            _wait(lambda: len(_lines(out)) >= after, 120, f"{after} answers")
            (pid,) = ffmpeg_children(os.getpid(), role)
            os.kill(pid, signal.SIGKILL)
            killed.append((role, len(_lines(out))))
        thread.join(180)
        assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    lines = _lines(out)
    assert [d["sequence"] for d in lines] == list(range(frames))
    failed = [d["sequence"] for d in lines if d["error"] is not None]
    # At most the frames in flight when the decoder died are lost (inter frames without their reference).
    assert len(failed) <= config.window + 1, failed
    assert all(d["error"] is None for d in lines[killed[-1][1] + config.window + 1:])


def test_out_of_memory_batch_splits_and_the_server_lives(shared_data: Path, monkeypatch, caplog):
    """A restorer that runs out of device memory on batches > 1: the batch runs again in halves, every frame
    gets its result; when even one frame does not fit, it fails in-band with INTERNAL and the server goes on."""
    frames = encode_frames(shared_data / "coco-val164" / "images", 4)
    largest = {"batch": 1}
    restore = CloudPipeline.restore

    def restore_or_oom(self, batch):
        if len(batch) > largest["batch"]:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch)} GiB (injected)")
        return restore(self, batch)

    monkeypatch.setattr(CloudPipeline, "restore", restore_or_oom)
    config = _config(max_batch=4, max_batch_delay_ms=500, stream_window=4)
    with background(config) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)

        def send(count: int) -> list[pb.StreamResponse]:
            requests = [pb.StreamRequest(sequence=i, bitstream=frames[i % len(frames)]) for i in range(count)]
            return list(stub.Stream(iter(requests), timeout=120))

        assert [r.WhichOneof("outcome") for r in send(4)] == ["result"] * 4
        assert "out of device memory batch=" in caplog.text  # a batch > 1 formed and was split
        ran = server.registry.get_sample_value("baf_batch_size_count")
        assert server.registry.get_sample_value("baf_batch_size_bucket", {"le": "1.0"}) == ran
        largest["batch"] = 0
        failed = send(2)
        assert [(r.error.code, r.error.message) for r in failed] == [(pb.FRAME_ERROR_CODE_INTERNAL,
                                                                      INTERNAL_MESSAGE)] * 2
        largest["batch"] = 1
        assert [r.WhichOneof("outcome") for r in send(2)] == ["result"] * 2
