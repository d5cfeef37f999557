"""Fuzz the bitstream parser or the server's request path, bounded in time and executions.

    python -m fuzz bitstream --seconds 300                 # pure-Python mutation over the seed corpus
    python -m fuzz server --seconds 300 --max-execs 2000   # a real server in this process, over gRPC
    python -m fuzz bitstream --atheris --seconds 300       # coverage-guided (atheris/libFuzzer), if installed

Pure-Python mode draws inputs from `fuzz.corpus.generate` (seeded: `--seed` makes a run repeatable).
Atheris mode instruments `baf` and lets libFuzzer mutate, starting from the seed corpus written to
`--corpus`. Either way every input goes through `fuzz.targets` and an input that crashes or hangs is
saved under `--crashes`. Pure-Python runs end with one JSON line (executions, outcomes, findings, peak
RSS) and exit 1 if anything was found or the peak RSS passed `--max-rss-mb`; atheris runs end with
libFuzzer's final stats and its exit code (the first finding stops them).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import logging
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if "--atheris" in sys.argv:  # coverage needs baf instrumented as it is first imported, which is here
    import atheris

    _instrumented = atheris.instrument_imports(include=["baf"])
else:
    _instrumented = contextlib.nullcontext()
with _instrumented:
    from fuzz import corpus, targets

log = logging.getLogger("fuzz")

HANG_S = 30  # one bitstream input taking longer than this is a hang (the server target has call deadlines)
STREAM_EVERY = 8  # server target: every 8th input also closes a Stream call holding the inputs since the last


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def hang(signum: int, frame: object) -> None:
        raise targets.Finding(f"no answer within {seconds} s (hang)")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Run:
    """Counts of one fuzzing run, and where findings go."""

    def __init__(self, target: str, crashes: Path) -> None:
        self.target, self.crashes = target, crashes
        self.execs = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.findings: list[str] = []
        self.start = time.monotonic()

    def record(self, data: bytes, check: Callable[[], str | list[str]]) -> None:
        """Run one check of `data`; count its outcome, or save `data` as a finding."""
        self.execs += 1
        try:
            outcome = check()
        except targets.Finding as e:
            self.crashes.mkdir(parents=True, exist_ok=True)
            path = self.crashes / f"{self.target}-{hashlib.sha256(data).hexdigest()[:16]}.baf"
            path.write_bytes(data)
            self.findings.append(f"{path}: {e}")
            log.error("finding input=%s reason=%s", path, e)
            return
        for name in [outcome] if isinstance(outcome, str) else outcome:
            self.outcomes[name] += 1

    def summary(self) -> dict[str, object]:
        """The run's figures as one JSON-ready dict."""
        seconds = time.monotonic() - self.start
        return {"target": self.target, "execs": self.execs, "seconds": round(seconds, 1),
                "execs_per_s": round(self.execs / max(seconds, 1e-9), 1), "findings": len(self.findings),
                "outcomes": dict(self.outcomes.most_common()), "peak_rss_mb": round(peak_rss_mb(), 1),
                "found": self.findings}  # fmt: skip


def pure_python(args: argparse.Namespace, run: Run) -> None:
    """Random and mutated inputs from the seed corpus until the time or execution budget is spent."""
    rng = random.Random(args.seed)
    deadline = run.start + args.seconds
    with contextlib.ExitStack() as stack:
        stub = stack.enter_context(targets.server_stub()) if args.target == "server" else None
        window: list[bytes] = []
        while time.monotonic() < deadline and run.execs < args.max_execs:
            data = corpus.generate(rng)
            if stub is None:
                with _alarm(HANG_S):
                    run.record(data, lambda: targets.check_bitstream(data))
                continue
            run.record(data, lambda: targets.check_detect_frame(stub, data))
            window.append(data)
            if len(window) == STREAM_EVERY:
                # hevc seeds in order keep the stream's decoder state in play; mutated frames interleave
                inputs = [*corpus.seeds()[3:], *window]
                run.record(b"".join(window), lambda: targets.check_stream(stub, inputs))
                window = []


def with_atheris(args: argparse.Namespace, run: Run) -> None:
    """Coverage-guided: libFuzzer mutates, starting from the seeds written to --corpus."""
    import atheris

    args.corpus.mkdir(parents=True, exist_ok=True)
    for data in corpus.seeds():
        (args.corpus / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
    stub = contextlib.ExitStack().enter_context(targets.server_stub()) if args.target == "server" else None

    def one_input(data: bytes) -> None:
        if stub is None:
            run.record(data, lambda: targets.check_bitstream(data))
        else:
            run.record(data, lambda: targets.check_detect_frame(stub, data))
        if run.findings:
            raise targets.Finding(run.findings[-1])  # libFuzzer saves the input and stops, as with a crash

    libfuzzer = [sys.argv[0], str(args.corpus), f"-max_total_time={args.seconds}", f"-runs={args.max_execs}",
                 f"-timeout={HANG_S}", f"-seed={args.seed}", f"-artifact_prefix={args.crashes}/",
                 "-print_final_stats=1"]  # fmt: skip
    args.crashes.mkdir(parents=True, exist_ok=True)
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()  # libFuzzer exits the process itself, printing its own final stats (execs, peak RSS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("bitstream", "server"))
    parser.add_argument("--seconds", type=int, default=60, help="time budget (default: %(default)s)")
    parser.add_argument("--max-execs", type=int, default=1_000_000, help="execution budget (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (pip install atheris)")
    parser.add_argument("--corpus", type=Path, default=Path("runs/fuzz/corpus"), help="atheris corpus folder")
    parser.add_argument("--crashes", type=Path, default=Path("runs/fuzz/crashes"), help="findings go here")
    parser.add_argument("--max-rss-mb", type=float, default=2048, help="peak RSS above this fails the run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("baf.codecs.hevc").setLevel(logging.ERROR)  # a damaged hevc frame logs a restart: expected
    run = Run(args.target, args.crashes)
    (with_atheris if args.atheris else pure_python)(args, run)
    summary = run.summary()
    print(json.dumps(summary), flush=True)
    return 1 if run.findings or summary["peak_rss_mb"] > args.max_rss_mb else 0


if __name__ == "__main__":
    sys.exit(main())
