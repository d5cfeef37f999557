"""Helpers for the server tests: real frames from val164, a server process on a free loopback port."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def encode_frames(images: Path, count: int, *, channels: int = 64, bits: int = 6,
                  ranking: Path | None = None) -> list[bytes]:
    """`count` val164 images as .baf bitstreams (png payload: fast and dependency-free); `ranking` as the
    edge's --ranking takes it (a file or a packaged name; None: the default)."""
    from baf.edge import EdgeConfig, EdgeEncoder
    from baf.images import load_image

    encoder = EdgeEncoder.load(EdgeConfig(channels=channels, bits=bits, codec="png", ranking=ranking))
    return [encoder.encode_features(*encoder.features(load_image(p))) for p in sorted(images.glob("*.jpg"))[:count]]


def encode_hevc_stream(count: int, *, channels: int = 64, bits: int = 6, qp: int = 30) -> list[bytes]:
    """The first `count` frames of the demo clip as one inter-coded hevc stream (only the first is intra)."""
    from baf.edge import EdgeConfig, EdgeEncoder
    from baf.sources import open_source
    from client.demo import DEMO_CLIP

    config = EdgeConfig(channels=channels, bits=bits, codec="hevc", qp=qp, stream=True)
    with EdgeEncoder.load(config) as encoder:
        return [encoder.encode(f.image, sequence=f.index) for f in open_source(DEMO_CLIP, max_frames=count).frames()]


def ffmpeg_children(pid: int, role: str) -> list[int]:
    """Live ffmpeg processes started by `pid` (any thread) in one role: "encoder" (libx265) or "decoder" (hevc in)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # it ended meanwhile
            if not args or not args[0].endswith(b"ffmpeg"):
                continue
            encoder = b"libx265" in args
            decoder = not encoder and any(a == b"-f" and b == b"hevc" for a, b in zip(args, args[1:]))
            if (role == "encoder" and encoder) or (role == "decoder" and decoder):
                found.append(int(child))
    return found


def reencode_with_channels(frame: bytes, channels: int) -> bytes:
    """The same frame with only its first `channels` channels (a C the checkpoint may not serve)."""
    from baf import bitstream, codecs, ops

    parsed = bitstream.parse(frame)
    h = parsed.header
    q = bitstream.decode_frame(parsed)
    z = ops.dequantize(q, parsed.lo, parsed.hi, h.bits)[:channels]
    q2, lo, hi = ops.quantize(np.ascontiguousarray(z), h.bits)
    header = dataclasses.replace(h, channels=channels)
    return bitstream.encode_frame(header, q2, lo, hi, codecs.create("png", bits=h.bits))


def stream_in_background(config) -> tuple[threading.Thread, dict]:
    """`client.stream.stream(config)` on a started thread; the dict gets "summary" or "error" when it ends."""
    from client.stream import stream

    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = stream(config)
        except BaseException as e:  # noqa: BLE001  reported by the test thread
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def free_port() -> int:
    """A loopback port free right now (for --metrics-port; the gRPC port comes from --port-file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m server --listen 127.0.0.1:0 --port-file F ...` as a child process."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port_file = tmp / "port"
        self.log = tmp / "server.log"
        self.metrics_port = free_port()
        command = [sys.executable, "-m", "server", "--listen", "127.0.0.1:0", "--port-file", str(self.port_file),
                   "--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1", "--device", "cpu", *args]
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.port = self._wait_for_port(timeout=120)

    @property
    def target(self) -> str:
        """host:port for grpc channels."""
        return f"127.0.0.1:{self.port}"

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists():
                return int(self.port_file.read_text())
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not start in {timeout}s:\n{self.log.read_text()}")

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits."""
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM if still running, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log_file.close()
