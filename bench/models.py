"""Times yolov3-tiny and yolov3 at 512 on the CPU: the edge half, the cloud half, and the whole model.

    python bench/models.py [--size 512] [--min-time 2] [--yolov3-weights PATH] [--json OUT]

Median milliseconds per frame (batch 1, torch.inference_mode, torch's default thread count),
from torch.utils.benchmark. yolov3-tiny runs with its real weights when they are installed; a model
without weights gets He-scaled random kernels instead. Speed does not depend on the values as long
as activations keep their scale: torch's default init shrinks them layer by layer into subnormal
floats, which slow a CPU down several times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

from baf.errors import WeightsError
from baf.models import MODELS, ModelSpec, load_model, split
from baf.models.darknet import Darknet


def build(spec: ModelSpec, weights: Path | None) -> tuple[Darknet, str]:
    """The model with real weights if they can be found, else with He-scaled random kernels; and which it got."""
    try:
        return load_model(spec.name, weights), "real"
    except WeightsError:
        torch.manual_seed(0)
        model = Darknet.from_cfg(spec.cfg_path())
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
        return model.eval().requires_grad_(False), "random"


def median_ms(fn, x: torch.Tensor, label: str, min_time: float) -> float:
    """Median ms of one call of fn(x), after a warm-up call."""
    with torch.inference_mode():
        fn(x)
        timer = benchmark.Timer("fn(x)", globals={"fn": fn, "x": x}, label=label, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per figure")
    parser.add_argument("--yolov3-weights", type=Path, help="official yolov3.weights (optional)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; input 1x3x{args.size}x{args.size}; ms per frame"
    )
    header = f"{'model':<13}{'weights':>8}{'layer':>6}{'Z shape':>12}{'edge':>9}{'cloud':>9}{'whole':>9}{'edge %':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for spec in MODELS.values():
        model, weights = build(spec, args.yolov3_weights if spec.name == "yolov3" else None)
        cut = split(model, spec.split_layer)
        x = torch.rand(1, 3, args.size, args.size)
        with torch.inference_mode():
            z = cut.edge(x)
        row = {
            "model": spec.name,
            "weights": weights,
            "split_layer": spec.split_layer,
            "size": args.size,
            "z_shape": list(z.shape),
            "edge_ms": median_ms(cut.edge, x, spec.name, args.min_time),
            "cloud_ms": median_ms(cut.cloud, z, spec.name, args.min_time),
            "whole_ms": median_ms(model, x, spec.name, args.min_time),
            "threads": torch.get_num_threads(),
        }
        rows.append(row)
        z_shape = "x".join(map(str, z.shape[1:]))
        print(
            f"{spec.name:<13}{weights:>8}{spec.split_layer:>6}{z_shape:>12}{row['edge_ms']:9.1f}"
            f"{row['cloud_ms']:9.1f}{row['whole_ms']:9.1f}{100 * row['edge_ms'] / row['whole_ms']:7.0f}%"
        )
        del model, cut
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
