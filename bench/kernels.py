"""Times the BaF kernels: native vs NumPy reference vs torch (CPU), beside np.copyto of the same bytes.

    python bench/kernels.py [--json OUT]

GB/s counts the bytes each call reads plus writes. `x ref` is the native speed-up over the NumPy
reference; `% copy` is the native bandwidth as a share of np.copyto's on the same byte count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the NumPy reference lives in tests/

from baf import ops  # noqa: E402
from tests import reference_ops as ref  # noqa: E402

SHAPES = [(64, 64, 64), (256, 64, 64), (64, 32, 32)]
BITS = 8


def median_seconds(fn: Callable[[], object], min_time: float = 0.3, repeats: int = 7) -> float:
    """Median over `repeats` blocks of the per-call time, each block running at least min_time/repeats."""
    fn()  # warm-up
    calls, start = 1, time.perf_counter()
    while time.perf_counter() - start < min_time / repeats:
        fn()
        calls += 1
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return float(np.median(samples))


def cases(shape: tuple[int, int, int]) -> list[tuple[str, int, dict[str, Callable[[], object]]]]:
    """(kernel, bytes read + written, {implementation: call}) for one tensor shape."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape).astype(np.float32)
    q, lo, hi = ops.quantize(z, BITS)
    pred = (z + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    image = ops.tile(q)
    c, h, w = shape
    n = z.size
    tq, tlo, thi, tpred = torch.from_numpy(q), torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy(pred)
    return [
        ("quantize", 4 * n + n, {"native": lambda: ops.quantize(z, BITS), "numpy": lambda: ref.quantize(z, BITS)}),
        (
            "dequantize",
            n + 4 * n,
            {
                "native": lambda: ops.dequantize(q, lo, hi, BITS),
                "numpy": lambda: ref.dequantize(q, lo, hi, BITS),
                "torch": lambda: ops.dequantize_torch(tq, tlo, thi, BITS),
            },
        ),
        (
            "clamp_to_bins",
            4 * n + n + 4 * n,
            {
                "native": lambda: ops.clamp_to_bins(pred, q, lo, hi, BITS),
                "numpy": lambda: ref.clamp_to_bins(pred, q, lo, hi, BITS),
                "torch": lambda: ops.clamp_to_bins_torch(tpred, tq, tlo, thi, BITS),
            },
        ),
        ("tile", 2 * n, {"native": lambda: ops.tile(q), "numpy": lambda: ref.tile(q)}),
        (
            "untile",
            2 * n,
            {"native": lambda: ops.untile(image, c, h, w), "numpy": lambda: ref.untile(image, c, h, w)},
        ),
    ]


def copy_seconds(nbytes: int) -> float:
    """np.copyto of nbytes/2 bytes: nbytes read plus written, the bandwidth yardstick."""
    src = np.random.default_rng(1).integers(0, 255, nbytes // 2, dtype=np.uint8)
    dst = np.empty_like(src)
    return median_seconds(lambda: np.copyto(dst, src))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {BITS}-bit; times in microseconds")
    header = f"{'kernel':<14}{'shape':<14}{'native':>9}{'numpy':>10}{'torch':>9}{'copy':>8}" \
             f"{'GB/s':>7}{'copy GB/s':>10}{'x ref':>7}{'% copy':>8}"
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        for kernel, nbytes, impls in cases(shape):
            t = {name: median_seconds(fn) for name, fn in impls.items()}
            t_copy = copy_seconds(nbytes)
            row = {
                "kernel": kernel, "shape": list(shape), "bytes": nbytes,
                **{f"{k}_us": v * 1e6 for k, v in t.items()}, "copy_us": t_copy * 1e6,
                "native_gbps": nbytes / t["native"] / 1e9, "copy_gbps": nbytes / t_copy / 1e9,
                "speedup_vs_numpy": t["numpy"] / t["native"], "share_of_copy": t_copy / t["native"],
            }
            rows.append(row)
            torch_us = f"{row['torch_us']:9.0f}" if "torch_us" in row else f"{'-':>9}"
            print(
                f"{kernel:<14}{'x'.join(map(str, shape)):<14}{row['native_us']:9.0f}{row['numpy_us']:10.0f}"
                f"{torch_us}{row['copy_us']:8.0f}{row['native_gbps']:7.1f}{row['copy_gbps']:10.1f}"
                f"{row['speedup_vs_numpy']:7.1f}{100 * row['share_of_copy']:7.0f}%"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
