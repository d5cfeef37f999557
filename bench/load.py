"""Load on a real server: N concurrent streams, a fixed number of frames each, on loopback.

    python bench/load.py [--streams 16,64] [--frames 4] [--rounds 3] [--window 2] [--max-batch 8] [--json OUT]

One `python -m server` process; for each stream count, `--rounds` rounds of N concurrent Stream calls
(grpc.aio, one channel per stream) each sending `--frames` frames (vtest.avi, encoded once up front as
the client's defaults: jxl C=64 n=4) with at most `--window` unanswered. Per row: frames/s over the
rounds' wall time, latency p50/p95/p99 (send to answer, so queueing included), and the server's RSS
after its warm-up frame and after every round (read from /proc), so growth under load shows. The bench
fails (exit 1) unless every frame got exactly one answer, with its own sequence, holding a result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from client.demo import DEMO_CLIP, start_server, stop_server
from client.output import percentile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service import encode_frames  # noqa: E402  the sibling bench's frames: the same settings

START_TIMEOUT_S = 300.0


@dataclass
class Row:
    """One stream count under load."""

    streams: int
    frames: int  # answered, over all rounds
    fps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rss_mb: list[float] = field(default_factory=list)  # after warm-up, then after each round
    lost: int = 0
    duplicated: int = 0
    errors: int = 0


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid`, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def one_stream(port: int, frames: list[bytes], count: int, window: int, offset: int,
                     latencies: list[float], row: Row) -> None:  # fmt: skip
    """`count` frames on one Stream call; checks each sequence is answered once, with a result."""
    slots = asyncio.Semaphore(window)
    sent: dict[int, float] = {}
    answered: set[int] = set()

    async def requests():
        for sequence in range(count):
            await slots.acquire()
            sent[sequence] = time.perf_counter()
            yield pb.StreamRequest(sequence=sequence, bitstream=frames[(offset + sequence) % len(frames)])

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        async for response in pb_grpc.DetectionServiceStub(channel).Stream(requests(), timeout=3600):
            if response.sequence in answered or response.sequence not in sent:
                row.duplicated += 1
                continue
            answered.add(response.sequence)
            latencies.append(1000 * (time.perf_counter() - sent[response.sequence]))
            row.errors += response.WhichOneof("outcome") != "result"
            slots.release()
    row.lost += count - len(answered)


async def load(port: int, pid: int, frames: list[bytes], streams: int, count: int, rounds: int,
               window: int) -> Row:  # fmt: skip
    """`rounds` rounds of `streams` concurrent streams of `count` frames."""
    row = Row(streams, 0, 0.0, 0.0, 0.0, 0.0, [round(rss_mb(pid), 1)])
    latencies: list[float] = []
    seconds = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        await asyncio.gather(*(one_stream(port, frames, count, window, s, latencies, row) for s in range(streams)))
        seconds += time.perf_counter() - start
        row.rss_mb.append(round(rss_mb(pid), 1))
    row.frames = len(latencies)
    row.fps = row.frames / seconds
    row.p50_ms, row.p95_ms, row.p99_ms = (percentile(latencies, q) for q in (50, 95, 99))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="16,64", help="concurrent streams, up to 64 (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=4, help="frames per stream and round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per stream count (default: %(default)s)")
    parser.add_argument("--window", type=int, default=2, help="frames in flight per stream (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=8, help="server --max-batch (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    if not all(1 <= s <= 64 for s in streams):
        parser.error("--streams: each count must be 1..64")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the server's torch: one thread, as bench/service.py
    frames = encode_frames(DEMO_CLIP, 16)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="baf-load-") as tmp:
        # a queue that holds every stream's window: under this bench nothing is dropped by design
        queue = str(max(64, max(streams) * args.window))
        proc, port = start_server(Path(tmp), START_TIMEOUT_S, "--device", "cpu", "--max-batch", str(args.max_batch),
                                  "--max-queue", queue, "--stream-window", str(args.window))  # fmt: skip
        try:
            asyncio.run(load(port, proc.pid, frames, 1, 1, 1, 1))  # warm-up
            for s in streams:
                rows.append(asyncio.run(load(port, proc.pid, frames, s, args.frames, args.rounds, args.window)))
                print(f"  {s} streams: {rows[-1].fps:.2f} frames/s, RSS {rows[-1].rss_mb} MB", flush=True)
        finally:
            code = stop_server(proc)
    print(f"\n{'streams':>8}{'frames':>8}{'fps':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'lost':>6}{'dup':>5}"
          f"{'errors':>8}  server RSS MB (warm, after each round)")  # fmt: skip
    for r in rows:
        print(f"{r.streams:>8}{r.frames:>8}{r.fps:>8.2f}{r.p50_ms:>9.0f}{r.p95_ms:>9.0f}{r.p99_ms:>9.0f}{r.lost:>6}"
              f"{r.duplicated:>5}{r.errors:>8}  {' -> '.join(f'{m:.0f}' for m in r.rss_mb)}")  # fmt: skip
    print(f"server exit code after SIGTERM: {code}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    exact = all(r.lost == r.duplicated == r.errors == 0 for r in rows)
    print("every frame answered exactly once with a result" if exact else "FAILED: frames lost, doubled or failed")
    return 0 if exact and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
