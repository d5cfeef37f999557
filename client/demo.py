"""The one-command demo (`make demo`): a real server process, a video streamed through it, a summary.

    python -m client.demo [--source CLIP] [--frames 100] [--out-dir runs/demo] [--ranking residual-pca]

It starts `python -m server --listen 127.0.0.1:0 --port-file F` (its log goes to OUT/server.log),
waits until the server's health check says SERVING, streams the clip with the client's defaults
(`baf stream`: JSON lines, annotated video, every frame also sized as a JPEG; --ranking picks the edge's
ranking, which the server's defaults accept for every packaged one), prints the summary,
then stops the server with SIGTERM and waits for its drain. The server is stopped on every path,
and any failure exits non-zero: 2 with one line for a user or data problem, as `baf` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from baf.cli import guarded, setup_logging
from baf.errors import BafError

log = logging.getLogger(__name__)

DEMO_CLIP = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SERVICE = "baf.v1.DetectionService"
STOP_TIMEOUT_S = 60.0


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _health(port: int) -> str:
    """The server's health status name for the detection service (UNKNOWN if the call fails)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        except grpc.RpcError:
            return "UNKNOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def start_server(out_dir: Path, timeout_s: float, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A server process (with `extra` flags) on a free loopback port, once its health check says SERVING.

    Returns (process, port); its output goes to OUT/server.log.
    """
    port_file, log_file = out_dir / "server.port", out_dir / "server.log"
    port_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "server", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            "--metrics-port", "0", *extra]  # fmt: skip
    with log_file.open("wb") as server_log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT)
    log.info("server starting: %s (log: %s)", " ".join(args[1:]), log_file)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BafError(f"the server exited with code {proc.returncode} while starting: {_tail(log_file)}")
            if port_file.is_file() and (text := port_file.read_text().strip()):
                port = int(text)
                if _health(port) == "SERVING":
                    return proc, port
            time.sleep(0.2)
        raise BafError(f"the server was not SERVING within {timeout_s:g} s; see {log_file}: {_tail(log_file)}")
    except BaseException:
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the server and wait for its drain (kill it after STOP_TIMEOUT_S); its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("server pid=%d ignored SIGTERM for %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
            proc.kill()
    return proc.wait()


def count_frames(video: Path) -> int:
    """Frames in the video's first stream, counted by ffprobe (decoding it)."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(video)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise BafError(f"ffprobe cannot read {video}: {done.stderr.strip()}")
    return int(done.stdout.strip().rstrip(","))


def run(args: argparse.Namespace) -> int:
    """Start the server, stream, print the summary, stop the server."""
    from client.config import ClientConfig
    from client.stream import stream

    if not args.source.is_file():
        raise BafError(f"demo clip {args.source} not found; `make sysdeps` installs it (Debian package opencv-doc)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.source.stem
    proc, port = start_server(args.out_dir, args.start_timeout)
    try:
        config = ClientConfig(
            source=str(args.source), server=f"127.0.0.1:{port}", frames=args.frames, compare_jpeg=True,
            output=args.out_dir / f"{stem}.jsonl", annotate=args.out_dir / f"{stem}-annotated.mp4",
            ranking=args.ranking,
        )  # fmt: skip
        summary = stream(config)
    finally:
        code = stop_server(proc)
    if code != 0:
        raise BafError(f"the server exited with code {code} after SIGTERM: {_tail(args.out_dir / 'server.log')}")
    assert config.annotate is not None
    frames_in_video = count_frames(config.annotate)
    (args.out_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    print("\n".join(summary.lines()))
    print(f"ffprobe counts {frames_in_video} frames in {config.annotate}; server stopped cleanly (exit 0); "
          f"summary also in {args.out_dir / 'summary.json'}")
    if frames_in_video != summary.frames or summary.errors:
        raise BafError(f"demo incomplete: {summary.frames} frames answered, {summary.errors} with errors, "
                       f"{frames_in_video} in the video")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m client.demo`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m client.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(os.environ.get("BAF_DEMO_SOURCE", DEMO_CLIP)),
                        help="video to stream (default: opencv-doc's vtest.avi)")
    parser.add_argument("--frames", type=int, default=100, help="frames to stream (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="default: %(default)s")
    parser.add_argument("--ranking", type=Path,
                        help="the edge's ranking: a file or a packaged name, e.g. residual-pca (default: the paper's)")
    parser.add_argument("--start-timeout", type=float, default=180.0,
                        help="seconds the server may take to come up (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
