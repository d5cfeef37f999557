"""Test helper: darknet `.weights` files written independently of the loader under test.

Format: int32 major, minor, revision; `seen` as int64 when major*10+minor >= 2, else int32; then per
[convolutional] layer in cfg order: BN beta, gamma, running mean, running variance (or the conv bias
when there is no BN), then the kernels [out, in, k, k].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from baf.models.darknet import ConvLayer, Darknet


def layout(model: Darknet) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every array in file order; works on a model built on the meta device."""
    arrays = []
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, ConvLayer):
            continue
        w = layer.conv.weight
        heads = ("beta", "gamma", "mean", "var") if layer.bn is not None else ("bias",)
        arrays += [(f"{i}.{name}", (w.shape[0],)) for name in heads]
        arrays.append((f"{i}.weight", tuple(w.shape)))
    return arrays


def synthetic_floats(model: Darknet, seed: int = 0) -> np.ndarray:
    """Well-scaled random values for every array (positive variances, He-scaled kernels), concatenated."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, shape in layout(model):
        n = int(np.prod(shape))
        kind = name.rsplit(".", 1)[1]
        if kind == "var":
            parts.append(rng.random(n, dtype=np.float32) + np.float32(0.5))
        elif kind == "gamma":
            parts.append(rng.random(n, dtype=np.float32) * np.float32(0.4) + np.float32(0.3))
        elif kind == "weight":
            parts.append(rng.standard_normal(n, dtype=np.float32) * np.float32(np.sqrt(2.0 / (n // shape[0]))))
        else:
            parts.append(rng.standard_normal(n, dtype=np.float32) * np.float32(0.1))
    return np.concatenate(parts)


def write_weights(
    path: Path, floats: np.ndarray, major: int = 0, minor: int = 2, revision: int = 0, seen: int = 32013312
) -> Path:
    """Write a darknet `.weights` file holding `floats` after a header of the given version."""
    seen_type = "<i8" if major * 10 + minor >= 2 else "<i4"
    with path.open("wb") as f:
        f.write(np.array([major, minor, revision], "<i4").tobytes())
        f.write(np.array([seen], seen_type).tobytes())
        f.write(np.asarray(floats, "<f4").tobytes())
    return path


def loaded_floats(model: Darknet) -> torch.Tensor:
    """The model's parameters read back in file order, for comparison with what was written."""
    parts = []
    for layer in model.layers:
        if isinstance(layer, ConvLayer):
            if layer.bn is not None:
                bn = layer.bn
                parts += [bn.bias, bn.weight, bn.running_mean, bn.running_var]
            else:
                parts.append(layer.conv.bias)
            parts.append(layer.conv.weight)
    return torch.cat([p.detach().flatten() for p in parts])
