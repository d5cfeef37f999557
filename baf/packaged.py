"""Where the package keeps its ranking files. Torch-free, so the start-up configs can check a ranking name."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def rankings_folder() -> Path:
    """The package's rankings/ folder."""
    return Path(str(resources.files("baf") / "rankings"))


def packaged_ranking_path(model: str, layer: int, variant: str | None = None) -> Path:
    """Where the package keeps the ranking of `model` at split layer `layer` (the default one, or another kept
    beside it, such as `residual-pca`)."""
    suffix = "" if variant is None else f"_{variant}"
    return rankings_folder() / f"{model}_l{layer}{suffix}.json"


def is_packaged_variant(name: str | os.PathLike[str]) -> bool:
    """True if `name` (no folder, no file of that name here) names a ranking packaged beside a default one, e.g.
    `residual-pca`: what `baf.ranking.find_ranking` then takes for any model and layer that has it."""
    text = str(name)
    if Path(text).exists() or os.sep in text or not text:
        return False
    return any(rankings_folder().glob(f"*_l*_{text}.json"))
