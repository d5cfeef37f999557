"""residual-pca rankings (`baf.residual_ranking`): nested blocks, orthonormal residual directions that restore
better than more ranked channels, and the ranking file that carries them."""

import json

import pytest
import torch
import torch.nn.functional as F

from baf.basis import VIRTUAL, SentBasis
from baf.errors import RankingError
from baf.ranking import Ranking, ranking_id, read_ranking, write_ranking
from baf.residual_ranking import fit_restoration, nested_sequence, residual_directions, residual_pca_ranking

P = 12


def features(n: int = 16, seed: int = 3) -> torch.Tensor:
    """Z [n,12,8,8]: every channel a different mix of four smooth sources plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    sources = F.avg_pool2d(torch.randn(n, 4, 10, 10, generator=g), 3, 1)
    mix = torch.randn(P, 4, 1, 1, generator=g)
    return F.conv2d(sources, mix) + 0.05 * torch.randn(n, P, 8, 8, generator=g)


Z = features()


def batches():
    return iter((Z[:8], Z[8:]))


def error(basis: SentBasis) -> float:
    """Mean squared error of restoring all P from what `basis` sends (3x3 least squares, on its fit data)."""
    weight, bias = fit_restoration(batches, basis, 3, 1e-6)
    return float((F.conv2d(basis.send(Z), weight, bias, padding=1) - Z).square().mean())


def base() -> Ranking:
    order = tuple(range(P - 1, -1, -1))
    return Ranking(model="m", layer=3, order=order, in_channels=2, stride=1, scores=(), images={"count": 16},
                   command="baf rank", id=ranking_id("m", 3, order))  # fmt: skip


def test_directions_are_orthonormal_and_restore_better_than_more_ranked_channels():
    ranked = SentBasis.ranked([11, 10], P)
    directions, left = residual_directions(batches, ranked, 2, 3, 1e-6)
    assert directions.shape == (2, P) and 0 < left < 1
    torch.testing.assert_close(directions @ directions.T, torch.eye(2), atol=1e-5, rtol=0)
    with_virtual = ranked + SentBasis([VIRTUAL] * 2, directions, P)
    assert error(with_virtual) < error(SentBasis.ranked([11, 10, 9, 8], P))
    # With nothing sent before, the directions are the principal axes of Z itself (a KLT), and hold all of it.
    klt, everything = residual_directions(batches, SentBasis.ranked([], P), 4, 3, 1e-6)
    assert everything == pytest.approx(1.0) and error(SentBasis([VIRTUAL] * 4, klt, P)) < error(with_virtual)


def test_nested_sequence_mixes_each_block_and_fills_up_to_p_rows():
    basis, left = nested_sequence(batches, list(range(P - 1, -1, -1)), [2, 4, 8], 0.5, 3, 1e-6)
    v = VIRTUAL
    assert basis.channels == (11, v, 10, v, 9, 8, v, v, 7, 6, 5, 4)
    assert basis.virtual == 4 and len(left) == 3 and 1 > left[0] > left[1] > left[2]
    only_virtual, left = nested_sequence(batches, list(range(P)), [3, 6], 1.0, 3, 1e-6)
    assert only_virtual.channels == (v,) * 6 + (0, 1, 2, 3, 4, 5) and left[0] == pytest.approx(1.0)
    for widths, share in (([4, 2], 0.5), ([P + 1], 0.5), ([2], 1.5)):
        with pytest.raises(RankingError):
            nested_sequence(batches, list(range(P)), widths, share, 3, 1e-6)


def test_ranking_file_carries_the_sequence_under_its_id(tmp_path):
    channel_ranking = base()
    ranking = residual_pca_ranking(channel_ranking, batches, widths=[2, 4], share=0.5, kernel=3, ridge=1e-6,
                                   images={"count": 16}, command="baf rank --method residual-pca")  # fmt: skip
    assert ranking.id != channel_ranking.id and ranking.order == channel_ranking.order
    assert ranking.virtual["base_ranking_id"] == channel_ranking.id and ranking.kernel == 3
    sent = ranking.basis()
    assert sent.width == P and sent.virtual == 2
    path = tmp_path / "r.json"
    write_ranking(ranking, path)
    back = read_ranking(path)
    assert back == ranking and torch.equal(back.basis().directions, sent.directions)
    data = json.loads(path.read_text())
    data["directions"][0][0] += 0.5  # other directions, same id: refused
    path.write_text(json.dumps(data))
    with pytest.raises(RankingError, match="does not match"):
        read_ranking(path)
    data["directions"][0] = data["directions"][0][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(RankingError, match="every direction"):
        read_ranking(path)
    del data["sequence"]
    path.write_text(json.dumps(data))
    with pytest.raises(RankingError, match="residual-pca"):
        read_ranking(path)
    with pytest.raises(RankingError, match="already has virtual"):
        residual_pca_ranking(ranking, batches, widths=[2], share=1, kernel=3, ridge=0, images={}, command="")
