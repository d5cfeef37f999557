"""What an edge sends (`baf.basis.SentBasis`): ranked rows copy their channel exactly, virtual rows mix all P."""

import pytest
import torch

from baf.basis import VIRTUAL, SentBasis


def mixed() -> SentBasis:
    """Rows: channel 3, a virtual row, channel 0, another virtual row, over P=5."""
    directions = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0, 2.0]])
    return SentBasis([3, VIRTUAL, 0, VIRTUAL], directions, 5)


def test_send_copies_ranked_rows_and_mixes_virtual_ones():
    basis = mixed()
    z = torch.randn(2, 5, 3, 4)
    sent = basis.send(z)
    assert sent.shape == (2, 4, 3, 4)
    assert torch.equal(sent[:, 0], z[:, 3]) and torch.equal(sent[:, 2], z[:, 0])  # bit for bit
    torch.testing.assert_close(sent[:, 1], 0.5 * (z[:, 0] + z[:, 1]))
    torch.testing.assert_close(sent[:, 3], z[:, 2] - z[:, 3] + 2 * z[:, 4])
    torch.testing.assert_close(sent, torch.einsum("kp,bphw->bkhw", basis.rows(), z))
    # One image [P,h,w] works too, and a prefix is what C rows send.
    torch.testing.assert_close(basis.send(z[0], 3), sent[0, :3])
    assert basis.send(z, 1).shape == (2, 1, 3, 4) and basis.prefix(2).virtual == 1


def test_channel_only_rows_are_a_gather():
    basis = SentBasis.ranked([2, 0, 1], 3)
    z = torch.randn(1, 3, 2, 2)
    assert torch.equal(basis.send(z), z[:, [2, 0, 1]]) and basis.virtual == 0
    assert torch.equal(basis.rows(), torch.eye(3)[[2, 0, 1]])


def test_concatenation_keeps_rows_and_directions_in_order():
    head = SentBasis.ranked([1], 3)
    tail = SentBasis([VIRTUAL], torch.tensor([[1.0, 2.0, 3.0]]), 3)
    joined = head + tail + SentBasis.ranked([0], 3)
    assert joined.channels == (1, VIRTUAL, 0) and torch.equal(joined.directions, tail.directions)
    assert SentBasis.mixtures(tail.directions).channels == tail.channels


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="directions: expected shape"):
        SentBasis([0, VIRTUAL], None, 3)
    with pytest.raises(ValueError, match="channels: expected distinct"):
        SentBasis.ranked([0, 0], 3)
    with pytest.raises(ValueError, match="channels: expected distinct"):
        SentBasis.ranked([3], 3)
    with pytest.raises(ValueError, match="not finite"):
        SentBasis([VIRTUAL], torch.tensor([[float("nan"), 0.0, 0.0]]), 3)
    with pytest.raises(ValueError, match="z: expected 5 channels"):
        mixed().send(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="width"):
        mixed().prefix(5)
