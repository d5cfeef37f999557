"""The service's cost: frames/s and latency through gRPC on loopback vs the same frames in-process, batching on/off.

    python bench/service.py [--frames 32] [--repeats 3] [--streams 1,4,16] [--batches 1,8] [--threads 1] [--json OUT]

The frames are vtest.avi encoded once up front (client defaults: jxl, C=64, n=4, intra, so every stream
can send the same bitstreams); the edge half is not what this measures. Then, one after the other so
they never share the CPU:
- in-process: `server.app.load_pipeline` (the server's own model and BaF predictor), each frame decoded
  (`FrameDecoder`) and run through `CloudPipeline.detect` in batches of the max batch size, one thread;
  a frame's latency is its batch's time;
- gRPC: a real `python -m server --max-batch B` process on 127.0.0.1; S concurrent Stream calls from
  this process (grpc.aio), each keeping `--window` frames in flight; together they send --frames
  frames (at least 2 per stream). Latency is send to answer, so it includes waiting in the server's
  queue, which is what a client sees.
Each server gets one unmeasured warm-up frame. fps is frames over the wall time of one run; p50/p95
are over all frames of a run; each figure is the median over --repeats runs (fps, p50 and p95 each
on its own). "vs in-process" divides gRPC fps by in-process fps at the same max batch. Both paths run
torch with --threads intra-op threads (default 1: on a 2-core machine that is also training, two
threads per process made the in-process path 3-10x slower and erratic; 0 keeps torch's default).
On a shared CPU the figures are noisy, and a process with more runnable threads (the server: gRPC,
decode pool, model thread) gets a larger share of a contended CPU than the one-thread in-process loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import torch

from baf.cloud import CloudPipeline
from baf.edge import EdgeConfig, EdgeEncoder
from baf.sources import open_source
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from client.demo import DEMO_CLIP, start_server, stop_server
from client.output import percentile
from server.app import load_pipeline
from server.config import ServerConfig

START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    path: str  # "in-process" or "grpc"
    streams: int
    max_batch: int
    frames: int
    fps: float
    p50_ms: float
    p95_ms: float
    mean_batch: float | None = None


def median_row(runs: list[Row]) -> Row:
    """One row of medians (fps, p50, p95, mean batch) over repeated runs of one configuration."""
    first = runs[0]
    batch = [r.mean_batch for r in runs if r.mean_batch is not None]
    return Row(first.path, first.streams, first.max_batch, first.frames, statistics.median(r.fps for r in runs),
               statistics.median(r.p50_ms for r in runs), statistics.median(r.p95_ms for r in runs),
               statistics.median(batch) if batch else None)  # fmt: skip


def encode_frames(source: Path, count: int) -> list[bytes]:
    """`count` frames of the clip as intra .baf bitstreams with the client's default settings."""
    with EdgeEncoder.load(EdgeConfig(channels=64, bits=4, codec="jxl")) as encoder:
        return [encoder.encode(f.image, sequence=0) for f in open_source(source, max_frames=count).frames()]


def in_process(pipeline: CloudPipeline, frames: list[bytes], max_batch: int) -> Row:
    """Decode and detect every frame in this thread, `max_batch` at a time."""
    decoder = pipeline.stream()
    pipeline.detect([decoder.decode(frames[0])])  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    for i in range(0, len(frames), max_batch):
        batch_start = time.perf_counter()
        pipeline.detect([decoder.decode(data) for data in frames[i : i + max_batch]])
        latencies += [1000 * (time.perf_counter() - batch_start)] * len(frames[i : i + max_batch])
    seconds = time.perf_counter() - start
    decoder.close()
    return Row("in-process", 1, max_batch, len(frames), len(frames) / seconds, percentile(latencies, 50),
               percentile(latencies, 95), float(min(max_batch, len(frames))))  # fmt: skip


async def _one_stream(stub: pb_grpc.DetectionServiceStub, frames: list[bytes], window: int,
                      latencies: list[float], batches: list[int]) -> None:  # fmt: skip
    """Send `frames` on one Stream call with at most `window` unanswered; record each round trip."""
    slots = asyncio.Semaphore(window)
    sent: dict[int, float] = {}

    async def requests():
        for sequence, data in enumerate(frames):
            await slots.acquire()
            sent[sequence] = time.perf_counter()
            yield pb.StreamRequest(sequence=sequence, bitstream=data)

    async for response in stub.Stream(requests()):
        latencies.append(1000 * (time.perf_counter() - sent.pop(response.sequence)))
        if response.WhichOneof("outcome") != "result":
            raise RuntimeError(f"frame {response.sequence}: {response.error.message}")
        batches.append(response.result.timings.batch_size)
        slots.release()


async def through_grpc(port: int, frames: list[bytes], streams: int, total: int, window: int) -> Row:
    """`streams` concurrent Stream calls sharing `total` frames; fps over the whole run."""
    per_stream = max(2, total // streams)
    latencies: list[float] = []
    batches: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DetectionServiceStub(channel)
        start = time.perf_counter()
        await asyncio.gather(*(
            _one_stream(stub, [frames[(s + i) % len(frames)] for i in range(per_stream)], window, latencies, batches)
            for s in range(streams)
        ))  # fmt: skip
        seconds = time.perf_counter() - start
    n = per_stream * streams
    return Row("grpc", streams, 0, n, n / seconds, percentile(latencies, 50), percentile(latencies, 95),
               sum(batches) / len(batches))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEMO_CLIP, help="clip to encode (default: vtest.avi)")
    parser.add_argument("--frames", type=int, default=32, help="frames per measured run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure, median taken (default: %(default)s)")
    parser.add_argument("--streams", default="1,4,16", help="concurrent streams (default: %(default)s)")
    parser.add_argument("--batches", default="1,8", help="server max batch sizes (default: %(default)s)")
    parser.add_argument("--window", type=int, default=4, help="frames in flight per stream (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per path (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch in the server processes
    streams = [int(s) for s in args.streams.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    frames = encode_frames(args.source, min(args.frames, 64))
    print(f"{len(frames)} frames of {args.source.name} pre-encoded (jxl C=64 n=4, mean "
          f"{sum(map(len, frames)) / len(frames) / 1000:.1f} kB); torch {torch.get_num_threads()} threads; "
          f"{args.frames} frames per run, median of {args.repeats} runs, window {args.window} per stream",
          flush=True)  # fmt: skip
    rows: list[Row] = []
    pipeline, _ = load_pipeline(ServerConfig(device="cpu"))
    for b in batches:
        runs = [in_process(pipeline, [frames[i % len(frames)] for i in range(args.frames)], b)
                for _ in range(args.repeats)]
        rows.append(median_row(runs))
        print(f"  in-process max batch {b}: {', '.join(f'{r.fps:.2f}' for r in runs)} fps", flush=True)
    del pipeline  # the server processes get the CPU and memory to themselves
    with tempfile.TemporaryDirectory(prefix="baf-bench-") as tmp:
        for b in batches:
            proc, port = start_server(Path(tmp), START_TIMEOUT_S, "--device", "cpu", "--max-batch", str(b))
            try:
                asyncio.run(through_grpc(port, frames, 1, 1, 1))  # warm-up
                for s in streams:
                    runs = [asyncio.run(through_grpc(port, frames, s, args.frames, args.window))
                            for _ in range(args.repeats)]
                    rows.append(Row(**{**asdict(median_row(runs)), "max_batch": b}))
                    print(f"  grpc max batch {b}, {s} streams: {', '.join(f'{r.fps:.2f}' for r in runs)} fps",
                          flush=True)
            finally:
                stop_server(proc)

    local = {r.max_batch: r.fps for r in rows if r.path == "in-process"}
    print()
    header = (f"{'path':<11}{'streams':>8}{'max batch':>10}{'mean batch':>11}{'frames':>7}{'fps':>8}{'p50 ms':>8}"
              f"{'p95 ms':>8}{'vs in-process':>14}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r.fps / local[r.max_batch]:.2f}x" if r.path == "grpc" and r.max_batch in local else ""
        print(f"{r.path:<11}{r.streams:>8}{r.max_batch:>10}{r.mean_batch or 0:>11.1f}{r.frames:>7}{r.fps:>8.2f}"
              f"{r.p50_ms:>8.0f}{r.p95_ms:>8.0f}{ratio:>14}")  # fmt: skip
    grpc_fps = {(r.streams, r.max_batch): r.fps for r in rows if r.path == "grpc"}
    top = max(streams)
    if (top, 1) in grpc_fps and (top, max(batches)) in grpc_fps:
        print(f"\nbatching at {top} streams: max batch {max(batches)} gives "
              f"{grpc_fps[(top, max(batches))] / grpc_fps[(top, 1)]:.2f}x the fps of max batch 1 (goal >= 1.3x)")
    best = {b: max(f for (s, bb), f in grpc_fps.items() if bb == b) for b in batches}
    print("best gRPC fps / in-process fps: " + ", ".join(
        f"max batch {b}: {best[b] / local[b]:.2f}x" for b in batches if b in local) + " (goal >= 0.85x)")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
