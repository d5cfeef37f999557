"""Streamed Gram matrices (sums of a a^T over batches), the cost that dominates least-squares fits and rankings.

Only the blocks on and above the diagonal are multiplied: the matrix is symmetric, so a row block of `block`
features times the features from its own first row onwards does about half the products of a full a @ a.T
(0.58 of them at dim 6,273 with blocks of 1,024). Products are float32 per batch, sums float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Gram:
    """Running sum of a @ a.T for batches a [dim, N]; `matrix` gives it (or a principal submatrix) symmetric."""

    def __init__(self, dim: int, block: int = 1024) -> None:
        if dim < 1 or block < 1:
            raise ValueError(f"dim and block must be >= 1, got {dim}, {block}")
        self.dim, self.block = dim, block
        self._upper = torch.zeros(dim, dim, dtype=torch.float64)  # valid on and above the diagonal

    def add(self, a: Tensor) -> None:
        """Add the products of a [dim, N] (float32) with itself."""
        if a.dim() != 2 or a.shape[0] != self.dim:
            raise ValueError(f"a: expected [{self.dim}, N], got {tuple(a.shape)}")
        for i in range(0, self.dim, self.block):
            j = min(i + self.block, self.dim)
            self._upper[i:j, i:] += (a[i:j] @ a[i:].T).double()

    def matrix(self, index: Tensor | None = None) -> Tensor:
        """The symmetric sum (float64), or its principal submatrix at the ascending positions `index`."""
        u = self._upper if index is None else self._upper[index][:, index]
        return u.triu() + u.triu(1).T
