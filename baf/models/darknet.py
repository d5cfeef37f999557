"""Darknet models: `.cfg` parsing, the layer graph as torch modules, and the `.weights` loader.

Supported sections: [net], [convolutional] (leaky or linear, optional batch norm), [maxpool]
(with darknet's padding, so the 2x2 stride-1 pool keeps the size), [route], [shortcut],
[upsample] and [yolo]. Layer indices count sections after [net] from 0, as darknet does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baf.errors import ModelError, WeightsError

log = logging.getLogger(__name__)

LEAKY_SLOPE = 0.1
BN_EPS = 1e-5


@dataclass(frozen=True)
class Section:
    """One `[kind]` block of a cfg file: its options as strings, and where it starts."""

    kind: str
    line: int
    options: dict[str, str] = field(default_factory=dict)


def parse_cfg(text: str, source: str = "<cfg>") -> list[Section]:
    """Split darknet cfg text into sections; `source` names the file in error messages."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ModelError(f"{source}:{number}: malformed section header {line!r}")
            sections.append(Section(line[1:-1].strip(), number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ModelError(f"{source}:{number}: expected 'key=value' inside a section, got {line!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise ModelError(f"{source}: must start with a [net] section")
    return sections


class _Options:
    """Typed reads of one section's options, with errors that point at the cfg line."""

    def __init__(self, section: Section, source: str) -> None:
        self._s = section
        self._where = f"{source}:{section.line} [{section.kind}]"

    def error(self, message: str) -> ModelError:
        return ModelError(f"{self._where}: {message}")

    def has(self, key: str) -> bool:
        return key in self._s.options

    def get_text(self, key: str, default: str | None = None) -> str:
        value = self._s.options.get(key, default)
        if value is None:
            raise self.error(f"missing option {key!r}")
        return value

    def get_int(self, key: str, default: int | None = None) -> int:
        value = self.get_text(key, None if default is None else str(default))
        try:
            return int(value)
        except ValueError:
            raise self.error(f"{key} must be an integer, got {value!r}") from None

    def get_ints(self, key: str) -> list[int]:
        value = self.get_text(key)
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise self.error(f"{key} must be comma-separated integers, got {value!r}") from None

    def get_floats(self, key: str) -> list[float]:
        value = self.get_text(key)
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise self.error(f"{key} must be comma-separated numbers, got {value!r}") from None


class ConvLayer(nn.Module):
    """[convolutional]: conv, optional batch norm, activation.

    `pre_activation` stops at the BN output (the paper's Z); `forward` adds the activation.
    """

    def __init__(
        self, in_channels: int, filters: int, size: int, stride: int, padding: int, batch_normalize: bool, leaky: bool
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, size, stride, padding, bias=not batch_normalize)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS) if batch_normalize else None
        # Not in place: the cloud half must not overwrite a Z that its caller still holds.
        self.act: nn.Module = nn.LeakyReLU(LEAKY_SLOPE) if leaky else nn.Identity()

    def pre_activation(self, x: Tensor) -> Tensor:
        """Conv then BN (the BN output Z), without the activation."""
        y = self.conv(x)
        return self.bn(y) if self.bn is not None else y

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.pre_activation(x))


class MaxPool(nn.Module):
    """[maxpool] with darknet's padding: `padding` (default size-1) cells of -inf, the smaller half first."""

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        if self.padding:
            before, after = self.padding // 2, self.padding - self.padding // 2
            x = F.pad(x, (before, after, before, after), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class Upsample(nn.Module):
    """[upsample]: nearest-neighbour by an integer factor."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class Route(nn.Module):
    """[route]: the channel concatenation of earlier layers' outputs (absolute indices)."""

    def __init__(self, sources: tuple[int, ...]) -> None:
        super().__init__()
        self.sources = sources


class Shortcut(nn.Module):
    """[shortcut] with a linear activation: the previous output plus an earlier layer's output."""

    def __init__(self, source: int) -> None:
        super().__init__()
        self.source = source


@dataclass(frozen=True)
class YoloSpec:
    """One [yolo] head: its layer index, anchors (w, h in input pixels, already masked) and class count."""

    layer: int
    anchors: tuple[tuple[float, float], ...]
    classes: int


class Yolo(nn.Module):
    """[yolo]: marks a detection head; the network hands its input on raw (decoding is in `detect`)."""

    def __init__(self, spec: YoloSpec) -> None:
        super().__init__()
        self.spec = spec


def run_layers(
    layers: Iterable[nn.Module],
    first: int,
    x: Tensor,
    saved: dict[int, Tensor],
    reused: frozenset[int],
    heads: list[Tensor],
) -> Tensor:
    """Run `layers` (whose first has index `first`) on `x`; return the last output.

    `saved` holds outputs that later layers read (indices in `reused`) and is filled as it goes;
    the input of each [yolo] layer is appended to `heads`.
    """
    for i, layer in enumerate(layers, first):
        if isinstance(layer, Route):
            x = torch.cat([saved[j] for j in layer.sources], 1) if len(layer.sources) > 1 else saved[layer.sources[0]]
        elif isinstance(layer, Shortcut):
            x = x + saved[layer.source]
        elif isinstance(layer, Yolo):
            heads.append(x)
        else:
            x = layer(x)
        if i in reused:
            saved[i] = x
    return x


class Darknet(nn.Module):
    """A darknet network built from cfg sections; `forward` returns the raw maps of its [yolo] heads.

    Attributes for callers: `layers` (one module per cfg section after [net]), `heads` (the
    `YoloSpec`s in output order), `out_channels` and `strides` (per layer: channels, and input
    pixels per output pixel), `reused` (indices whose outputs a route or shortcut reads), and
    `inputs` (per layer, the indices it reads).
    """

    def __init__(self, sections: Sequence[Section], name: str = "darknet", source: str = "<cfg>") -> None:
        super().__init__()
        self.name = name
        net = _Options(sections[0], source)
        channels, stride = net.get_int("channels", 3), 1
        self.in_channels = channels
        self.layers = nn.ModuleList()
        out_channels: list[int] = []
        strides: list[int] = []
        inputs: list[tuple[int, ...]] = []
        heads: list[YoloSpec] = []
        for i, section in enumerate(sections[1:]):
            o = _Options(section, source)
            reads: tuple[int, ...] = (i - 1,) if i else ()
            layer: nn.Module
            if section.kind == "convolutional":
                size = o.get_int("size", 1)
                padding = o.get_int("padding", size // 2 if o.get_int("pad", 0) else 0)
                activation = o.get_text("activation", "logistic")
                if activation not in ("leaky", "linear"):
                    raise o.error(f"activation {activation!r} is not supported (leaky, linear)")
                if o.get_int("groups", 1) != 1:
                    raise o.error("grouped convolutions are not supported")
                filters, conv_stride = o.get_int("filters"), o.get_int("stride", 1)
                layer = ConvLayer(
                    channels,
                    filters,
                    size,
                    conv_stride,
                    padding,
                    bool(o.get_int("batch_normalize", 0)),
                    activation == "leaky",
                )
                channels, stride = filters, stride * conv_stride
            elif section.kind == "maxpool":
                pool_stride = o.get_int("stride", 1)
                size = o.get_int("size", pool_stride)
                layer = MaxPool(size, pool_stride, o.get_int("padding", size - 1))
                stride *= pool_stride
            elif section.kind == "upsample":
                factor = o.get_int("stride", 2)
                if factor < 1 or stride % factor:
                    raise o.error(f"cannot upsample stride-{stride} features by {factor}")
                layer, stride = Upsample(factor), stride // factor
            elif section.kind == "route":
                if o.has("groups"):
                    raise o.error("route groups are not supported")
                reads = tuple(_absolute(v, i, o) for v in o.get_ints("layers"))
                if len({strides[j] for j in reads}) != 1:
                    raise o.error(f"routed layers {list(reads)} have different resolutions")
                layer = Route(reads)
                channels, stride = sum(out_channels[j] for j in reads), strides[reads[0]]
            elif section.kind == "shortcut":
                source_index = _absolute(o.get_int("from"), i, o)
                if o.get_text("activation", "linear") != "linear":
                    raise o.error("only linear shortcuts are supported")
                if (out_channels[source_index], strides[source_index]) != (channels, stride):
                    raise o.error(f"layer {source_index} does not match the previous layer's shape")
                layer, reads = Shortcut(source_index), (i - 1, source_index)
            elif section.kind == "yolo":
                spec = _yolo_spec(o, i)
                if channels != len(spec.anchors) * (spec.classes + 5):
                    raise o.error(f"expects {len(spec.anchors) * (spec.classes + 5)} input channels, gets {channels}")
                layer = Yolo(spec)
                heads.append(spec)
            else:
                raise o.error(f"unsupported section type [{section.kind}]")
            self.layers.append(layer)
            out_channels.append(channels)
            strides.append(stride)
            inputs.append(reads)
        if not heads:
            raise ModelError(f"{source}: has no [yolo] layer")
        self.heads = tuple(heads)
        self.out_channels = tuple(out_channels)
        self.strides = tuple(strides)
        self.inputs = tuple(inputs)
        self.reused = frozenset(
            j for i, layer in enumerate(self.layers) if isinstance(layer, (Route, Shortcut)) for j in inputs[i]
        )

    @classmethod
    def from_cfg(cls, path: str | os.PathLike[str]) -> Darknet:
        """Build the (randomly initialised) network that the cfg file at `path` describes."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ModelError(f"cannot read cfg {path}: {e.strerror}") from None
        return cls(parse_cfg(text, str(path)), Path(path).stem, str(path))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images [B,C,S,S] (S a multiple of the largest stride) -> raw head maps [B, A*(5+classes), h, w]."""
        heads: list[Tensor] = []
        run_layers(self.layers, 0, x, {}, self.reused, heads)
        return heads

    def check_size(self, size: int) -> None:
        """Raise `ModelError` unless `size` x `size` inputs fit every layer: a multiple of the largest stride."""
        step = max(self.strides)
        if size < step or size % step:
            raise ModelError(f"input size {size} does not fit {self.name}: use a positive multiple of {step}")

    def conv_layers(self) -> list[ConvLayer]:
        """The [convolutional] layers in cfg order: the order of the weights file."""
        return [layer for layer in self.layers if isinstance(layer, ConvLayer)]

    def num_weights(self) -> int:
        """How many float32 values a darknet `.weights` file for this network holds after its header."""
        return sum(sum(t.numel() for t in _darknet_tensors(layer)) for layer in self.conv_layers())


def _absolute(index: int, current: int, o: _Options) -> int:
    absolute = index if index >= 0 else current + index
    if not 0 <= absolute < current:
        raise o.error(f"layer reference {index} points outside layers 0..{current - 1}")
    return absolute


def _yolo_spec(o: _Options, index: int) -> YoloSpec:
    values = o.get_floats("anchors")
    num = o.get_int("num", len(values) // 2)
    if len(values) != 2 * num:
        raise o.error(f"num={num} needs {2 * num} anchor values, got {len(values)}")
    mask = o.get_ints("mask") if o.has("mask") else list(range(num))
    if not mask or any(not 0 <= m < num for m in mask):
        raise o.error(f"mask {mask} must index the {num} anchors")
    anchors = tuple((values[2 * m], values[2 * m + 1]) for m in mask)
    return YoloSpec(index, anchors, o.get_int("classes"))


def _darknet_tensors(layer: ConvLayer) -> list[Tensor]:
    """A conv layer's tensors in `.weights` order: BN beta, gamma, mean, variance (or the bias), then kernels."""
    bn = layer.bn
    head = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [layer.conv.bias]
    return [cast(Tensor, t) for t in (*head, layer.conv.weight)]


@dataclass(frozen=True)
class WeightsHeader:
    """The header of a darknet `.weights` file; `seen` is 64-bit from version 0.2 on, 32-bit before."""

    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_is_64bit else 4)


def read_header(data: bytes, source: str = "<weights>") -> WeightsHeader:
    """Parse the header at the start of `data` (at least 20 bytes, or the whole file if shorter)."""
    if len(data) < 16:
        raise WeightsError(f"{source}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    if wide and len(data) < 20:
        raise WeightsError(f"{source}: header of version {major}.{minor} needs 20 bytes, file has {len(data)}")
    seen = int(np.frombuffer(data, "<i8" if wide else "<i4", 1, 12)[0])
    return WeightsHeader(major, minor, revision, seen)


def load_weights(model: Darknet, path: str | os.PathLike[str]) -> WeightsHeader:
    """Fill `model` from a darknet `.weights` file; every float must be used, or `WeightsError` says how many differ."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            header = read_header(f.read(20), str(path))
            f.seek(header.nbytes)
            body = os.fstat(f.fileno()).st_size - header.nbytes
            if body % 4:
                raise WeightsError(
                    f"{path}: {body} bytes after the {header.nbytes}-byte header are not whole float32 values"
                )
            expected = model.num_weights()
            if body // 4 != expected:
                found = body // 4
                raise WeightsError(
                    f"{path}: holds {found:,} floats after its header, but {model.name} needs {expected:,} "
                    f"({abs(found - expected):,} {'too few' if found < expected else 'too many'}); "
                    "are these the weights for this model?"
                )
            floats = torch.from_numpy(np.fromfile(f, dtype="<f4", count=expected))
    except OSError as e:
        raise WeightsError(f"cannot read weights {path}: {e.strerror or e}") from None
    if floats.numel() != expected:
        raise WeightsError(f"{path}: read {floats.numel():,} floats, expected {expected:,}; was the file truncated?")
    if not torch.isfinite(floats).all():
        raise WeightsError(f"{path}: contains NaN or infinite values")
    offset = 0
    with torch.no_grad():
        for layer in model.conv_layers():
            for tensor in _darknet_tensors(layer):
                n = tensor.numel()
                tensor.copy_(floats[offset : offset + n].view_as(tensor))
                offset += n
    log.debug(
        "weights=%s version=%d.%d.%d seen=%d floats=%d",
        path,
        header.major,
        header.minor,
        header.revision,
        header.seen,
        offset,
    )
    return header
