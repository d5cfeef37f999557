"""`residual-pca` rankings: a sent sequence of ranked channels and virtual channels, nested for every C.

The paper sends the first C ranked channels of Z; each is a unit vector over the P channels. A fixed direction
v [P] (a 1x1 conv at the edge) can carry more of what the cloud cannot restore. This method builds one sequence
for ascending widths C1 < C2 < ...: each block up to the next width takes the next channels of a base order for
(1 - share) of its rows, then, for the rest, the principal axes of the residual Z - restore(sent so far), where
restore is the k x k least-squares map from the rows before (`baf.predictor.NormalEquations`) and the first
block, with nothing before it, takes the principal axes of Z itself. Every C in the widths is then a prefix, so
one `linear` checkpoint serves them all; after the last width the sequence continues with the base order's
unused channels up to P rows. Measured in bench/virtual_channels.py (README: "Virtual channels").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from baf.basis import SentBasis
from baf.errors import RankingError
from baf.predictor import NormalEquations
from baf.ranking import Ranking, ranking_id

log = logging.getLogger(__name__)

Batches = Callable[[], Iterable[Tensor]]  # a fresh pass over the training features, float32 Z [B,P,h,w]


def fit_restoration(batches: Batches, basis: SentBasis, kernel: int, ridge: float,
                    bits: int | None = None) -> tuple[Tensor, Tensor]:
    """(weight [P,W,k,k], bias [P]) of the least-squares k x k map from what `basis` sends (n-bit when `bits`)
    to all P channels, over one pass of `batches`."""
    eqs = NormalEquations(basis.width, kernel, basis.total, bits)
    for z in batches():
        eqs.add(z, basis)
    return eqs.solve(basis.width, ridge)


def residual_directions(batches: Batches, basis: SentBasis, count: int, kernel: int,
                        ridge: float) -> tuple[Tensor, float]:
    """(the top `count` principal axes [count,P] of Z minus its restoration from `basis` (an empty basis: of Z
    itself), the fraction of Z's variance that residual holds)."""
    p = basis.total
    fitted = fit_restoration(batches, basis, kernel, ridge) if basis.width else None
    r_sum, r_outer = torch.zeros(p, dtype=torch.float64), torch.zeros(p, p, dtype=torch.float64)
    z_sum, z_sq, count_pos = torch.zeros(p, dtype=torch.float64), torch.zeros(p, dtype=torch.float64), 0
    for z in batches():
        r = z if fitted is None else z - F.conv2d(basis.send(z), *fitted, padding=kernel // 2)
        flat = r.transpose(0, 1).reshape(p, -1).double()
        zf = z.transpose(0, 1).reshape(p, -1).double()
        r_sum += flat.sum(1)
        r_outer += flat @ flat.T
        z_sum += zf.sum(1)
        z_sq += (zf * zf).sum(1)
        count_pos += flat.shape[1]
    if count_pos < 2:
        raise RankingError("no training features to rank with")
    mean = r_sum / count_pos
    cov = r_outer / count_pos - torch.outer(mean, mean)
    total = float((z_sq / count_pos - (z_sum / count_pos) ** 2).sum())
    if total <= 0:
        raise RankingError("Z is constant over the ranking images: nothing to rank by")
    _, vectors = torch.linalg.eigh(cov)
    return vectors.flip(1)[:, :count].T.float().contiguous(), float(cov.trace()) / total


def nested_sequence(batches: Batches, order: Sequence[int], widths: Sequence[int], share: float, kernel: int,
                    ridge: float) -> tuple[SentBasis, list[float]]:
    """(the sequence of len(order) rows whose first C serve each C in `widths`, the residual variance fraction
    before each block's virtual rows); see the module docstring."""
    p = len(order)
    if not widths or list(widths) != sorted(set(widths)) or widths[0] < 1 or widths[-1] > p:
        raise RankingError(f"widths: expected ascending values in 1..{p}, got {list(widths)}")
    if not 0 <= share <= 1:
        raise RankingError(f"share: expected 0..1, got {share}")
    basis, used, left = SentBasis.ranked([], p), 0, []
    for width in widths:
        block = width - basis.width
        virtual = round(block * share)
        basis = basis + SentBasis.ranked(order[used : used + block - virtual], p)
        used += block - virtual
        if virtual:
            directions, fraction = residual_directions(batches, basis, virtual, kernel, ridge)
            basis = basis + SentBasis.mixtures(directions)
            left.append(round(fraction, 6))
        log.info("residual-pca: C=%d (%d ranked, %d virtual)", basis.width, used, basis.virtual)
    return basis + SentBasis.ranked(order[used : used + p - basis.width], p), left


def residual_pca_ranking(base: Ranking, batches: Batches, *, widths: Sequence[int], share: float, kernel: int,
                         ridge: float, images: dict[str, Any], command: str) -> Ranking:
    """The residual-pca Ranking built on `base`'s order over the features `batches` yields, with provenance."""
    if base.sequence is not None:
        raise RankingError(f"the base ranking {base.id} already has virtual channels; pass a channel ranking")
    basis, left = nested_sequence(batches, base.order, widths, share, kernel, ridge)
    sequence = basis.channels
    directions = tuple(tuple(float(f"{v:.7g}") for v in d) for d in basis.directions.tolist())
    virtual = {"base_ranking_id": base.id, "base_method": base.method, "widths": list(widths), "share": share,
               "ridge": ridge, "residual_left": left}  # fmt: skip
    return Ranking(
        model=base.model, layer=base.layer, order=base.order, in_channels=base.in_channels, stride=base.stride,
        scores=(), images=images, command=command, method="residual-pca", kernel=kernel, sequence=sequence,
        directions=directions, virtual=virtual,
        id=ranking_id(base.model, base.layer, base.order, sequence, directions),
    )  # fmt: skip
