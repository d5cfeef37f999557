"""Channel ranking (paper eq. 2-3): order the BN-output channels Z_p of the split layer by how well they
correlate with the layer's input channels X_q, so that the first C of them are the ones to transmit.

For a conv of stride s, X is s times larger than Z in each dimension; it is split into its s*s polyphase
components x_{q,k} = X_q[a::s, b::s] (k = a*s + b), each the size of Z. Statistics are pooled over every
pixel of every image and accumulated as sums, sums of squares and cross products in float64, so memory
does not depend on the number of images and streaming in chunks gives the one-shot result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from baf.errors import RankingError

log = logging.getLogger(__name__)

FORMAT = "baf-ranking/1"


class CorrelationStats:
    """Running sufficient statistics of (Z_p, x_{q,k}) pairs for eq. 2.

    `update(z, x)` takes a batch Z [B,P,h,w] and X [B,Q,s*h,s*w]; `rho()` gives rho[p, q].
    """

    def __init__(self, channels: int, in_channels: int, stride: int) -> None:
        if channels < 1 or in_channels < 1 or stride < 1:
            raise ValueError(f"channels, in_channels and stride must be >= 1, got {channels}, {in_channels}, {stride}")
        self.channels, self.in_channels, self.stride = channels, in_channels, stride
        phases = in_channels * stride * stride
        self.count = 0
        self.z_sum = torch.zeros(channels, dtype=torch.float64)
        self.z_sq = torch.zeros(channels, dtype=torch.float64)
        self.x_sum = torch.zeros(phases, dtype=torch.float64)
        self.x_sq = torch.zeros(phases, dtype=torch.float64)
        self.cross = torch.zeros(channels, phases, dtype=torch.float64)

    def polyphase(self, x: Tensor) -> Tensor:
        """X [B,Q,s*h,s*w] -> [B, Q*s*s, h, w], component (q, a, b) = X_q[a::s, b::s] at index q*s*s + a*s + b."""
        s = self.stride
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"x: spatial size {tuple(x.shape[-2:])} is not a multiple of the stride {s}")
        return torch.nn.functional.pixel_unshuffle(x, s) if s > 1 else x

    def update(self, z: Tensor, x: Tensor) -> None:
        """Add a batch: z [B,P,h,w] and x [B,Q,s*h,s*w] (any float dtype)."""
        if z.dim() != 4 or x.dim() != 4 or z.shape[0] != x.shape[0]:
            raise ValueError(f"z, x: expected [B,P,h,w] and [B,Q,H,W], got {tuple(z.shape)} and {tuple(x.shape)}")
        if z.shape[1] != self.channels or x.shape[1] != self.in_channels:
            raise ValueError(
                f"z, x: expected {self.channels} and {self.in_channels} channels, got {z.shape[1]} and {x.shape[1]}"
            )
        xs = self.polyphase(x)
        if xs.shape[-2:] != z.shape[-2:]:
            raise ValueError(f"x: polyphase size {tuple(xs.shape[-2:])} differs from z's {tuple(z.shape[-2:])}")
        # [features, samples] with samples = every pixel of every image in the batch.
        zf = z.detach().double().transpose(0, 1).reshape(self.channels, -1)
        xf = xs.detach().double().transpose(0, 1).reshape(xs.shape[1], -1)
        self.count += zf.shape[1]
        self.z_sum += zf.sum(1)
        self.z_sq += (zf * zf).sum(1)
        self.x_sum += xf.sum(1)
        self.x_sq += (xf * xf).sum(1)
        self.cross += zf @ xf.T

    def rho(self) -> Tensor:
        """rho[p, q] of eq. 2 (float64 [P, Q]): mean over the s*s components of |corr(z_p, x_{q,k})|.

        A constant channel correlates with nothing (coefficient 0).
        """
        if self.count < 2:
            raise RankingError("no statistics yet: rank needs at least one image")
        n = float(self.count)
        z_var = (self.z_sq - self.z_sum**2 / n).clamp(min=0)
        x_var = (self.x_sq - self.x_sum**2 / n).clamp(min=0)
        cov = self.cross - torch.outer(self.z_sum, self.x_sum) / n
        denom = torch.sqrt(torch.outer(z_var, x_var))
        corr = torch.where(denom > 0, cov / denom.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(cov))
        s2 = self.stride * self.stride
        return corr.abs().clamp(max=1).reshape(self.channels, self.in_channels, s2).mean(2)


def order_channels(rho: Tensor) -> list[int]:
    """Eq. 3 applied until every channel is placed: channels by decreasing sum_q rho[p, q].

    Repeating the arg max over the remaining channels is a sort; ties keep the lower index first.
    """
    totals = rho.sum(1)
    return sorted(range(rho.shape[0]), key=lambda p: (-float(totals[p]), p))


def ranking_id(model: str, layer: int, order: Sequence[int]) -> str:
    """The id bitstreams refer to: first 16 hex digits of sha256 of the canonical (model, layer, order)."""
    fields = {"layer": layer, "model": model, "order": list(order)}
    canonical = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def names_digest(names: Iterable[str]) -> str:
    """sha256 of the sorted image file names, one per line: identifies a set of images."""
    return hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Ranking:
    """A channel order for one model's split layer: `order[i]` is the BN-output channel sent i-th."""

    model: str
    layer: int
    order: tuple[int, ...]
    in_channels: int
    stride: int
    scores: tuple[float, ...]
    images: dict[str, Any]
    command: str
    id: str

    @property
    def channels(self) -> int:
        """P, the number of channels ranked."""
        return len(self.order)

    def to_json(self) -> dict[str, Any]:
        """The ranking file's content."""
        return {
            "format": FORMAT,
            "ranking_id": self.id,
            "model": self.model,
            "layer": self.layer,
            "channels": self.channels,
            "in_channels": self.in_channels,
            "stride": self.stride,
            "order": list(self.order),
            "scores": list(self.scores),
            "images": self.images,
            "command": self.command,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> Ranking:
        """Parse and check a ranking file's content; `RankingError` names `source` and the failed check."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise RankingError(f"{source}: format {found!r}, expected {FORMAT!r}")
        try:
            order = tuple(int(p) for p in data["order"])
            ranking = cls(
                model=str(data["model"]), layer=int(data["layer"]), order=order,
                in_channels=int(data["in_channels"]), stride=int(data["stride"]),
                scores=tuple(float(s) for s in data["scores"]), images=dict(data["images"]),
                command=str(data["command"]), id=str(data["ranking_id"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise RankingError(f"{source}: missing or malformed field ({e})") from None
        if sorted(order) != list(range(len(order))) or int(data.get("channels", -1)) != len(order):
            raise RankingError(f"{source}: order is not a permutation of 0..{int(data.get('channels', 0)) - 1}")
        expected = ranking_id(ranking.model, ranking.layer, order)
        if expected != ranking.id:
            raise RankingError(f"{source}: ranking_id {ranking.id} does not match its order (expected {expected})")
        return ranking


def make_ranking(
    stats: CorrelationStats, *, model: str, layer: int, images: dict[str, Any], command: str
) -> Ranking:
    """The Ranking of accumulated statistics (eq. 2-3), with its provenance."""
    rho = stats.rho()
    order = order_channels(rho)
    totals = rho.sum(1)
    return Ranking(
        model=model, layer=layer, order=tuple(order), in_channels=stats.in_channels, stride=stats.stride,
        scores=tuple(round(float(totals[p]), 6) for p in order), images=images, command=command,
        id=ranking_id(model, layer, order),
    )  # fmt: skip


def rank_images(
    split: Any, paths: Sequence[Path], *, size: int = 512, command: str = "", progress: bool | None = None
) -> Ranking:
    """Rank the channels of `split` (a `baf.models.split.Split`) over the images at `paths`, one at a time."""
    from tqdm import tqdm

    from baf.images import letterbox, load_image

    if not paths:
        raise RankingError("no images to rank with")
    stats = CorrelationStats(split.channels, split.in_channels, split.stride)
    with torch.inference_mode():
        for path in tqdm(paths, desc="rank", unit="img", disable=None if progress is None else not progress):
            x, _ = letterbox(load_image(path), size)
            z, xin = split.edge.forward_with_input(x[None])
            stats.update(z, xin)
    images = {"count": len(paths), "names_sha256": names_digest(p.name for p in paths), "size": size}
    ranking = make_ranking(stats, model=split.model.name, layer=split.layer, images=images, command=command)
    log.info("ranking_id=%s images=%d top=%s", ranking.id, len(paths), list(ranking.order[:8]))
    return ranking


def write_ranking(ranking: Ranking, path: str | os.PathLike[str]) -> None:
    """Write the ranking file: JSON, one top-level field per line (lists kept on one line), trailing newline."""
    fields = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in ranking.to_json().items()]
    Path(path).write_text("{\n" + ",\n".join(fields) + "\n}\n")


def read_ranking(path: str | os.PathLike[str]) -> Ranking:
    """Read and verify a ranking file; `RankingError` if it is missing, malformed or its id does not match."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RankingError(f"ranking file {path} not found") from None
    except (OSError, ValueError) as e:
        raise RankingError(f"{path}: not a ranking file ({e})") from None
    return Ranking.from_json(data, str(path))


def packaged_ranking_path(model: str, layer: int) -> Path:
    """Where the package keeps the ranking of `model` at split layer `layer`."""
    return Path(str(resources.files("baf") / "rankings" / f"{model}_l{layer}.json"))


def load_ranking(model: str, layer: int) -> Ranking:
    """The packaged ranking for `model` at `layer`, verified (format, permutation, ranking_id)."""
    path = packaged_ranking_path(model, layer)
    if not path.is_file():
        raise RankingError(f"no packaged ranking for {model} layer {layer} (expected {path}); make one with `baf rank`")
    ranking = read_ranking(path)
    if (ranking.model, ranking.layer) != (model, layer):
        raise RankingError(f"{path}: ranks {ranking.model} layer {ranking.layer}, expected {model} layer {layer}")
    return ranking


def find_ranking(model: str, layer: int, path: str | os.PathLike[str] | None = None) -> Ranking:
    """The ranking file at `path` if given (it must rank `model` at `layer`), else the packaged one."""
    if path is None:
        return load_ranking(model, layer)
    ranking = read_ranking(path)
    if (ranking.model, ranking.layer) != (model, layer):
        raise RankingError(f"{path}: ranks {ranking.model} layer {ranking.layer}, expected {model} layer {layer}")
    return ranking
