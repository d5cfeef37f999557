"""cfg parsing, graph building, the .weights loader, and splitting, on small and packaged cfgs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baf.errors import ModelError, WeightsError
from baf.models.darknet import Darknet, MaxPool, load_weights, parse_cfg, read_header
from baf.models.split import split
from baf.models.zoo import get_spec
from tests.darknet_weights import layout, loaded_floats, synthetic_floats, write_weights

# A small network with every supported section: strided convs, both pools, a shortcut, a route of two layers
# that reads layer 2 (so layers 0-2 can be split, later ones not), two heads.
SMALL = """
[net]
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 2,3
anchors = 1,2, 3,4, 5,6, 7,8
classes=4
num=4

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 0,1
anchors = 1,2, 3,4, 5,6, 7,8
classes=4
num=4
"""

# Without the upsample, `route -1, 2` would join stride-4 and stride-2 features.
MISMATCHED_ROUTE = SMALL.replace("[upsample]\nstride=2\n", "")


@pytest.fixture
def small() -> Darknet:
    torch.manual_seed(0)
    return Darknet(parse_cfg(SMALL, "small.cfg"), "small", "small.cfg").eval()


def test_parse_cfg_sections_and_options():
    sections = parse_cfg("# comment\n[net]\nwidth = 512\n\n; also a comment\n[yolo]\nmask = 1,2,3\n")
    assert [(s.kind, s.line) for s in sections] == [("net", 2), ("yolo", 6)]
    assert sections[1].options == {"mask": "1,2,3"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[net]\n[convolutional\n", "x.cfg:2: malformed section header"),
        ("width=3\n[net]\n", "x.cfg:1: expected 'key=value'"),
        ("[convolutional]\nfilters=3\n", "x.cfg: must start with a [net] section"),
    ],
)
def test_parse_cfg_errors_name_the_line(text, message):
    with pytest.raises(ModelError, match=message.replace("[", r"\[")):
        parse_cfg(text, "x.cfg")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("activation=leaky", "activation=mish", "activation 'mish' is not supported"),
        ("[maxpool]", "[dropout]", r"unsupported section type \[dropout\]"),
        ("from=-2", "from=-9", "layer reference -9 points outside"),
        ("filters=18", "filters=19", "expects 18 input channels, gets 19"),
        ("filters=8\nsize=3", "filters=x\nsize=3", "filters must be an integer, got 'x'"),
        ("mask = 2,3", "mask = 2,4", r"mask \[2, 4\] must index the 4 anchors"),
    ],
)
def test_bad_cfg_is_refused_with_its_line(old, new, message):
    with pytest.raises(ModelError, match=rf"small\.cfg:\d+ \[\w+\]: {message}"):
        Darknet(parse_cfg(SMALL.replace(old, new, 1), "small.cfg"), "small", "small.cfg")


def test_route_of_different_resolutions_is_refused():
    with pytest.raises(ModelError, match="different resolutions"):
        Darknet(parse_cfg(MISMATCHED_ROUTE, "small.cfg"))


def test_small_graph_shapes(small):
    assert small.strides == (1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 2)
    assert small.out_channels[11:13] == (16, 32)
    assert small.reused == frozenset({2, 5, 6, 7, 11})
    assert [h.anchors for h in small.heads] == [((5, 6), (7, 8)), ((1, 2), (3, 4))]
    out = small(torch.rand(2, 3, 32, 32))
    assert [tuple(o.shape) for o in out] == [(2, 18, 8, 8), (2, 18, 16, 16)]


def test_maxpool_2x2_stride1_keeps_size_and_pads_with_minus_infinity():
    x = -torch.arange(1.0, 17.0).view(1, 1, 4, 4)  # all negative: zero padding would show up
    y = MaxPool(2, 1, 1)(x)
    assert y.shape == x.shape
    assert y[0, 0, 3, 3] == x[0, 0, 3, 3]
    assert y[0, 0, 0, 3] == torch.maximum(x[0, 0, 0, 3], x[0, 0, 1, 3])
    assert MaxPool(2, 2, 1)(x).shape == (1, 1, 2, 2)


def test_packaged_cfgs_match_the_official_weights_sizes():
    with torch.device("meta"):
        tiny = Darknet.from_cfg(get_spec("yolov3-tiny").cfg_path())
        yolo = Darknet.from_cfg(get_spec("yolov3").cfg_path())
    assert len(tiny.layers) == 24 and len(yolo.layers) == 107
    assert 20 + 4 * tiny.num_weights() == get_spec("yolov3-tiny").weights_bytes
    assert 20 + 4 * yolo.num_weights() == get_spec("yolov3").weights_bytes == 248_007_048
    # The released tiny weights were trained with mask 1,2,3 in the second head, not 0,1,2.
    assert tiny.heads[1].anchors == ((23, 27), (37, 58), (81, 82))
    assert [h.layer for h in yolo.heads] == [82, 94, 106]


@pytest.mark.parametrize("major, minor, header_bytes", [(0, 1, 16), (0, 2, 20), (1, 0, 20)])
def test_weights_fill_every_tensor_in_file_order(tmp_path, small, major, minor, header_bytes):
    floats = synthetic_floats(small, seed=1)
    path = write_weights(tmp_path / "small.weights", floats, major, minor, 5, seen=123456)
    assert path.stat().st_size == header_bytes + 4 * floats.size
    header = load_weights(small, path)
    assert (header.major, header.minor, header.revision, header.seen, header.nbytes) == (
        major,
        minor,
        5,
        123456,
        header_bytes,
    )
    assert torch.equal(loaded_floats(small), torch.from_numpy(floats))
    # Spot-check placement: the first BN beta opens the file, the last head's conv bias comes before its kernels.
    assert torch.equal(small.layers[0].bn.bias, torch.from_numpy(floats[:8]))
    names = [name for name, _ in layout(small)]
    assert names[:5] == ["0.beta", "0.gamma", "0.mean", "0.var", "0.weight"] and names[-2:] == ["14.bias", "14.weight"]


@pytest.mark.parametrize("delta, message", [(-1, "1 too few"), (1, "1 too many")])
def test_weights_with_wrong_float_count_are_refused(tmp_path, small, delta, message):
    floats = synthetic_floats(small)
    floats = floats[:delta] if delta < 0 else np.concatenate([floats, floats[:delta]])
    with pytest.raises(WeightsError, match=f"small needs {small.num_weights():,} .*{message}"):
        load_weights(small, write_weights(tmp_path / "w.weights", floats))


def test_damaged_weights_are_refused(tmp_path, small):
    floats = synthetic_floats(small)
    floats[7] = np.nan
    with pytest.raises(WeightsError, match="NaN"):
        load_weights(small, write_weights(tmp_path / "nan.weights", floats))
    ragged = tmp_path / "ragged.weights"
    ragged.write_bytes(write_weights(tmp_path / "ok.weights", synthetic_floats(small)).read_bytes() + b"\0")
    with pytest.raises(WeightsError, match="not whole float32 values"):
        load_weights(small, ragged)
    (tmp_path / "short.weights").write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError, match="too short"):
        load_weights(small, tmp_path / "short.weights")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_weights(small, tmp_path / "missing.weights")


def test_read_header_versions():
    old = np.array([0, 1, 0, 7], "<i4").tobytes()
    assert read_header(old).seen == 7 and read_header(old).nbytes == 16
    new = np.array([0, 2, 0], "<i4").tobytes() + np.array([2**40], "<i8").tobytes()
    assert read_header(new).seen == 2**40 and read_header(new).nbytes == 20


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_split_halves_equal_the_whole_network(small, layer):
    x = torch.rand(2, 3, 32, 32)
    cut = split(small, layer)
    z, x_in = cut.edge.forward_with_input(x)
    assert x_in.shape[1] == cut.in_channels and z.shape[1] == cut.channels
    assert z.shape[-1] * cut.feature_stride == 32 and x_in.shape[-1] == z.shape[-1] * cut.stride
    z_copy = z.clone()
    for whole, parts in zip(small(x), cut.cloud(z), strict=True):
        assert torch.equal(whole, parts)
    assert torch.equal(z, z_copy), "the cloud half must not change Z in place"


def test_split_exposes_the_layer_conv_bn_and_its_exact_affine(small):
    small.layers[1].bn.running_mean.uniform_(-1, 1)
    small.layers[1].bn.running_var.uniform_(0.5, 2)
    cut = split(small, 1)
    assert cut.conv is small.layers[1].conv and cut.bn is small.layers[1].bn and cut.stride == 2
    x = torch.rand(1, 3, 32, 32)
    z, x_in = cut.edge.forward_with_input(x)
    scale, shift = cut.bn_affine()
    z_affine = cut.conv(x_in).double() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    assert torch.allclose(z_affine.float(), z, atol=1e-5)


@pytest.mark.parametrize(
    "layer, message",
    [
        (3, "layer 3: it is a maxpool, not a conv"),
        (8, "layer 8: it is a conv without batch norm"),
        (4, "layer 12 \\(route\\) reads layer 2"),
        (6, "layer 7 \\(shortcut\\) reads layer 5"),
        (13, "a detection head comes before it"),
        (24, "outside small's layers 0..15"),
    ],
)
def test_split_refuses_layers_it_cannot_cut(small, layer, message):
    with pytest.raises(ModelError, match=message):
        split(small, layer)
