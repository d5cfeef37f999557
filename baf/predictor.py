"""The Back-and-Forth predictor (paper section 3.3, Fig. 2) and its checkpoints.

From the first C ranked BN-output channels Z_C of the split layer, the predictor
1. inverts the frozen BN affine on those channels (back to the conv output),
2. runs the backward network: four 3x3 convs, PReLU after the first three, none after the last; the first
   one upsamples by the split conv's stride (conv to hidden*s*s channels, then PixelShuffle), giving X~ [Q],
3. applies the split layer's own frozen conv + BN to X~ (the forward prediction), giving all P channels Z~,
4. at inference, clips the transmitted channels into their quantizer bins (eq. 6).

One checkpoint serves several C (nested ranking: C channels are the first C of the order) and several n:
the input is always `max_channels` wide, zero beyond C, with constant indicator planes (one-hot of C,
and n/8) so the network knows what it was given.

Warm start (docs/FINDINGS.md, lever 1): optionally, a fixed linear 3x3 path from the transmitted channels to X~
(one weight per served C, fitted in closed form by least squares) runs beside the nonlinear network, whose
last conv then starts at zero; training starts from the least-squares predictor and learns its residual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baf.digest import sha256_file
from baf.errors import CheckpointError
from baf.ops import clamp_to_bins_torch, dequantize_torch

log = logging.getLogger(__name__)

FORMAT = "baf-predictor/1"
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
    linear_skip: bool
    activation_slope: float  # the split layer's leaky slope (1.0 for an identity activation)

    def __post_init__(self) -> None:
        if not self.channels or list(self.channels) != sorted(set(self.channels)) or self.channels[0] < 1:
            raise ValueError(f"channels: expected ascending distinct values >= 1, got {self.channels}")
        if self.channels[-1] > self.out_channels:
            raise ValueError(f"channels: C={self.channels[-1]} exceeds P={self.out_channels}")
        if not self.bits or any(not 1 <= n <= 16 for n in self.bits):
            raise ValueError(f"bits: expected values in 1..16, got {self.bits}")
        if self.hidden < 1 or self.stride < 1:
            raise ValueError(f"hidden and stride must be >= 1, got {self.hidden}, {self.stride}")

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
        return cls(**fields)


class BafPredictor(nn.Module):
    """Restores all P channels of Z from its first C ranked channels (see the module docstring).

    Buffers hold the frozen split layer (conv weight, BN scale/shift in float64), the channel order and the
    least-squares linear path, so a checkpoint is self-contained; only the backward network has parameters.
    """

    def __init__(
        self,
        config: PredictorConfig,
        conv_weight: Tensor,
        bn_scale: Tensor,
        bn_shift: Tensor,
        bn_mean: Tensor,
        bn_std: Tensor,
        order: Sequence[int],
    ) -> None:
        """`bn_scale`/`bn_shift` [P]: Z = scale * conv(X) + shift; `bn_mean`/`bn_std` [P]: BN's running statistics
        of conv(X) (they standardize the network's input); `order`: ranked channels, at least max C of them."""
        super().__init__()
        c = config
        p, q, k = c.out_channels, c.in_channels, c.kernel_size
        if tuple(conv_weight.shape) != (p, q, k, k):
            raise ValueError(f"conv_weight: expected shape {(p, q, k, k)}, got {tuple(conv_weight.shape)}")
        for name, t in (("bn_scale", bn_scale), ("bn_shift", bn_shift), ("bn_mean", bn_mean), ("bn_std", bn_std)):
            if tuple(t.shape) != (p,):
                raise ValueError(f"{name}: expected shape ({p},), got {tuple(t.shape)}")
        if len(order) < c.max_channels or sorted(order) != sorted(set(order)) or not all(0 <= i < p for i in order):
            raise ValueError(f"order: expected at least {c.max_channels} distinct channel indices in 0..{p - 1}")
        if bool((bn_scale == 0).any()) or bool((bn_std <= 0).any()):
            raise ValueError("bn_scale, bn_std: a zero BN scale cannot be inverted, and std must be positive")
        self.config = c
        self.source_sha256: str | None = None  # sha256 of the weights file it was loaded from, if any
        self.register_buffer("conv_weight", conv_weight.detach().float().clone())
        self.register_buffer("bn_scale", bn_scale.detach().double().clone())
        self.register_buffer("bn_shift", bn_shift.detach().double().clone())
        self.register_buffer("bn_mean", bn_mean.detach().float().clone())
        self.register_buffer("bn_std", bn_std.detach().float().clone())
        self.register_buffer("order", torch.tensor(list(order[: c.max_channels]), dtype=torch.long))
        s, h, cmax = c.stride, c.hidden, c.max_channels
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
        if c.linear_skip:
            # Buffers, not parameters: fitted in closed form and kept. Trained per-C slices would only get a
            # gradient when their C is drawn, and Adam's momentum moves them away from the optimum meanwhile.
            self.register_buffer("skip_weight", torch.zeros(len(c.channels), q * s * s, cmax, 3, 3))
            self.register_buffer("skip_bias", torch.zeros(len(c.channels), q * s * s))
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
        linear_skip: bool = True,
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
            hidden=hidden, linear_skip=linear_skip,
            activation_slope=float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 1.0,
        )  # fmt: skip
        scale, shift = split.bn_affine()
        bn = split.bn
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        return cls(config, split.conv.weight, scale, shift, bn.running_mean, std, ranking.order)

    def split_digest(self) -> str:
        """sha256 (16 hex digits) of the frozen layer and order: tells whether this predictor fits a given split."""
        digest = hashlib.sha256()
        for t in (self.conv_weight, self.bn_scale, self.bn_shift, self.bn_mean, self.bn_std, self.order):
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

    def backward_input(self, z: Tensor, bits: int) -> Tensor:
        """X~ [B,Q,H,W], the predicted input of the split layer, from z [B,C,h,w] (float32, no clamp)."""
        c = self.config
        k = self.channel_index(z.shape[1])
        if bits not in c.bits:
            raise ValueError(f"bits: n={bits} is not served; this predictor serves {list(c.bits)}")
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
        x = self.net(torch.cat((v, onehot[None, :, None, None].expand(b, -1, h, w)), 1))
        if c.linear_skip:
            # Only the C given channels: the rest of u is zero (same result, less work for small C).
            cc = z.shape[1]
            lin = F.conv2d(u[:, :cc], self.skip_weight[k, :, :cc].to(u.dtype), self.skip_bias[k].to(u.dtype), padding=1)
            x = x + (F.pixel_shuffle(lin, c.stride) if c.stride > 1 else lin)
        return x

    def forward(self, z: Tensor, bits: int) -> Tensor:
        """Z~ [B,P,h,w] from the dequantized first C ranked channels z [B,C,h,w]; no clamp (training)."""
        return self.forward_layer(self.backward_input(z, bits))

    def restore(self, q: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
        """Inference: quantized channels q [B,C,h,w] with side info lo/hi [B,C] -> all P channels, Z~ [B,P,h,w].

        The transmitted channels are clipped into their quantizer bins (eq. 6).
        """
        z_hat = dequantize_torch(q, lo, hi, bits)
        z = self.forward(z_hat, bits).float()
        idx = self.order[: q.shape[1]]
        out = z.clone()
        out[:, idx] = clamp_to_bins_torch(z[:, idx].contiguous(), q, lo, hi, bits)
        return out


@torch.no_grad()
def fit_linear_skip(predictor: BafPredictor, pairs: Iterable[tuple[Tensor, Tensor]], ridge: float = 1e-4) -> None:
    """Set the linear path to the least-squares 3x3 map from the first C ranked channels to X, for every C.

    `pairs` yields (Z [B,P,h,w], X [B,Q,H,W]) batches of training features. Normal equations are
    accumulated once for the largest C in float64; nested ranking makes each smaller C a sub-problem.
    `ridge` is relative to the mean diagonal of the Gram matrix (keeps near-collinear features stable).
    """
    c = predictor.config
    if not c.linear_skip:
        raise ValueError("predictor has no linear path")
    s, cmax = c.stride, c.max_channels
    dim = cmax * 9 + 1
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    rhs = torch.zeros(dim, c.in_channels * s * s, dtype=torch.float64)
    for z, x in pairs:
        u = predictor.inverse_bn(z[:, predictor.order].double())
        feats = F.unfold(u, 3, padding=1)  # [B, cmax*9, h*w], feature order (channel, ky, kx) as conv weights
        ones = torch.ones(feats.shape[0], 1, feats.shape[2], dtype=torch.float64)
        a = torch.cat((feats, ones), 1).transpose(0, 1).reshape(dim, -1)
        t = x.double()
        t = F.pixel_unshuffle(t, s) if s > 1 else t
        t = t.transpose(0, 1).reshape(t.shape[1], -1)
        gram += a @ a.T
        rhs += a @ t.T
    lam = ridge * float(gram.diagonal()[:-1].mean())
    for k, cc in enumerate(c.channels):
        keep = torch.cat((torch.arange(cc * 9), torch.tensor([dim - 1])))
        g = gram[keep][:, keep] + lam * torch.eye(len(keep), dtype=torch.float64)
        g[-1, -1] -= lam  # no shrinkage on the bias
        sol = torch.linalg.solve(g, rhs[keep])  # [cc*9 + 1, Q*s*s]
        weight = torch.zeros(c.in_channels * s * s, cmax * 9, dtype=torch.float64)
        weight[:, : cc * 9] = sol[:-1].T
        predictor.skip_weight[k] = weight.reshape(-1, cmax, 3, 3).to(predictor.skip_weight.dtype)
        predictor.skip_bias[k] = sol[-1].to(predictor.skip_bias.dtype)
    log.info("linear path fitted by least squares: channels=%s ridge=%g", list(c.channels), ridge)



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
        config = PredictorConfig.from_json({k: data[k] for k in PredictorConfig.__dataclass_fields__})
        tensors = load_file(str(weights), device=str(map_location))
    except (KeyError, TypeError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{weights}: cannot load ({e})") from None
    try:
        predictor = BafPredictor(
            config, *(tensors[k] for k in ("conv_weight", "bn_scale", "bn_shift", "bn_mean", "bn_std")),
            tensors["order"].tolist(),
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
    """The evaluator's Z hook for the quantized path without a codec: keep the first C ranked channels of
    Z [B,P,h,w], quantize each sample to n bits with the native kernel (eq. 4), restore all P channels (eq. 5-6)."""
    from baf import ops

    predictor.check_serves(channels, bits)
    order = predictor.order[:channels].cpu()

    def transform(z: Tensor, boxes: Sequence[object] = ()) -> Tensor:
        # No bitstream here, so the letterbox placements (`boxes`) are not needed.
        parts = [ops.quantize(np.ascontiguousarray(s[order].float().cpu().numpy()), bits) for s in z]
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
