"""Channel ranking: the order of the split layer's BN-output channels Z_p whose first C are transmitted.

Two methods order channels. `correlation` is the paper's (eq. 2-3): channels by how well they correlate with
the layer's input channels X_q. `restoration` (ours) picks channels greedily so that the channels picked so
far best restore all P of them by least squares from their k x k neighbourhoods, which is what the cloud then
has to do; each pick keeps the earlier ones, so the order stays nested. A third, `residual-pca`
(`baf.residual_ranking`), keeps a base order and adds a sent sequence that mixes its channels with virtual
channels (fixed directions over all P, `baf.basis`); the ranking id then covers the sequence and directions.

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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from baf.basis import SentBasis
from baf.errors import RankingError
from baf.gram import Gram
from baf.packaged import packaged_ranking_path, rankings_folder

log = logging.getLogger(__name__)

FORMAT = "baf-ranking/1"
METHODS = ("correlation", "restoration", "residual-pca")


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


class PatchStats:
    """Running mean and covariance of the k x k neighbourhoods of all P channels of Z, for `restoration_order`.

    Features are channel-major (channel p's taps at p*k*k .. p*k*k + k*k - 1, centre tap in the middle), zero
    padded at the borders as the restoring conv sees them; sums are float64.
    """

    def __init__(self, channels: int, kernel: int = 3) -> None:
        if channels < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"channels must be >= 1 and kernel odd, got {channels}, {kernel}")
        self.channels, self.kernel = channels, kernel
        dim = channels * kernel * kernel
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.gram = Gram(dim)

    def update(self, z: Tensor) -> None:
        """Add a batch Z [B,P,h,w] (any float dtype); products in float32 per batch, summed in float64."""
        if z.dim() != 4 or z.shape[1] != self.channels:
            raise ValueError(f"z: expected [B,{self.channels},h,w], got {tuple(z.shape)}")
        k = self.kernel
        a = torch.nn.functional.unfold(z.detach().float(), k, padding=k // 2)  # [B, P*k*k, h*w]
        a = a.transpose(0, 1).reshape(self.sum.shape[0], -1)
        self.count += a.shape[1]
        self.sum += a.sum(1).double()
        self.gram.add(a)

    def covariance(self) -> Tensor:
        """Covariance of the neighbourhood features (float64 [P*k*k, P*k*k])."""
        if self.count < 2:
            raise RankingError("no statistics yet: rank needs at least one image")
        mean = self.sum / self.count
        return self.gram.matrix() / self.count - torch.outer(mean, mean)


def restoration_order(stats: PatchStats, ridge: float = 1e-6) -> tuple[list[int], list[float]]:
    """Greedy nested order: each step adds the channel whose k x k neighbourhood most reduces the least-squares
    error of restoring every channel's centre value from the neighbourhoods of the channels picked so far.

    Returns the order and, after each pick, the fraction of the total variance of Z left unexplained. The
    residual covariance is deflated by one Schur complement per pick, so all P picks cost O(P * (P k^2)^2).
    `ridge` (relative to each block's mean diagonal) keeps constant or duplicated channels solvable.
    """
    k2 = stats.kernel**2
    p_all = stats.channels
    resid = stats.covariance().clone()
    centre = torch.arange(p_all) * k2 + k2 // 2
    total = float(resid[centre, centre].sum())
    if total <= 0:
        raise RankingError("Z is constant over the ranking images: nothing to rank by")
    eye = torch.eye(k2, dtype=torch.float64)
    taps = torch.arange(k2)
    order: list[int] = []
    left: list[float] = []
    remaining = list(range(p_all))
    while remaining:
        blocks = torch.tensor(remaining)[:, None] * k2 + taps  # [m, k2]
        own = resid[blocks[:, :, None], blocks[:, None, :]]  # [m, k2, k2]
        lam = ridge * own.diagonal(dim1=1, dim2=2).mean(1).clamp(min=torch.finfo(torch.float64).tiny)
        chol = torch.linalg.cholesky(own + lam[:, None, None] * eye)
        cross = resid[centre][:, blocks].permute(1, 2, 0)  # [m, k2, P]
        gain = torch.linalg.solve_triangular(chol, cross, upper=False).square().sum((1, 2))
        best = int(torch.argmax(gain))
        w = torch.linalg.solve_triangular(chol[best], resid[blocks[best]], upper=False)  # [k2, P*k2]
        resid -= w.T @ w
        order.append(remaining.pop(best))
        left.append(max(float(resid[centre, centre].sum()), 0.0) / total)
    return order, left


def ranking_id(model: str, layer: int, order: Sequence[int], sequence: Sequence[int] | None = None,
               directions: Sequence[Sequence[float]] = ()) -> str:
    """The id bitstreams refer to: first 16 hex digits of sha256 of the canonical (model, layer, order) and, for
    a sequence with virtual rows, the sequence and its directions (so the ids of channel-only rankings stay)."""
    fields: dict[str, Any] = {"layer": layer, "model": model, "order": list(order)}
    if sequence is not None:
        fields.update(sequence=list(sequence), directions=[[float(v) for v in d] for d in directions])
    canonical = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def names_digest(names: Iterable[str]) -> str:
    """sha256 of the sorted image file names, one per line: identifies a set of images."""
    return hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Ranking:
    """A channel order for one model's split layer: `order[i]` is the BN-output channel sent i-th, unless a
    `sequence` says what is sent: per row a channel or VIRTUAL (-1), the virtual rows taking `directions` [k][P]
    in turn. `virtual` records how a residual-pca sequence was built."""

    model: str
    layer: int
    order: tuple[int, ...]
    in_channels: int
    stride: int
    scores: tuple[float, ...]
    images: dict[str, Any]
    command: str
    id: str
    method: str = "correlation"
    kernel: int | None = None  # the neighbourhood size `restoration` and `residual-pca` ranked with
    sequence: tuple[int, ...] | None = None
    directions: tuple[tuple[float, ...], ...] = ()
    virtual: dict[str, Any] | None = None

    def basis(self) -> SentBasis:
        """What the edge sends, all P rows: the order's channels, or the sequence with its directions."""
        if self.sequence is None:
            return SentBasis.ranked(self.order, self.channels)
        return SentBasis(self.sequence, torch.tensor(self.directions, dtype=torch.float32).reshape(-1, self.channels),
                         self.channels)  # fmt: skip

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
            "method": self.method,
            "kernel": self.kernel,
            "scores": list(self.scores),
            "images": self.images,
            "command": self.command,
            **({} if self.sequence is None else {
                "sequence": list(self.sequence), "virtual": self.virtual,
                "directions": [list(d) for d in self.directions],
            }),
        }  # fmt: skip

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
                method=str(data.get("method", "correlation")),
                kernel=None if data.get("kernel") is None else int(data["kernel"]),
                sequence=None if data.get("sequence") is None else tuple(int(p) for p in data["sequence"]),
                directions=tuple(tuple(float(v) for v in d) for d in data.get("directions", ())),
                virtual=None if data.get("virtual") is None else dict(data["virtual"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise RankingError(f"{source}: missing or malformed field ({e})") from None
        if ranking.method not in METHODS:
            raise RankingError(f"{source}: method {ranking.method!r}, expected one of {', '.join(METHODS)}")
        if sorted(order) != list(range(len(order))) or int(data.get("channels", -1)) != len(order):
            raise RankingError(f"{source}: order is not a permutation of 0..{int(data.get('channels', 0)) - 1}")
        if (ranking.sequence is None) != (ranking.method != "residual-pca"):
            raise RankingError(f"{source}: a sequence belongs to method residual-pca, and it needs one")
        if ranking.sequence is not None:
            if len(ranking.sequence) != len(order):
                raise RankingError(f"{source}: sequence has {len(ranking.sequence)} rows, expected {len(order)}")
            if any(len(d) != len(order) for d in ranking.directions):
                raise RankingError(f"{source}: every direction needs {len(order)} values")
            try:
                ranking.basis()
            except ValueError as e:
                raise RankingError(f"{source}: sequence and directions do not fit ({e})") from None
        expected = ranking_id(ranking.model, ranking.layer, order, ranking.sequence, ranking.directions)
        if expected != ranking.id:
            raise RankingError(f"{source}: ranking_id {ranking.id} does not match its order (expected {expected})")
        return ranking


def make_ranking(
    stats: CorrelationStats | PatchStats, *, model: str, layer: int, images: dict[str, Any], command: str,
    in_channels: int | None = None, stride: int | None = None,
) -> Ranking:
    """The Ranking of accumulated statistics, with its provenance: eq. 2-3 for `CorrelationStats` (scores: sum of
    rho), `restoration_order` for `PatchStats` (scores: variance fraction left after each pick; that method does
    not see X, so `in_channels` and `stride` of the split layer are passed in)."""
    if isinstance(stats, CorrelationStats):
        rho = stats.rho()
        order = order_channels(rho)
        totals = rho.sum(1)
        scores = [float(totals[p]) for p in order]
        in_channels, stride, method, kernel = stats.in_channels, stats.stride, "correlation", None
    else:
        if in_channels is None or stride is None:
            raise ValueError("a restoration ranking needs the split layer's in_channels and stride")
        order, scores = restoration_order(stats)
        method, kernel = "restoration", stats.kernel
    return Ranking(
        model=model, layer=layer, order=tuple(order), in_channels=in_channels, stride=stride,
        scores=tuple(round(s, 6) for s in scores), images=images, command=command,
        id=ranking_id(model, layer, order), method=method, kernel=kernel,
    )  # fmt: skip


def rank_images(
    split: Any, paths: Sequence[Path], *, size: int = 512, method: str = "correlation", kernel: int = 3,
    command: str = "", progress: bool | None = None,
) -> Ranking:
    """Rank the channels of `split` (a `baf.models.split.Split`) over the images at `paths`, one at a time, by
    `method` (`kernel`: the neighbourhood of the `restoration` method)."""
    from tqdm import tqdm

    from baf.images import letterbox, load_image

    if method not in METHODS:
        raise RankingError(f"method {method!r}, expected one of {', '.join(METHODS)}")
    if not paths:
        raise RankingError("no images to rank with")
    stats: CorrelationStats | PatchStats
    if method == "correlation":
        stats = CorrelationStats(split.channels, split.in_channels, split.stride)
    else:
        stats = PatchStats(split.channels, kernel)
    with torch.inference_mode():
        for path in tqdm(paths, desc="rank", unit="img", disable=None if progress is None else not progress):
            x, _ = letterbox(load_image(path), size)
            z, xin = split.edge.forward_with_input(x[None])
            if isinstance(stats, CorrelationStats):
                stats.update(z, xin)
            else:
                stats.update(z)
    images = {"count": len(paths), "names_sha256": names_digest(p.name for p in paths), "size": size}
    ranking = make_ranking(stats, model=split.model.name, layer=split.layer, images=images, command=command,
                           in_channels=split.in_channels, stride=split.stride)  # fmt: skip
    log.info("ranking_id=%s method=%s images=%d top=%s", ranking.id, method, len(paths), list(ranking.order[:8]))
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


def load_ranking(model: str, layer: int) -> Ranking:
    """The packaged ranking for `model` at `layer`, verified (format, permutation, ranking_id)."""
    path = packaged_ranking_path(model, layer)
    if not path.is_file():
        raise RankingError(f"no packaged ranking for {model} layer {layer} (expected {path}); make one with `baf rank`")
    ranking = read_ranking(path)
    if (ranking.model, ranking.layer) != (model, layer):
        raise RankingError(f"{path}: ranks {ranking.model} layer {ranking.layer}, expected {model} layer {layer}")
    return ranking


def packaged_rankings(model: str, layer: int) -> list[Ranking]:
    """Every ranking the package keeps for `model` at `layer`: the default first, then the others by name."""
    default = packaged_ranking_path(model, layer)
    others = sorted(rankings_folder().glob(f"{model}_l{layer}_*.json"))
    rankings = [read_ranking(p) for p in ([default] if default.is_file() else []) + others]
    return [r for r in rankings if (r.model, r.layer) == (model, layer)]


def find_ranking(model: str, layer: int, path: str | os.PathLike[str] | None = None) -> Ranking:
    """The ranking file at `path` if given (it must rank `model` at `layer`), else the packaged one. A `path`
    that is no file but names a ranking packaged beside the default (e.g. `residual-pca`) means that one."""
    if path is None:
        return load_ranking(model, layer)
    if not Path(path).exists() and os.sep not in str(path):
        variant = packaged_ranking_path(model, layer, str(path))
        path = variant if variant.is_file() else path
    ranking = read_ranking(path)
    if (ranking.model, ranking.layer) != (model, layer):
        raise RankingError(f"{path}: ranks {ranking.model} layer {ranking.layer}, expected {model} layer {layer}")
    return ranking
