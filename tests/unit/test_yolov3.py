"""YOLOv3 (darknet-53) with a synthetic, full-size `.weights` file: loading, the layer-12 split, equality of halves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baf.errors import ModelError, WeightsError
from baf.models import zoo
from baf.models.darknet import Darknet, load_weights
from baf.models.split import split
from tests.darknet_weights import loaded_floats, synthetic_floats, write_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[np.ndarray, Darknet]:
    """The floats of a synthetic yolov3.weights, and yolov3 loaded from it through the zoo (one instantiation)."""
    with torch.device("meta"):
        shape_only = Darknet.from_cfg(zoo.get_spec("yolov3").cfg_path())
    floats = synthetic_floats(shape_only, seed=3)
    path = write_weights(tmp_path_factory.mktemp("yolov3") / "yolov3.weights", floats)
    return floats, zoo.load_model("yolov3", path)


def test_every_float_is_consumed_in_order(synthetic):
    floats, model = synthetic
    assert floats.size == 62_001_757
    assert torch.equal(loaded_floats(model), torch.from_numpy(floats))


def test_one_float_short_is_refused(synthetic, tmp_path):
    floats, model = synthetic
    short = write_weights(tmp_path / "short.weights", floats[:-1])
    with pytest.raises(WeightsError, match="1 too few"):
        load_weights(model, short)
    with pytest.raises(
        WeightsError, match="has 248,007,044 bytes, but the official yolov3.weights for yolov3 has 248,007,048"
    ):
        zoo.find_weights(zoo.get_spec("yolov3"), short)


def test_layer_12_gives_z_of_256x64x64_at_512(synthetic):
    _, model = synthetic
    cut = split(model, zoo.get_spec("yolov3").split_layer)
    with torch.inference_mode():
        z, x = cut.edge.forward_with_input(torch.rand(1, 3, 512, 512))
    assert z.shape == (1, 256, 64, 64) and x.shape == (1, 128, 128, 128)
    assert (cut.stride, cut.feature_stride, cut.channels, cut.in_channels) == (2, 8, 256, 128)


def test_edge_plus_cloud_equals_the_whole_model(synthetic):
    _, model = synthetic
    cut = split(model, 12)
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole, parts = model(x), cut.cloud(cut.edge(x))
    assert [tuple(t.shape) for t in whole] == [(1, 255, 16, 16), (1, 255, 32, 32), (1, 255, 64, 64)]
    assert all(torch.isfinite(t).all() for t in whole)
    assert max((a - b).abs().max().item() for a, b in zip(whole, parts, strict=True)) <= 1e-5


@pytest.mark.parametrize("layer, message", [(10, "layer 11 \\(shortcut\\) reads layer 8"), (81, "without batch norm")])
def test_layers_inside_residual_blocks_are_refused(synthetic, layer, message):
    with pytest.raises(ModelError, match=message):
        split(synthetic[1], layer)
