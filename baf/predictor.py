"""Predictors that restore all P channels of Z from its first C sent channels, and their checkpoints.

Three kinds, named in the sidecar and served by the same `restore`:
- `baf`, the paper's Back-and-Forth predictor (section 3.3, Fig. 2): inverse BN on the C channels, the backward
  network (four 3x3 convs, PReLU after the first three, none after the last; the first upsamples by the split
  conv's stride: conv to hidden*s*s channels, then PixelShuffle) giving X~ [Q], then the split layer's own
  frozen conv + BN (the forward prediction) giving all P channels Z~.
- `linear`: a k x k convolution from the C dequantized channels straight to all P, fitted in closed form by
  least squares from streamed normal equations (`fit_linear`; docs/FINDINGS.md: it beats short BaF training).
- `hybrid`: the linear path plus the BaF branch as a residual (its X~ through the frozen conv and BN scale, no
  shift); the branch's last conv starts at zero, so training starts from the least-squares predictor.
At inference the transmitted channels are clipped into their quantizer bins (eq. 6), whatever the kind.

The sent channels are the first C rows of the ranking's sequence (`baf.basis`): ranked channels, or for a
residual-pca ranking also virtual channels (fixed directions over all P). Only the `linear` kind takes virtual
rows (inverse BN is defined for channels only), and eq. 6 clamps the ranked rows alone.

One checkpoint serves several C (nested ranking: C channels are the first C of the order) and several n:
the network's input is always `max_channels` wide, zero beyond C, with constant indicator planes (one-hot of
C, and n/8) so it knows what it was given; the linear path has one weight per served C, fitted on unquantized
Z, plus one per (C, n) for each n in `linear_bits`, fitted on Z quantized to n bits (eq. 4-5) as the cloud
receives it: at low n that fit also undoes part of the quantization of the transmitted channels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baf.basis import VIRTUAL, SentBasis
from baf.digest import sha256_file
from baf.errors import CheckpointError
from baf.gram import Gram
from baf.ops import clamp_to_bins_torch, dequantize_torch, quantize_torch

log = logging.getLogger(__name__)

FORMAT = "baf-predictor/2"  # /2: `kind` and `linear_kernel` replaced /1's `linear_skip`
KINDS: tuple[str, ...] = ("baf", "linear", "hybrid")
DEFAULT_CHANNELS: tuple[int, ...] = (8, 16, 32, 64, 128)
DEFAULT_BITS: tuple[int, ...] = tuple(range(2, 9))


@dataclass(frozen=True, kw_only=True)
class PredictorConfig:
    """What a predictor is: the split it restores, the C and n it serves, and its network shape."""

    model: str
    layer: int
    ranking_id: str
    channels: tuple[int, ...]  # C values served, ascending; the largest is the input width
    bits: tuple[int, ...]  # n values served
    out_channels: int  # P
    in_channels: int  # Q
    stride: int
    kernel_size: int
    padding: int
    hidden: int
    kind: str  # one of KINDS
    linear_kernel: int  # k of the linear path (linear and hybrid kinds)
    activation_slope: float  # the split layer's leaky slope (1.0 for an identity activation)
    linear_bits: tuple[int, ...] = ()  # n values whose linear path is fitted on n-bit inputs (others: unquantized)

    def __post_init__(self) -> None:
        if not self.channels or list(self.channels) != sorted(set(self.channels)) or self.channels[0] < 1:
            raise ValueError(f"channels: expected ascending distinct values >= 1, got {self.channels}")
        if self.channels[-1] > self.out_channels:
            raise ValueError(f"channels: C={self.channels[-1]} exceeds P={self.out_channels}")
        if not self.bits or any(not 1 <= n <= 16 for n in self.bits):
            raise ValueError(f"bits: expected values in 1..16, got {self.bits}")
        if self.hidden < 1 or self.stride < 1:
            raise ValueError(f"hidden and stride must be >= 1, got {self.hidden}, {self.stride}")
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.linear_kernel < 1 or self.linear_kernel % 2 == 0:
            raise ValueError(f"linear_kernel: expected an odd size >= 1, got {self.linear_kernel}")
        if list(self.linear_bits) != sorted(set(self.linear_bits)) or not set(self.linear_bits) <= set(self.bits):
            raise ValueError(f"linear_bits: expected ascending served n values, got {self.linear_bits}")
        if self.linear_bits and not self.has_linear:
            raise ValueError(f"linear_bits: a {self.kind} predictor has no linear path")

    @property
    def has_network(self) -> bool:
        """True for the kinds with a trainable backward network (baf, hybrid)."""
        return self.kind != "linear"

    @property
    def has_linear(self) -> bool:
        """True for the kinds with a least-squares linear path (linear, hybrid)."""
        return self.kind != "baf"

    @property
    def max_channels(self) -> int:
        """The input width: the largest C served."""
        return self.channels[-1]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictorConfig:
        """Inverse of `to_json`."""
        fields = dict(data)
        fields["channels"] = tuple(int(c) for c in fields["channels"])
        fields["bits"] = tuple(int(n) for n in fields["bits"])
        fields["linear_bits"] = tuple(int(n) for n in fields.get("linear_bits", ()))
        return cls(**fields)


class BafPredictor(nn.Module):
    """Restores all P channels of Z from its first C sent channels (see the module docstring).

    Buffers hold the frozen split layer (conv weight, BN scale/shift in float64), the sent rows (`order`: a
    channel, or VIRTUAL with the row's direction in `directions`) and the least-squares linear path, so a
    checkpoint is self-contained; only the backward network has parameters.
    """

    name = "baf-predictor"  # how logs, reports and GetCapabilities name this restoration

    def __init__(
        self,
        config: PredictorConfig,
        conv_weight: Tensor,
        bn_scale: Tensor,
        bn_shift: Tensor,
        bn_mean: Tensor,
        bn_std: Tensor,
        order: Sequence[int],
        directions: Tensor | None = None,
    ) -> None:
        """`bn_scale`/`bn_shift` [P]: Z = scale * conv(X) + shift; `bn_mean`/`bn_std` [P]: BN's running statistics
        of conv(X) (they standardize the network's input); `order`: the sent rows, at least max C of them, each a
        channel or VIRTUAL; `directions` [k,P]: those of the virtual rows among the first max C, in turn."""
        super().__init__()
        c = config
        p, q, k = c.out_channels, c.in_channels, c.kernel_size
        if tuple(conv_weight.shape) != (p, q, k, k):
            raise ValueError(f"conv_weight: expected shape {(p, q, k, k)}, got {tuple(conv_weight.shape)}")
        for name, t in (("bn_scale", bn_scale), ("bn_shift", bn_shift), ("bn_mean", bn_mean), ("bn_std", bn_std)):
            if tuple(t.shape) != (p,):
                raise ValueError(f"{name}: expected shape ({p},), got {tuple(t.shape)}")
        if len(order) < c.max_channels:
            raise ValueError(f"order: expected at least {c.max_channels} rows, got {len(order)}")
        order = list(order[: c.max_channels])
        virtual = sum(i == VIRTUAL for i in order)
        basis = SentBasis(order, None if directions is None else directions[:virtual], p)  # checks rows and directions
        if basis.virtual and c.has_network:
            raise ValueError(f"a {c.kind} predictor inverts BN on channels and cannot take virtual channels; "
                             "use linear")
        if bool((bn_scale == 0).any()) or bool((bn_std <= 0).any()):
            raise ValueError("bn_scale, bn_std: a zero BN scale cannot be inverted, and std must be positive")
        self.config = c
        self.source_sha256: str | None = None  # sha256 of the weights file it was loaded from, if any
        self.register_buffer("conv_weight", conv_weight.detach().float().clone())
        self.register_buffer("bn_scale", bn_scale.detach().double().clone())
        self.register_buffer("bn_shift", bn_shift.detach().double().clone())
        self.register_buffer("bn_mean", bn_mean.detach().float().clone())
        self.register_buffer("bn_std", bn_std.detach().float().clone())
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))
        if basis.virtual:  # registered only then, so channel-only checkpoints keep their tensors
            self.register_buffer("directions", basis.directions.clone())
        s, h, cmax = c.stride, c.hidden, c.max_channels
        self.net: nn.Sequential | None = None
        if c.has_network:
            indicators = len(c.channels) + 1
            self.net = nn.Sequential(
                nn.Conv2d(cmax + indicators, h * s * s, 3, padding=1),
                nn.PixelShuffle(s) if s > 1 else nn.Identity(),
                nn.PReLU(h),
                nn.Conv2d(h, h, 3, padding=1),
                nn.PReLU(h),
                nn.Conv2d(h, h, 3, padding=1),
                nn.PReLU(h),
                nn.Conv2d(h, q, 3, padding=1),
            )
        if c.has_linear:
            # Buffers, not parameters: fitted in closed form and kept. Trained per-C slices would only get a
            # gradient when their C is drawn, and Adam's momentum moves them away from the optimum meanwhile.
            for cc in c.channels:
                for n in (None, *c.linear_bits):
                    weight_name, bias_name = self.linear_names(cc, n)
                    self.register_buffer(weight_name, torch.zeros(p, cc, c.linear_kernel, c.linear_kernel))
                    self.register_buffer(bias_name, torch.zeros(p))
        if self.net is not None and c.has_linear:
            # The network starts as a zero correction to the (least-squares) linear path.
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    @classmethod
    def from_split(
        cls,
        split: Any,
        ranking: Any,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        bits: Sequence[int] = DEFAULT_BITS,
        hidden: int = 64,
        kind: str = "hybrid",
        linear_kernel: int = 5,
        linear_bits: Sequence[int] = (),
    ) -> BafPredictor:
        """A fresh predictor for `split` (a `baf.models.split.Split`) and `ranking` (a `baf.ranking.Ranking`)."""
        if (ranking.model, ranking.layer) != (split.model.name, split.layer):
            raise ValueError(
                f"ranking is for {ranking.model} layer {ranking.layer}, split is {split.model.name} layer {split.layer}"
            )
        act = split.cloud.act
        config = PredictorConfig(
            model=split.model.name, layer=split.layer, ranking_id=ranking.id,
            channels=tuple(sorted(set(channels))), bits=tuple(sorted(set(bits))),
            out_channels=split.channels, in_channels=split.in_channels, stride=split.stride,
            kernel_size=int(split.conv.kernel_size[0]), padding=int(split.conv.padding[0]),
            hidden=hidden, kind=kind, linear_kernel=linear_kernel, linear_bits=tuple(sorted(set(linear_bits))),
            activation_slope=float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 1.0,
        )  # fmt: skip
        scale, shift = split.bn_affine()
        bn = split.bn
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        basis = ranking.basis()
        return cls(config, split.conv.weight, scale, shift, bn.running_mean, std, basis.channels, basis.directions)

    @property
    def basis(self) -> SentBasis:
        """The sent rows this predictor restores from (max C of them)."""
        directions = getattr(self, "directions", None)
        return SentBasis(self.order.tolist(), None if directions is None else directions.cpu(),
                         self.config.out_channels)  # fmt: skip

    def split_digest(self) -> str:
        """sha256 (16 hex digits) of the frozen layer and sent rows: tells whether this predictor fits a split."""
        digest = hashlib.sha256()
        tensors = [self.conv_weight, self.bn_scale, self.bn_shift, self.bn_mean, self.bn_std, self.order]
        for t in tensors + ([self.directions] if hasattr(self, "directions") else []):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def channel_index(self, channels: int) -> int:
        """Position of C in the served channel counts; ValueError if C is not served."""
        if channels not in self.config.channels:
            served = list(self.config.channels)
            raise ValueError(f"channels: C={channels} is not served; this predictor serves {served}")
        return self.config.channels.index(channels)

    def check_serves(self, channels: int, bits: int) -> None:
        """Raise ValueError unless this predictor restores C=`channels` at n=`bits`."""
        self.channel_index(channels)
        if bits not in self.config.bits:
            raise ValueError(f"bits: n={bits} is not served; this predictor serves {list(self.config.bits)}")

    def inverse_bn(self, z: Tensor) -> Tensor:
        """Undo the frozen BN on the first C ranked channels z [..., C, h, w] (computed in z's dtype)."""
        idx = self.order[: z.shape[-3]]
        scale = self.bn_scale[idx].to(z.dtype)[:, None, None]
        shift = self.bn_shift[idx].to(z.dtype)[:, None, None]
        return (z - shift) / scale

    def forward_layer(self, x: Tensor) -> Tensor:
        """The split layer's frozen conv + BN: X~ [B,Q,H,W] -> Z~ [B,P,H/s,W/s]."""
        c = self.config
        y = F.conv2d(x, self.conv_weight.to(x.dtype), stride=c.stride, padding=c.padding)
        return y * self.bn_scale.to(y.dtype)[:, None, None] + self.bn_shift.to(y.dtype)[:, None, None]

    def check_input(self, z: Tensor, bits: int) -> int:
        """Position of z's C in the served channel counts; ValueError unless (C, n) is served."""
        self.check_serves(z.shape[1], bits)
        return self.config.channels.index(z.shape[1])

    def backward_input(self, z: Tensor, bits: int) -> Tensor:
        """X~ [B,Q,H,W], the backward network's output from z [B,C,h,w] (float32, no clamp): the predicted input
        of the split layer for `baf`, its correction to the linear path for `hybrid`."""
        c = self.config
        if self.net is None:
            raise ValueError("a linear predictor has no backward network")
        k = self.check_input(z, bits)
        u = self.inverse_bn(z)
        if u.shape[1] < c.max_channels:
            u = F.pad(u, (0, 0, 0, 0, 0, c.max_channels - u.shape[1]))
        # BN's own running statistics standardize the network's input (u = conv output).
        mean = self.bn_mean[self.order].to(u.dtype)
        std = self.bn_std[self.order].to(u.dtype)
        present = (torch.arange(c.max_channels, device=u.device) < z.shape[1]).to(u.dtype)
        v = (u - mean[:, None, None] * present[:, None, None]) / std[:, None, None]
        b, _, h, w = u.shape
        onehot = torch.zeros(len(c.channels) + 1, dtype=u.dtype, device=u.device)
        onehot[k] = 1
        onehot[-1] = bits / 8
        return self.net(torch.cat((v, onehot[None, :, None, None].expand(b, -1, h, w)), 1))

    def linear_names(self, channels: int, bits: int | None) -> tuple[str, str]:
        """Buffer names of the linear path's (weight, bias) for C=`channels` at n=`bits` (None: unquantized fit)."""
        suffix = f"_n{bits}" if bits in self.config.linear_bits else ""
        return f"linear_weight_c{channels}{suffix}", f"linear_bias_c{channels}{suffix}"

    def linear(self, z: Tensor, bits: int | None = None) -> Tensor:
        """The least-squares path: all P channels [B,P,h,w] from the C dequantized channels z [B,C,h,w], with the
        fit for n=`bits` if it has one of its own."""
        cc = z.shape[1]
        self.channel_index(cc)
        weight, bias = (getattr(self, name) for name in self.linear_names(cc, bits))
        return F.conv2d(z, weight.to(z.dtype), bias.to(z.dtype), padding=self.config.linear_kernel // 2)

    def forward(self, z: Tensor, bits: int) -> Tensor:
        """Z~ [B,P,h,w] from the dequantized first C ranked channels z [B,C,h,w]; no clamp (training)."""
        c = self.config
        self.check_input(z, bits)
        if c.kind == "baf":
            return self.forward_layer(self.backward_input(z, bits))
        out = self.linear(z, bits)
        if c.kind == "hybrid":
            x = self.backward_input(z, bits)
            y = F.conv2d(x, self.conv_weight.to(x.dtype), stride=c.stride, padding=c.padding)
            out = out + y * self.bn_scale.to(y.dtype)[:, None, None]
        return out

    def restore(self, q: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
        """Inference: quantized channels q [B,C,h,w] with side info lo/hi [B,C] -> all P channels, Z~ [B,P,h,w].

        The transmitted channels are clipped into their quantizer bins (eq. 6).
        """
        z_hat = dequantize_torch(q, lo, hi, bits)
        z = self.forward(z_hat, bits).float()
        rows = self.order[: q.shape[1]]
        if hasattr(self, "directions"):  # virtual rows have no channel of their own: clamp the ranked rows only
            ranked = (rows != VIRTUAL).nonzero().flatten()
            rows, q, lo, hi = rows[ranked], q[:, ranked], lo[:, ranked], hi[:, ranked]
        out = z.clone()
        out[:, rows] = clamp_to_bins_torch(z[:, rows].contiguous(), q, lo, hi, bits)
        return out


def make_inputs(z: Tensor, basis: SentBasis, channels: int, bits: int) -> Tensor:
    """The first `channels` sent channels of z [B,P,h,w], quantized and dequantized per sample and channel
    (eq. 4-5) as the cloud receives them."""
    q, lo, hi = quantize_torch(basis.send(z, channels).contiguous(), bits)
    return dequantize_torch(q, lo, hi, bits)


class NormalEquations:
    """Streamed least-squares statistics of the k x k map from `width` sent channels to all P, for every leading
    block of them at once.

    Features are the k x k neighbourhoods of the first `width` sent channels (channel-major, as conv weights
    order them) plus a constant; nested sequences make each smaller C the leading block of the same system.
    With `bits`, the features are those channels quantized to n bits and dequantized (eq. 4-5, per sample and
    channel, so still nested); the targets are always the unquantized Z.
    """

    def __init__(self, width: int, kernel: int, out_channels: int, bits: int | None = None) -> None:
        """Empty sums for `width` inputs, a `kernel` x `kernel` map to `out_channels`, inputs at n=`bits` (None:
        unquantized)."""
        if width < 1 or out_channels < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"width, out_channels >= 1 and an odd kernel expected, got {width}, {out_channels}, "
                             f"{kernel}")
        if bits is not None and not 1 <= bits <= 16:
            raise ValueError(f"bits: expected 1..16 or None, got {bits}")
        self.width, self.kernel, self.bits = width, kernel, bits
        self.dim = width * kernel**2 + 1
        self.gram = Gram(self.dim)
        self.rhs = torch.zeros(self.dim, out_channels, dtype=torch.float64)
        self.samples = 0

    @classmethod
    def for_predictor(cls, config: PredictorConfig, bits: int | None = None) -> NormalEquations:
        """Empty sums for the linear path of `config` (every served C), inputs at n=`bits`."""
        if not config.has_linear:
            raise ValueError(f"a {config.kind} predictor has no linear path")
        return cls(config.max_channels, config.linear_kernel, config.out_channels, bits)

    def add(self, z: Tensor, basis: SentBasis, inputs: Tensor | None = None) -> None:
        """Add a batch of training features z [B,P,h,w]: inputs are its first `width` sent channels (`basis`),
        targets all P.

        `inputs` [B,width,h,w] replaces those channels as the cloud would receive them otherwise (after a lossy
        codec, say). Products are formed in float32 per batch (a few thousand positions) and summed in float64.
        """
        k = self.kernel
        z = z.float()
        if inputs is not None:
            if inputs.shape != (z.shape[0], self.width, *z.shape[2:]):
                raise ValueError(f"inputs: expected {[z.shape[0], self.width, *z.shape[2:]]}, got {list(inputs.shape)}")
            inputs = inputs.float()
        elif self.bits is None:
            inputs = basis.send(z, self.width)
        else:
            inputs = make_inputs(z, basis, self.width, self.bits)
        feats = F.unfold(inputs, k, padding=k // 2)  # [B, cmax*k*k, h*w]
        ones = torch.ones(feats.shape[0], 1, feats.shape[2])
        a = torch.cat((feats, ones), 1).transpose(0, 1).reshape(self.dim, -1)
        t = z.transpose(0, 1).reshape(z.shape[1], -1)
        self.gram.add(a)
        self.rhs += (a @ t.T).double()
        self.samples += a.shape[1]

    def solve(self, channels: int, ridge: float) -> tuple[Tensor, Tensor]:
        """(weight [P,C,k,k], bias [P]) of the least-squares map for C=`channels`.

        `ridge` is relative to the mean diagonal of the Gram matrix (keeps near-collinear features stable);
        the bias is not shrunk.
        """
        if self.samples == 0:
            raise ValueError("no features added")
        if not 1 <= channels <= self.width:
            raise ValueError(f"channels: C={channels} is outside 1..{self.width}")
        k2 = self.kernel**2
        keep = torch.cat((torch.arange(channels * k2), torch.tensor([self.dim - 1])))
        g = self.gram.matrix(keep)
        lam = ridge * float(g.diagonal()[:-1].mean())
        g = g + lam * torch.eye(len(keep), dtype=torch.float64)
        g[-1, -1] -= lam
        sol = torch.linalg.solve(g, self.rhs[keep])  # [C*k*k + 1, P]
        k = self.kernel
        return sol[:-1].T.reshape(-1, channels, k, k).float(), sol[-1].float()


@torch.no_grad()
def fit_linear(predictor: BafPredictor, batches: Iterable[Tensor], ridge: float = 1e-4) -> int:
    """Set the linear path to the least-squares k x k map from the first C sent channels to all P, for every C:
    one fit on unquantized inputs and one per n in `linear_bits` on n-bit inputs, all from one pass.

    `batches` yields training features Z [B,P,h,w]. Returns the number of positions (samples) used.
    """
    c = predictor.config
    systems = {n: NormalEquations.for_predictor(c, n) for n in (None, *c.linear_bits)}
    basis = predictor.basis
    for z in batches:
        z = z.cpu()
        for eqs in systems.values():
            eqs.add(z, basis)
    for n, eqs in systems.items():
        for cc in c.channels:
            weight, bias = eqs.solve(cc, ridge)
            weight_name, bias_name = predictor.linear_names(cc, n)
            getattr(predictor, weight_name).copy_(weight)
            getattr(predictor, bias_name).copy_(bias)
    samples = systems[None].samples
    log.info("linear path fitted by least squares: channels=%s kernel=%d n-bit fits=%s ridge=%g samples=%d",
             list(c.channels), c.linear_kernel, list(c.linear_bits), ridge, samples)  # fmt: skip
    return samples


def copy_linear(predictor: BafPredictor, source: BafPredictor) -> None:
    """Take the linear path of `source` (a fitted linear or hybrid predictor of the same split and served C)."""
    a, b = predictor.config, source.config
    if not (a.has_linear and b.has_linear):
        raise ValueError("both predictors need a linear path")
    if ((a.ranking_id, a.linear_kernel) != (b.ranking_id, b.linear_kernel) or not set(a.channels) <= set(b.channels)
            or not set(a.linear_bits) <= set(b.linear_bits)):
        raise ValueError(
            f"linear path of ranking {b.ranking_id}, k={b.linear_kernel}, C {list(b.channels)}, n-bit fits "
            f"{list(b.linear_bits)} does not fit ranking {a.ranking_id}, k={a.linear_kernel}, C {list(a.channels)}, "
            f"n-bit fits {list(a.linear_bits)}"
        )
    # Not split_digest: it covers the order up to each predictor's own largest C, so a dedicated C=64 model would
    # never match a C=8..128 source. Same ranking (checked above) means the same order on the shared prefix.
    frozen = ("conv_weight", "bn_scale", "bn_shift", "bn_mean", "bn_std")
    if not all(torch.equal(getattr(predictor, k), getattr(source, k)) for k in frozen):
        raise ValueError("the two predictors restore different split layers")
    with torch.no_grad():
        for cc in a.channels:
            for n in (None, *a.linear_bits):
                for name in predictor.linear_names(cc, n):
                    getattr(predictor, name).copy_(getattr(source, name))


def save_predictor(predictor: BafPredictor, stem: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write `<stem>.safetensors` (atomically) and its sidecar `<stem>.json`; returns the weights path.

    `extra` adds provenance (training data, command, steps, loss curve, eval) to the sidecar.
    """
    from safetensors.torch import save_file

    stem = Path(stem)
    weights, tmp = stem.with_suffix(".safetensors"), stem.with_suffix(".safetensors.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, weights)
    sidecar = {
        "format": FORMAT,
        **predictor.config.to_json(),
        "split_digest": predictor.split_digest(),
        "weights": weights.name,
        "sha256": sha256_file(weights),
        **(extra or {}),
    }
    side_tmp = stem.with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(side_tmp, stem.with_suffix(".json"))
    return weights


def read_sidecar(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """(sidecar, weights path) for a checkpoint given as its .json or .safetensors path; format checked."""
    path = Path(path)
    side = path.with_suffix(".json")
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint sidecar {side} not found") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{side}: not a checkpoint sidecar ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{side}: format {found!r}, expected {FORMAT!r}")
    return data, side.with_name(str(data.get("weights", side.with_suffix(".safetensors").name)))


KIND_PREFERENCE = {"hybrid": 2, "linear": 1, "baf": 0}  # among packaged checkpoints serving as many (C, n)


def packaged_checkpoint(model: str, layer: int, ranking_id: str) -> Path:
    """The packaged predictor checkpoint (sidecar path) for this split and ranking serving the most (C, n);
    among equals a hybrid (trained on top of its least-squares start) before a linear before a plain baf."""
    candidates: list[tuple[int, int, str, Path]] = []
    folder = Path(str(resources.files("baf") / "checkpoints"))
    for side in sorted(folder.glob("*.json")):
        try:
            data, _ = read_sidecar(side)
        except CheckpointError as e:
            log.warning("skipping packaged checkpoint path=%s reason=%s", side.name, e)
            continue
        if (data.get("model"), data.get("layer"), data.get("ranking_id")) == (model, layer, ranking_id):
            served = len(data.get("channels", [])) * len(data.get("bits", []))
            candidates.append((served, KIND_PREFERENCE.get(str(data.get("kind")), -1), side.name, side))
    if not candidates:
        raise CheckpointError(f"no packaged predictor checkpoint for {model} layer {layer} ranking {ranking_id} "
                              f"in {folder}")
    return max(candidates, key=lambda c: c[:3])[3]


def trained_steps(sidecar: dict[str, Any]) -> int | None:
    """Training steps behind a checkpoint's weights: its run's plus those of the checkpoint it started from
    (`baf train --init-from`); None for a checkpoint that was never trained."""
    train = sidecar.get("train") or {}
    if "steps" not in train:
        return None
    return int(train["steps"]) + int((train.get("init_from") or {}).get("steps", 0))


def load_predictor(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    layer: int | None = None,
    ranking_id: str | None = None,
    map_location: str | torch.device = "cpu",
) -> BafPredictor:
    """Load a checkpoint (.json or .safetensors path), in eval mode.

    Checks the sidecar's format, the weights' sha256, and (when given) the model, layer and ranking it
    was made for; any mismatch raises `CheckpointError` naming expected vs found. Loads with strict=True.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    data, weights = read_sidecar(path)
    for name, want in (("model", model), ("layer", layer), ("ranking_id", ranking_id)):
        if want is not None and data.get(name) != want:
            raise CheckpointError(f"{weights.name}: {name} {data.get(name)!r}, expected {want!r}")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} not found")
    digest = sha256_file(weights)
    if digest != data.get("sha256"):
        expected = str(data.get("sha256"))[:16]
        raise CheckpointError(f"{weights}: sha256 {digest[:16]}..., expected {expected}... (sidecar)")
    try:
        config = PredictorConfig.from_json({k: data[k] for k in PredictorConfig.__dataclass_fields__ if k in data})
        tensors = load_file(str(weights), device=str(map_location))
    except (KeyError, TypeError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{weights}: cannot load ({e})") from None
    try:
        predictor = BafPredictor(
            config, *(tensors[k] for k in ("conv_weight", "bn_scale", "bn_shift", "bn_mean", "bn_std")),
            tensors["order"].tolist(), tensors.get("directions"),
        )
        predictor.load_state_dict(tensors, strict=True)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{weights}: tensors do not fit the sidecar's config ({e})") from None
    if data.get("split_digest") not in (None, predictor.split_digest()):
        found = predictor.split_digest()
        raise CheckpointError(f"{weights}: split_digest {found}, expected {data['split_digest']} (sidecar)")
    predictor.source_sha256 = digest
    return predictor.to(map_location).eval()


def z_transform(predictor: BafPredictor, channels: int, bits: int) -> Callable[..., Tensor]:
    """The evaluator's Z hook for the quantized path without a codec: send the first C rows of Z [B,P,h,w],
    quantize each sample to n bits with the native kernel (eq. 4), restore all P channels (eq. 5-6)."""
    from baf import ops

    predictor.check_serves(channels, bits)
    basis = predictor.basis.prefix(channels)

    def transform(z: Tensor, boxes: Sequence[object] = ()) -> Tensor:
        # No bitstream here, so the letterbox placements (`boxes`) are not needed.
        sent = basis.send(z.float().cpu())
        parts = [ops.quantize(np.ascontiguousarray(s.numpy()), bits) for s in sent]
        q = torch.from_numpy(np.stack([p[0] for p in parts]).astype(np.int32)).to(z.device)
        lo = torch.from_numpy(np.stack([p[1] for p in parts])).to(z.device)
        hi = torch.from_numpy(np.stack([p[2] for p in parts])).to(z.device)
        return predictor.restore(q, lo, hi, bits).to(z.dtype)

    return transform


def record_eval(path: str | os.PathLike[str], weights_sha256: str, entry: dict[str, Any]) -> None:
    """Add a measured score (`entry`: dataset, C, n, AP, AP50, ...) to a checkpoint's sidecar `eval` list.

    `weights_sha256` is the sha of the weights that were scored: if the checkpoint changed since (a training
    run publishing over it), `CheckpointError` is raised instead of attaching the score to other weights.
    An earlier entry for the same dataset, C and n is replaced.
    """
    data, _ = read_sidecar(path)
    side = Path(path).with_suffix(".json")
    if data.get("sha256") != weights_sha256:
        raise CheckpointError(f"{side}: weights changed since they were scored; not recorded")
    key = (entry.get("dataset"), entry.get("channels"), entry.get("bits"))
    kept = [e for e in data.get("eval", []) if (e.get("dataset"), e.get("channels"), e.get("bits")) != key]
    data["eval"] = kept + [entry]
    tmp = side.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, side)
