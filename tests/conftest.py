"""Shared fixtures: where the team's data lives (../shared beside the checkout)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The shipped one-for-all checkpoint (stem, relative to REPO): the one place tests name it.
SHIPPED_CHECKPOINT = "baf/checkpoints/yolov3-tiny_l8_linear_c8-128_k9"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: coco-val164/ (images + instances_val2017.json) and train-images/."""
    data = SHARED / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"test data not found at {data}; the checkout must sit beside shared/")
    return data
