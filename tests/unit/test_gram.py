"""The streamed Gram matrix: the upper-triangle blocks it multiplies add up to the full a @ a.T."""

import pytest
import torch

from baf.gram import Gram


@pytest.mark.parametrize(("dim", "block"), [(1, 1), (7, 3), (10, 10), (10, 64), (33, 8)])
def test_sums_equal_full_products_for_any_block_size(dim, block):
    torch.manual_seed(dim)
    batches = [torch.randn(dim, n) for n in (5, 1, 17)]
    gram = Gram(dim, block=block)
    for a in batches:
        gram.add(a)
    want = sum((a.double() @ a.double().T) for a in batches)
    got = gram.matrix()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(got, got.T)


def test_principal_submatrix_is_that_of_the_full_matrix():
    torch.manual_seed(0)
    a = torch.randn(9, 40)
    gram = Gram(9, block=4)
    gram.add(a)
    index = torch.tensor([0, 2, 3, 8])
    torch.testing.assert_close(gram.matrix(index), gram.matrix()[index][:, index])


def test_refuses_wrong_shapes():
    gram = Gram(4)
    with pytest.raises(ValueError, match=r"expected \[4, N\]"):
        gram.add(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="must be >= 1"):
        Gram(0)
