"""Training: torch quantize vs ops.quantize, a seeded run on a tiny synthetic cache (deterministic, loss falls),
resume = uninterrupted, divergence, and the cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from baf import ops
from baf.commands.train import init_weights
from baf.errors import BafError, CheckpointError, TrainingDivergedError
from baf.predictor import load_predictor, make_inputs, trained_steps
from baf.train import (
    CACHE_FORMAT,
    FeatureCache,
    FeatureLoss,
    TrainConfig,
    batch_indices,
    charbonnier,
    data_id,
    draw_step,
    fit,
    loss_on,
)
from tests.unit.test_predictor import make


@settings(deadline=None, max_examples=100)
@given(z=arrays(np.float32, (2, 3, 4, 5), elements=st.floats(-1e3, 1e3, width=32)), bits=st.integers(1, 16))
def test_quantize_torch_matches_native(z, bits):
    q_t, lo_t, hi_t = ops.quantize_torch(torch.from_numpy(z), bits)
    for i in range(2):
        q, lo, hi = ops.quantize(np.ascontiguousarray(z[i]), bits)
        np.testing.assert_array_equal(lo_t[i].numpy(), lo)
        np.testing.assert_array_equal(hi_t[i].numpy(), hi)
        # torch.round breaks ties to even; at most one step apart, and only at ties.
        assert np.abs(q_t[i].numpy().astype(np.int64) - q.astype(np.int64)).max(initial=0) <= 1


def toy_cache(root: Path, n: int = 24, seed: int = 0) -> FeatureCache:
    """Features of the toy split of `make()`: X random, Z = BN(conv(X)), written like build_cache does."""
    predictor, _ = make(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 4, 6, 6, generator=g).abs()
    with torch.no_grad():
        z = predictor.forward_layer(x)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "z.npy", z.numpy().astype(np.float16))
    np.save(root / "x.npy", x.numpy().astype(np.float16))
    names = [f"{i:03d}.jpg" for i in range(n)]
    meta = {"format": CACHE_FORMAT, "model": "toy", "layer": 3, "size": 6,
            "data_id": data_id("toy", 3, 6, names), "names": names}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta))
    return FeatureCache.open(root)


def config(out: Path, **kw) -> TrainConfig:
    base = dict(channels=(2, 4), bits=(2, 8), out_dir=out, name="toy", batch_size=4, lr=3e-3, warmup=0, heldout=4,
                heldout_every=5, log_every=1, checkpoint_every=1000, max_steps=3)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def run(tmp_path: Path, sub: str, cache: FeatureCache, resume: bool = False, kind: str = "hybrid", **kw):
    predictor, _ = make(kind=kind)
    state = fit(config(tmp_path / sub, **kw), predictor, cache, resume=resume, progress=False)
    return predictor, state


def test_steps_are_deterministic_and_cover_the_data():
    cfg = config(Path("unused"))
    assert [draw_step(cfg, s) for s in range(10)] == [draw_step(cfg, s) for s in range(10)]
    assert {draw_step(cfg, s) for s in range(50)} == {(c, n) for c in (2, 4) for n in (2, 8)}
    epoch = [i for s in range(5) for i in batch_indices(cfg, s, 20)]
    assert sorted(epoch) == list(range(20))
    ranks = [batch_indices(cfg, 0, 20, rank=r, world=2) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])


def test_seeded_run_is_deterministic(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    a, sa = run(tmp_path, "a", cache)
    b, sb = run(tmp_path, "b", cache)
    assert sa.curve == sb.curve and sa.step == 3
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)


def test_loss_decreases(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    _, state = run(tmp_path, "a", cache, kind="baf", max_steps=20, channels=(4,), bits=(8,))
    losses = [loss for _, loss in state.curve]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert [h["step"] for h in state.heldout] == [5, 10, 15, 20]


def test_resume_equals_uninterrupted(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    full, s_full = run(tmp_path, "full", cache, max_steps=6)
    run(tmp_path, "split", cache, max_steps=3)
    resumed, s_res = run(tmp_path, "split", cache, resume=True, max_steps=6)
    assert s_res.step == 6 and s_res.curve == s_full.curve
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    side = json.loads((tmp_path / "split" / "toy.json").read_text())
    assert side["train"]["steps"] == 6 and len(side["train"]["loss_curve"]) == 6
    assert load_predictor(tmp_path / "split" / "toy.json").config == full.config


def test_resume_without_checkpoint_fails(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(tmp_path, "none", cache, resume=True)


def test_resume_detects_damaged_optimizer_state(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    run(tmp_path, "a", cache)
    opt = tmp_path / "a" / "toy.optim.safetensors"
    opt.write_bytes(opt.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        run(tmp_path, "a", cache, resume=True, max_steps=4)


def test_non_finite_loss_raises(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    predictor, _ = make()
    with torch.no_grad():
        predictor.linear_bias_c2.fill_(float("inf"))
        predictor.linear_bias_c4.fill_(float("inf"))
    with pytest.raises(TrainingDivergedError, match="step 0"):
        # linear_fitted: keep the poisoned path (a least-squares fit would repair it)
        fit(config(tmp_path / "bad"), predictor, cache, linear_fitted=True, progress=False)


def test_linear_kind_has_nothing_to_train(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    with pytest.raises(BafError, match="fit-linear"):
        run(tmp_path, "lin", cache, kind="linear")


def test_feature_loss_term_is_added_and_recorded(tmp_path):
    predictor, _ = make(kind="baf")
    z = torch.randn(4, 8, 6, 6)
    tail = torch.nn.Conv2d(8, 3, 3, padding=1).requires_grad_(False)
    torch.manual_seed(0)
    plain = loss_on(predictor, predictor.config, predictor.basis, z, 4, 8)
    with_term = loss_on(predictor, predictor.config, predictor.basis, z, 4, 8, FeatureLoss(tail, 0.5))
    pred = predictor(make_inputs(z, predictor.basis, 4, 8), 8)
    expected = plain + 0.5 * charbonnier(tail(pred), tail(z))
    torch.testing.assert_close(with_term, expected)
    cache = toy_cache(tmp_path / "cache")
    cfg = config(tmp_path / "feat", feature_layer=10, feature_weight=0.5)
    fit(cfg, make()[0], cache, feature=FeatureLoss(tail, 0.5), progress=False)
    side = json.loads((tmp_path / "feat" / "toy.json").read_text())
    assert side["train"]["feature_loss"] == {"layer": 10, "weight": 0.5}
    with pytest.raises(BafError, match="go together"):
        config(tmp_path, feature_layer=10)


def test_balance_rates_divides_by_the_starting_loss_of_each_rate(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    start, s0 = run(tmp_path, "start", cache, max_steps=0, balance_rates=True)
    z_train = torch.from_numpy(np.array(cache.z[:-4])).float()  # heldout=4; the toy cache is below REFERENCE_IMAGES
    with torch.no_grad():
        expected = {f"{c}/{n}": float(loss_on(start, start.config, start.basis, z_train, c, n))
                    for c in (2, 4) for n in (2, 8)}  # fmt: skip
    assert s0.reference.keys() == expected.keys()
    for key, loss in expected.items():
        assert s0.reference[key] == pytest.approx(loss, rel=1e-5)
    plain, _ = run(tmp_path, "plain", cache, max_steps=4)
    balanced, _ = run(tmp_path, "balanced", cache, max_steps=4, balance_rates=True)
    assert any(not torch.equal(plain.state_dict()[k], v) for k, v in balanced.state_dict().items())
    side = json.loads((tmp_path / "balanced" / "toy.json").read_text())["train"]
    assert side["balance_rates"] is True and side["rate_reference"] == pytest.approx(s0.reference)


def test_balanced_resume_keeps_its_reference_and_refuses_a_switch(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    full, s_full = run(tmp_path, "full", cache, max_steps=6, balance_rates=True)
    run(tmp_path, "split", cache, max_steps=3, balance_rates=True)
    resumed, s_res = run(tmp_path, "split", cache, resume=True, max_steps=6, balance_rates=True)
    assert s_res.curve == s_full.curve and s_res.reference == s_full.reference
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="balance-rates"):
        run(tmp_path, "split", cache, resume=True, max_steps=7)


def test_init_from_copies_a_checkpoint_and_records_it(tmp_path):
    cache = toy_cache(tmp_path / "cache")
    trained, _ = run(tmp_path, "a", cache, max_steps=3)
    fresh, _ = make()
    record = init_weights(fresh, tmp_path / "a" / "toy.json", "toy", 3)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)
    assert record["steps"] == 3 and record["sha256"] == load_predictor(tmp_path / "a" / "toy.json").source_sha256
    state = fit(config(tmp_path / "b", init_from=record), fresh, cache, linear_fitted=True, progress=False)
    assert state.step == 3
    side = json.loads((tmp_path / "b" / "toy.json").read_text())
    assert side["train"]["init_from"] == record and trained_steps(side) == 6
    with pytest.raises(BafError, match="this run is"):
        init_weights(make(channels=(4,))[0], tmp_path / "a" / "toy.json", "toy", 3)
    with pytest.raises(BafError, match="another split"):
        init_weights(make(seed=1)[0], tmp_path / "a" / "toy.json", "toy", 3)


def test_config_and_cache_errors(tmp_path):
    with pytest.raises(BafError, match="max-steps"):
        config(tmp_path, max_steps=None)
    with pytest.raises(BafError, match="--name"):
        config(tmp_path, name="a.b")
    with pytest.raises(BafError, match="not a complete feature cache"):
        FeatureCache.open(tmp_path / "nothing")
