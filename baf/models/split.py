"""Cutting a Darknet network inside a conv layer: the edge half ends at the BN output Z of layer l,
the cloud half starts with that layer's activation (DESIGN.md, Models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from baf.errors import ModelError
from baf.images import Letterbox, letterbox
from baf.models.darknet import ConvLayer, Darknet, Yolo, run_layers


class EdgeModel(nn.Module):
    """Layers 0..l-1 and the conv + BN of layer l: images [B,3,S,S] -> Z [B,P,S/s,S/s]."""

    def __init__(self, model: Darknet, layer: int) -> None:
        super().__init__()
        check_split_layer(model, layer)
        target = cast(ConvLayer, model.layers[layer])
        self.layers = nn.ModuleList(model.layers[:layer])
        self.conv = target.conv
        self.bn = cast(nn.BatchNorm2d, target.bn)
        self._reused = model.reused

    def forward(self, images: Tensor) -> Tensor:
        """Z, the BN output of the split layer."""
        return self.forward_with_input(images)[0]

    def forward_with_input(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(Z, X): the BN output of the split layer and the conv's input (the previous layer's output)."""
        x = run_layers(self.layers, 0, images, {}, self._reused, [])
        return self.bn(self.conv(x)), x


class CloudModel(nn.Module):
    """The activation of layer l and every later layer: Z (possibly restored) -> raw head maps."""

    def __init__(self, model: Darknet, layer: int) -> None:
        super().__init__()
        check_split_layer(model, layer)
        target = cast(ConvLayer, model.layers[layer])
        self.layer = layer
        self.act = target.act
        self.layers = nn.ModuleList(model.layers[layer + 1 :])
        self.heads = model.heads
        self._reused = model.reused

    def forward(self, z: Tensor) -> list[Tensor]:
        """Raw head maps [B, A*(5+classes), h, w], as `Darknet.forward` gives them."""
        y = self.act(z)
        saved = {self.layer: y} if self.layer in self._reused else {}
        heads: list[Tensor] = []
        run_layers(self.layers, self.layer + 1, y, saved, self._reused, heads)
        return heads

    def features(self, z: Tensor, upto: int) -> Tensor:
        """The output of model layer `upto` (> the split layer, before the first [yolo] head) from Z."""
        first = self.layer + 1
        if not first <= upto < first + len(self.layers):
            raise ValueError(f"layer {upto}: expected a layer after the split ({first}..{first + len(self.layers) - 1})")
        y = self.act(z)
        saved = {self.layer: y} if self.layer in self._reused else {}
        heads: list[Tensor] = []
        out = run_layers(self.layers[: upto - self.layer], first, y, saved, self._reused, heads)
        if heads:
            raise ValueError(f"layer {upto}: past the first detection head; pick an earlier layer")
        return out


@dataclass(frozen=True, eq=False)
class Split:
    """A network cut inside conv layer `layer`. The halves share their modules with `model`."""

    model: Darknet
    layer: int
    edge: EdgeModel
    cloud: CloudModel

    @property
    def conv(self) -> nn.Conv2d:
        """The split layer's conv (no bias: BN follows it)."""
        return self.edge.conv

    @property
    def bn(self) -> nn.BatchNorm2d:
        """The split layer's batch norm, whose output is Z."""
        return self.edge.bn

    @property
    def stride(self) -> int:
        """The split conv's own stride: X is this many times larger than Z in each dimension."""
        return int(self.conv.stride[0])

    @property
    def feature_stride(self) -> int:
        """Input pixels per Z pixel (Z is [P, S/feature_stride, S/feature_stride])."""
        return self.model.strides[self.layer]

    @property
    def channels(self) -> int:
        """P, the channels of Z."""
        return self.conv.out_channels

    @property
    def in_channels(self) -> int:
        """Q, the channels of X."""
        return self.conv.in_channels

    def bn_affine(self) -> tuple[Tensor, Tensor]:
        """(scale, shift) [P] with Z = scale * conv(X) + shift per channel, in float64 so that it inverts cleanly."""
        bn = self.bn
        mean, var = cast(Tensor, bn.running_mean).double(), cast(Tensor, bn.running_var).double()
        scale = bn.weight.double() / torch.sqrt(var + bn.eps)
        return scale, bn.bias.double() - mean * scale


def check_split_layer(model: Darknet, layer: int) -> None:
    """Raise `ModelError` unless the network can be cut inside `layer` (conv + BN, nothing bypasses it)."""
    n = len(model.layers)
    if not 0 <= layer < n:
        raise ModelError(f"split layer {layer} is outside {model.name}'s layers 0..{n - 1}")
    target = model.layers[layer]
    if not isinstance(target, ConvLayer) or target.bn is None:
        kind = "conv without batch norm" if isinstance(target, ConvLayer) else type(target).__name__.lower()
        raise ModelError(f"cannot split {model.name} at layer {layer}: it is a {kind}, not a conv + BN layer")
    if any(isinstance(m, Yolo) for m in model.layers[:layer]):
        raise ModelError(f"cannot split {model.name} at layer {layer}: a detection head comes before it")
    for j in range(layer + 1, n):
        bypass = [i for i in model.inputs[j] if i < layer]
        if bypass:
            raise ModelError(
                f"cannot split {model.name} at layer {layer}: layer {j} ({type(model.layers[j]).__name__.lower()}) "
                f"reads layer {bypass[0]}, which the cloud half would not have"
            )


def split(model: Darknet, layer: int) -> Split:
    """Cut `model` inside conv layer `layer` (`ModelError` if it cannot be cut there).

    The halves share the model's modules, so they run in its current mode and on its device.
    """
    return Split(model, layer, EdgeModel(model, layer), CloudModel(model, layer))


def edge_image(edge: EdgeModel, image: np.ndarray, size: int = 512) -> tuple[Tensor, Letterbox]:
    """Letterbox one RGB uint8 [H,W,3] image to `size` and run the edge half: (Z [1,P,h,w], placement)."""
    x, box = letterbox(image, size)
    device = edge.conv.weight.device
    with torch.inference_mode():
        return edge(x[None].to(device)), box
