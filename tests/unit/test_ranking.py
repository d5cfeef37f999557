"""Channel ranking (eq. 2-3): known orders on synthetic features, streaming = one shot, polyphase, file checks."""

import json

import pytest
import torch

from baf.errors import RankingError
from baf.ranking import (
    CorrelationStats,
    PatchStats,
    Ranking,
    load_ranking,
    make_ranking,
    order_channels,
    ranking_id,
    read_ranking,
    restoration_order,
    write_ranking,
)


def synthetic(
    n: int = 6, noise: tuple[float, ...] = (0.0, 0.3, 3.0, 1.0), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """X [n,4,8,8]; Z channel p = scaled sum of all X channels plus noise of std noise[p]: less noise ranks higher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g, dtype=torch.float64)
    base = x.sum(1, keepdim=True)
    z = torch.cat([(p + 1) * -2.0 * base + s * torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
                   for p, s in enumerate(noise)], 1)  # fmt: skip
    return z, x


def test_known_order_from_noise_levels():
    z, x = synthetic()
    stats = CorrelationStats(4, 4, 1)
    stats.update(z, x)
    assert order_channels(stats.rho()) == [0, 1, 3, 2]


def test_exact_copy_has_correlation_one():
    z, x = synthetic()
    stats = CorrelationStats(4, 4, 1)
    stats.update(x * 3 - 1, x)  # Z_p = affine copy of X_p
    rho = stats.rho()
    torch.testing.assert_close(rho.diagonal(), torch.ones(4, dtype=torch.float64))
    assert float(rho.fill_diagonal_(0).max()) < 0.5


def test_streaming_in_chunks_equals_one_shot():
    z, x = synthetic(n=9)
    one = CorrelationStats(4, 4, 1)
    one.update(z, x)
    chunked = CorrelationStats(4, 4, 1)
    for i in range(0, 9, 4):
        chunked.update(z[i : i + 4], x[i : i + 4])
    torch.testing.assert_close(chunked.rho(), one.rho(), rtol=1e-12, atol=1e-12)


def test_stride_two_uses_polyphase_components():
    # Z_0 copies the (0, 1) phase of X_1, Z_1 is noise: rho[0, 1] = (1 + 3 small terms) / 4.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 8, 8, generator=g, dtype=torch.float64)
    z = torch.stack((x[:, 1, 0::2, 1::2], torch.randn(5, 4, 4, generator=g, dtype=torch.float64)), 1)
    stats = CorrelationStats(2, 2, 2)
    stats.update(z, x)
    rho = stats.rho()
    assert 0.25 <= float(rho[0, 1]) < 0.5
    assert order_channels(rho) == [0, 1]
    parts = stats.polyphase(x)
    torch.testing.assert_close(parts[:, 1 * 4 + 0 * 2 + 1], x[:, 1, 0::2, 1::2])


def test_constant_channel_ranks_last():
    z, x = synthetic()
    z[:, 0] = 5.0
    stats = CorrelationStats(4, 4, 1)
    stats.update(z, x)
    assert order_channels(stats.rho())[-1] == 0


def test_file_round_trip_and_tamper(tmp_path):
    z, x = synthetic()
    stats = CorrelationStats(4, 4, 1)
    stats.update(z, x)
    ranking = make_ranking(stats, model="m", layer=3, images={"count": 6}, command="baf rank")
    path = tmp_path / "r.json"
    write_ranking(ranking, path)
    assert read_ranking(path) == ranking
    data = json.loads(path.read_text())
    data["order"] = data["order"][::-1]
    path.write_text(json.dumps(data))
    with pytest.raises(RankingError, match="does not match"):
        read_ranking(path)
    data["order"] = [0, 0, 1, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(RankingError, match="permutation"):
        read_ranking(path)


def noise(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_restoration_picks_the_channel_that_explains_most_then_what_is_left():
    # z2 = z0 + z1 explains more of the rest than either; with z2 and z0 known, z1 is exact; z3 is alone.
    z0, z1, z3 = noise(20, 1, 16, 16, seed=1), noise(20, 1, 16, 16, seed=2), 0.3 * noise(20, 1, 16, 16, seed=3)
    z = torch.cat((z0, z1, z0 + z1, z3), 1)
    stats = PatchStats(4, kernel=1)
    stats.update(z)
    order, left = restoration_order(stats)
    assert order[0] == 2 and order[2] == 3 and sorted(order) == [0, 1, 2, 3]
    var = z.var((0, 2, 3))
    assert left[1] == pytest.approx(float(var[3] / var.sum()), abs=2e-3)  # only z3 is left
    assert left[2] == pytest.approx(0, abs=1e-4) and left == sorted(left, reverse=True)


def test_restoration_sees_neighbours_within_its_kernel():
    # z1 is z0 moved one pixel right: a 3x3 neighbourhood of z0 restores it, a 1x1 one does not.
    z0 = noise(10, 1, 12, 12, seed=4)
    z1 = torch.zeros_like(z0)
    z1[..., 1:] = z0[..., :-1]
    z = torch.cat((z0, z1, 0.7 * noise(10, 1, 12, 12, seed=5)), 1)
    orders = {}
    for k in (1, 3):
        stats = PatchStats(3, kernel=k)
        stats.update(z)
        orders[k] = restoration_order(stats)[0]
    assert orders[3][1] == 2  # z0 or z1 first, then the independent channel: the other is already restored
    assert orders[1][1] in (0, 1)  # pointwise the shifted copy is new information, and larger than z2


def test_patch_stats_stream_like_one_shot_and_refuse_bad_input():
    z = noise(9, 3, 6, 6, seed=6)
    one, chunked = PatchStats(3, 3), PatchStats(3, 3)
    one.update(z)
    for i in range(0, 9, 4):
        chunked.update(z[i : i + 4])
    torch.testing.assert_close(chunked.covariance(), one.covariance(), rtol=1e-4, atol=1e-6)  # float32 products
    with pytest.raises(ValueError, match="odd"):
        PatchStats(3, 2)
    with pytest.raises(ValueError, match="expected"):
        one.update(z[:, :2])
    with pytest.raises(RankingError, match="no statistics"):
        PatchStats(3, 3).covariance()


def test_restoration_ranking_file_records_its_method(tmp_path):
    stats = PatchStats(4, kernel=3)
    stats.update(noise(3, 4, 8, 8, seed=7))
    ranking = make_ranking(stats, model="m", layer=3, images={"count": 3}, command="baf rank", in_channels=2, stride=1)
    assert (ranking.method, ranking.kernel, ranking.in_channels) == ("restoration", 3, 2)
    path = tmp_path / "r.json"
    write_ranking(ranking, path)
    assert read_ranking(path) == ranking
    data = json.loads(path.read_text())
    del data["method"], data["kernel"]  # files from before the restoration method are the paper's
    path.write_text(json.dumps(data))
    assert read_ranking(path).method == "correlation"
    data["method"] = "magic"
    path.write_text(json.dumps(data))
    with pytest.raises(RankingError, match="method 'magic'"):
        read_ranking(path)
    with pytest.raises(ValueError, match="in_channels and stride"):
        make_ranking(stats, model="m", layer=3, images={}, command="")


def test_ranking_id_depends_on_model_layer_order():
    assert ranking_id("m", 1, [0, 1]) != ranking_id("m", 1, [1, 0]) != ranking_id("m", 2, [1, 0])
    assert len(ranking_id("m", 1, [0, 1])) == 16


def test_packaged_ranking_loads():
    ranking = load_ranking("yolov3-tiny", 8)
    assert isinstance(ranking, Ranking)
    assert ranking.channels == 256 and ranking.images["count"] == 1600
    assert sorted(ranking.order) == list(range(256))


def test_missing_packaged_ranking():
    with pytest.raises(RankingError, match="no packaged ranking"):
        load_ranking("yolov3-tiny", 999)


def test_find_ranking_takes_a_file_only_for_its_own_model_and_layer(tmp_path):
    import dataclasses

    from baf.ranking import find_ranking, load_ranking, ranking_id, write_ranking

    packaged = load_ranking("yolov3-tiny", 8)
    assert find_ranking("yolov3-tiny", 8) == packaged
    other = dataclasses.replace(packaged, model="yolov3", id=ranking_id("yolov3", 8, packaged.order))
    write_ranking(other, tmp_path / "r.json")
    assert find_ranking("yolov3", 8, tmp_path / "r.json").id == other.id
    with pytest.raises(RankingError, match="ranks yolov3 layer 8, expected yolov3-tiny layer 8"):
        find_ranking("yolov3-tiny", 8, tmp_path / "r.json")


def test_packaged_rankings_are_found_by_name_default_first():
    from baf.packaged import is_packaged_variant
    from baf.ranking import find_ranking, packaged_rankings

    default, *others = packaged_rankings("yolov3-tiny", 8)
    assert default == load_ranking("yolov3-tiny", 8) and [r.method for r in others] == ["residual-pca"]
    named = find_ranking("yolov3-tiny", 8, "residual-pca")
    assert named == others[0] and named.basis().virtual == 128 and named.kernel == 9
    assert is_packaged_variant("residual-pca") and not is_packaged_variant("nope")
    assert not is_packaged_variant("baf/rankings/yolov3-tiny_l8.json")  # a path is a path
    with pytest.raises(RankingError, match="not found"):
        find_ranking("yolov3-tiny", 8, "nope")
