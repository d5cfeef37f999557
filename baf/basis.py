"""What an edge sends at each position of Z: a sequence of rows over the P channels of the split layer.

A row is either a ranked channel (a unit vector: the edge copies Z_p, and the cloud clamps its restoration into
the channel's quantizer bins, eq. 6) or a virtual channel: a fixed direction v [P], sent as v . Z (a 1x1 conv at
the edge). The paper's rankings are all channel rows; `baf rank --method residual-pca` adds directions
(`baf.residual_ranking`). Sequences are nested: C sent channels are always the first C rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

VIRTUAL = -1  # `SentBasis.channels` entry of a virtual row


class SentBasis:
    """Rows [W,P]: `channels[i]` is the channel row i copies, or VIRTUAL; the virtual rows' directions, in order."""

    def __init__(self, channels: Sequence[int], directions: Tensor | None, total: int) -> None:
        """`channels`: per row a channel index in 0..total-1 or VIRTUAL; `directions` [k,total] for the k virtual
        rows (None when there are none)."""
        self.channels = tuple(int(c) for c in channels)
        self.total = total
        virtual = sum(c == VIRTUAL for c in self.channels)
        directions = torch.zeros(0, total) if directions is None else directions.detach().float()
        if tuple(directions.shape) != (virtual, total):
            raise ValueError(f"directions: expected shape ({virtual}, {total}), got {tuple(directions.shape)}")
        if not bool(torch.isfinite(directions).all()):
            raise ValueError("directions: not finite")
        picked = [c for c in self.channels if c != VIRTUAL]
        if len(set(picked)) != len(picked) or not all(0 <= c < total for c in picked):
            raise ValueError(f"channels: expected distinct indices in 0..{total - 1} or {VIRTUAL}")
        self.directions = directions

    @classmethod
    def ranked(cls, channels: Sequence[int], total: int) -> SentBasis:
        """Rows that copy `channels` of a `total`-channel Z."""
        return cls(channels, None, total)

    @classmethod
    def mixtures(cls, directions: Tensor) -> SentBasis:
        """Virtual rows that send the directions [k,P]."""
        return cls([VIRTUAL] * len(directions), directions, directions.shape[1])

    @property
    def width(self) -> int:
        """Rows (channels sent at most)."""
        return len(self.channels)

    @property
    def virtual(self) -> int:
        """Number of virtual rows."""
        return len(self.directions)

    def __add__(self, other: SentBasis) -> SentBasis:
        """This sequence followed by `other`'s rows."""
        return SentBasis(self.channels + other.channels, torch.cat((self.directions, other.directions)), self.total)

    def prefix(self, width: int) -> SentBasis:
        """The first `width` rows (what C=`width` sends)."""
        if not 0 <= width <= self.width:
            raise ValueError(f"width: {width} is outside 0..{self.width}")
        head = self.channels[:width]
        return SentBasis(head, self.directions[: sum(c == VIRTUAL for c in head)], self.total)

    def rows(self) -> Tensor:
        """The full matrix [W,P] float32 (a ranked row is one-hot)."""
        out = torch.zeros(self.width, self.total)
        ranked, virtual = self.split_rows()
        out[ranked[0], ranked[1]] = 1.0
        out[virtual] = self.directions
        return out

    def split_rows(self) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """((positions, channels) of the ranked rows, positions of the virtual rows), as long tensors."""
        channels = torch.tensor(self.channels, dtype=torch.long)
        ranked = (channels != VIRTUAL).nonzero().flatten()
        return (ranked, channels[ranked]), (channels == VIRTUAL).nonzero().flatten()

    def send(self, z: Tensor, width: int | None = None) -> Tensor:
        """The first `width` (default all) sent channels [..., width, h, w] of z [..., P, h, w], in z's dtype.

        A ranked row is the channel itself, bit for bit; a virtual row is its direction's weighted sum of all P.
        """
        basis = self if width is None else self.prefix(width)
        if z.shape[-3] != self.total:
            raise ValueError(f"z: expected {self.total} channels, got {z.shape[-3]}")
        if not basis.virtual:
            return z[..., torch.tensor(basis.channels, dtype=torch.long, device=z.device), :, :]
        (ranked, picked), virtual = basis.split_rows()
        out = z.new_empty((*z.shape[:-3], basis.width, *z.shape[-2:]))
        out[..., ranked.to(z.device), :, :] = z[..., picked.to(z.device), :, :]
        out[..., virtual.to(z.device), :, :] = torch.einsum("kp,...phw->...khw", basis.directions.to(z), z)
        return out
