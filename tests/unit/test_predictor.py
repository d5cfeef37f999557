"""Predictors (baf, linear, hybrid): exact inverse BN, shapes for stride 1 and 2, the eq. 6 clamp, the least-squares
fit, checkpoints and tamper detection."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from baf import ops
from baf.basis import VIRTUAL
from baf.errors import CheckpointError
from baf.predictor import (
    BafPredictor,
    PredictorConfig,
    copy_linear,
    fit_linear,
    load_predictor,
    record_eval,
    save_predictor,
    z_transform,
)


def make(
    stride: int = 1, channels=(2, 4), bits=(2, 8), kind: str = "hybrid", seed: int = 0, kernel: int = 3,
    linear_bits=(), order=tuple(range(7, -1, -1)), directions=None,
) -> tuple[BafPredictor, nn.BatchNorm2d]:
    """A predictor for a random conv (Q=4 -> P=8, 3x3, `stride`) + BN, sending `order` (default: reverse channel
    order; VIRTUAL rows take `directions` in turn)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 8, 3, stride, 1, bias=False)
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2).mul_(torch.tensor([1, -1] * 4))
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    cfg = PredictorConfig(model="toy", layer=3, ranking_id="0123456789abcdef", channels=channels, bits=bits,
                          out_channels=8, in_channels=4, stride=stride, kernel_size=3, padding=1, hidden=8,
                          kind=kind, linear_kernel=kernel, activation_slope=0.1,
                          linear_bits=linear_bits)  # fmt: skip
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    return BafPredictor(cfg, conv.weight, scale, shift, bn.running_mean, std, list(order), directions), bn


def test_inverse_bn_exactly_inverts_bn():
    predictor, bn = make()
    y = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    z = bn.double()(y)
    order = predictor.order
    back = predictor.inverse_bn(z[:, order[:4]])
    torch.testing.assert_close(back, y[:, order[:4]], rtol=0, atol=1e-12)


def test_forward_layer_is_the_frozen_conv_and_bn():
    predictor, bn = make()
    conv = nn.Conv2d(4, 8, 3, 1, 1, bias=False)
    conv.weight.data.copy_(predictor.conv_weight)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(predictor.forward_layer(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["baf", "linear", "hybrid"])
def test_output_shapes(stride, kind):
    predictor, _ = make(stride, kind=kind)
    z = torch.randn(3, 2, 5, 5)
    if kind != "linear":
        assert predictor.backward_input(z, 8).shape == (3, 4, 5 * stride, 5 * stride)
    assert predictor(z, 2).shape == (3, 8, 5, 5)
    assert predictor(torch.randn(3, 4, 5, 5), 8).shape == (3, 8, 5, 5)


def test_unserved_channels_or_bits_rejected():
    predictor, _ = make()
    with pytest.raises(ValueError, match="C=3"):
        predictor(torch.randn(1, 3, 4, 4), 8)
    with pytest.raises(ValueError, match="n=5"):
        predictor(torch.randn(1, 2, 4, 4), 5)


@pytest.mark.parametrize("bits", [2, 8])
def test_restore_clamps_transmitted_channels_into_their_bins(bits):
    predictor, _ = make(bits=(bits,), kind="baf")
    with torch.no_grad():
        for p in predictor.net.parameters():
            p.normal_()  # a poor prediction, so the clamp has work to do
    z = torch.randn(2, 8, 6, 6) * 3
    zc = z[:, predictor.order[:4]]
    qs, los, his = zip(*(ops.quantize(s.numpy().copy(), bits) for s in zc))
    q = torch.from_numpy(np.stack(qs)).int()
    lo = torch.from_numpy(np.stack(los))
    hi = torch.from_numpy(np.stack(his))
    with torch.no_grad():
        out = predictor.restore(q, lo, hi, bits)
    sent = out[:, predictor.order[:4]]
    lo32, step = lo.float()[..., None, None], ((hi.float() - lo.float()) / (2**bits - 1))[..., None, None]
    lower = lo32 + (q.float() - 0.5).clamp(min=0) * step
    upper = lo32 + (q.float() + 0.5).clamp(max=2**bits - 1) * step
    assert bool(((sent >= lower) & (sent <= upper)).all())
    raw = predictor(ops.dequantize_torch(q, lo, hi, bits), bits)
    others = [p for p in range(8) if p not in predictor.order[:4].tolist()]
    torch.testing.assert_close(out[:, others], raw[:, others])


def test_least_squares_fit_recovers_a_linear_map_for_every_c():
    # The non-ranked channels are an exact 3x3 linear function of the first 2 ranked ones: LS must find it for
    # C=2 and (nested) for C=4 from one pass of normal equations.
    predictor, _ = make(kind="linear")
    g = torch.Generator().manual_seed(3)
    idx = predictor.order
    rest = [p for p in range(8) if p not in idx[:2].tolist()]
    z = torch.zeros(16, 8, 6, 6)
    z[:, idx[:2]] = torch.randn(16, 2, 6, 6, generator=g)
    mix = torch.randn(6, 2, 3, 3, generator=g)
    z[:, rest] = torch.nn.functional.conv2d(z[:, idx[:2]], mix, torch.randn(6, generator=g), padding=1)
    samples = fit_linear(predictor, [z[:8], z[8:]], ridge=1e-9)
    assert samples == 16 * 36
    with torch.no_grad():
        for c in (2, 4):
            torch.testing.assert_close(predictor(z[:, idx[:c]], 8), z, rtol=1e-3, atol=1e-3)


def test_hybrid_starts_as_its_linear_path_and_baf_has_none():
    linear, _ = make(kind="linear")
    fit_linear(linear, [torch.randn(8, 8, 6, 6)])
    hybrid, _ = make(kind="hybrid")
    copy_linear(hybrid, linear)
    z = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(hybrid(z, 8), linear(z, 8))
        hybrid.net[-1].bias.add_(1)  # a nonzero residual now changes the output
        assert not torch.allclose(hybrid(z, 8), linear(z, 8))
    assert list(linear.parameters()) == []
    baf, _ = make(kind="baf")
    with pytest.raises(ValueError, match="no linear path"):
        fit_linear(baf, [torch.randn(2, 8, 6, 6)])
    with pytest.raises(ValueError, match="k=5"):
        copy_linear(make(kind="hybrid", kernel=5)[0], linear)
    # A dedicated model (one C) takes its C's fit from a one-for-all source serving more C.
    dedicated, _ = make(kind="hybrid", channels=(2,))
    copy_linear(dedicated, linear)
    torch.testing.assert_close(dedicated.linear_weight_c2, linear.linear_weight_c2, rtol=0, atol=0)
    other, _ = make(kind="hybrid", seed=1)
    with pytest.raises(ValueError, match="different split layers"):
        copy_linear(other, linear)
    with pytest.raises(ValueError, match="kind"):
        make(kind="cubic")


def correlated(n: int = 24, seed: int = 5) -> torch.Tensor:
    """Z [n,8,6,6] whose channels share smooth structure, so the restoring fit depends on how inputs are coded."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(n, 3, 8, 8, generator=g), 3, 1)
    return torch.nn.functional.conv2d(base, torch.randn(8, 3, 1, 1, generator=g)) + 0.1 * torch.randn(n, 8, 6, 6,
                                                                                                          generator=g)


def test_an_n_bit_fit_restores_n_bit_inputs_better_than_the_unquantized_fit():
    from baf.predictor import make_inputs

    predictor, _ = make(kind="linear", linear_bits=(2,))
    z = correlated()
    fit_linear(predictor, [z[:12], z[12:]], ridge=1e-6)
    inputs = make_inputs(z, predictor.basis, 2, 2)
    with torch.no_grad():
        own = float((predictor.linear(inputs, 2) - z).square().mean())
        shared = float((predictor.linear(inputs, None) - z).square().mean())
        assert own < 0.95 * shared  # least squares on the coded inputs it will see (training data: cannot be worse)
        # n=8 has no fit of its own: it uses the unquantized one.
        torch.testing.assert_close(predictor.linear(inputs, 8), predictor.linear(inputs, None))
    assert predictor.linear_names(4, 2) == ("linear_weight_c4_n2", "linear_bias_c4_n2")


def test_normal_equations_take_given_inputs_as_the_cloud_receives_them():
    from baf.predictor import NormalEquations, make_inputs

    predictor, _ = make(kind="linear")
    z = correlated(8)
    own = NormalEquations.for_predictor(predictor.config, 2)
    given = NormalEquations.for_predictor(predictor.config)
    own.add(z, predictor.basis)
    given.add(z, predictor.basis, make_inputs(z, predictor.basis, 4, 2))
    # The same n-bit inputs handed in give the same statistics as the n-bit system makes itself.
    torch.testing.assert_close(given.gram.matrix(), own.gram.matrix())
    torch.testing.assert_close(given.rhs, own.rhs)
    with pytest.raises(ValueError, match="inputs: expected"):
        given.add(z, predictor.basis, z[:, :3])


def test_linear_bits_are_checked_saved_and_copied(tmp_path):
    with pytest.raises(ValueError, match="linear_bits"):
        make(kind="linear", linear_bits=(3,))  # not a served n
    with pytest.raises(ValueError, match="no linear path"):
        make(kind="baf", linear_bits=(2,))
    linear, _ = make(kind="linear", linear_bits=(2,))
    fit_linear(linear, [correlated()])
    save_predictor(linear, tmp_path / "q")
    loaded = load_predictor(tmp_path / "q.json")
    assert loaded.config.linear_bits == (2,)
    torch.testing.assert_close(loaded.linear_weight_c2_n2, linear.linear_weight_c2_n2, rtol=0, atol=0)
    # A hybrid takes the unquantized fit; one that asks for n-bit fits needs a source that has them.
    hybrid, _ = make(kind="hybrid")
    copy_linear(hybrid, linear)
    torch.testing.assert_close(hybrid.linear_weight_c4, linear.linear_weight_c4, rtol=0, atol=0)
    plain, _ = make(kind="linear")
    with pytest.raises(ValueError, match="n-bit fits"):
        copy_linear(make(kind="hybrid", linear_bits=(2,))[0], plain)
    # Checkpoints from before per-n fits (no linear_bits in the sidecar) load unchanged.
    save_predictor(plain, tmp_path / "old")
    side = json.loads((tmp_path / "old.json").read_text())
    del side["linear_bits"]
    (tmp_path / "old.json").write_text(json.dumps(side))
    assert load_predictor(tmp_path / "old.json").config == plain.config


def test_checkpoint_round_trip(tmp_path):
    predictor, _ = make()
    save_predictor(predictor, tmp_path / "toy", {"train": {"steps": 3}})
    loaded = load_predictor(tmp_path / "toy.json", model="toy", layer=3, ranking_id="0123456789abcdef")
    assert loaded.config == predictor.config
    for k, v in predictor.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    assert json.loads((tmp_path / "toy.json").read_text())["train"]["steps"] == 3


def test_checkpoint_tamper_and_identity_detected(tmp_path):
    predictor, _ = make()
    weights = save_predictor(predictor, tmp_path / "toy")
    with pytest.raises(CheckpointError, match="layer 3, expected 4"):
        load_predictor(weights, layer=4)
    with pytest.raises(CheckpointError, match="ranking_id"):
        load_predictor(weights, ranking_id="ffffffffffffffff")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_predictor(weights)
    side = tmp_path / "toy.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "format": "other/9"}))
    with pytest.raises(CheckpointError, match="format 'other/9'"):
        load_predictor(side)


def test_checkpoint_with_wrong_tensors_rejected(tmp_path):
    predictor, _ = make()
    save_predictor(predictor, tmp_path / "toy")
    side = tmp_path / "toy.json"
    data = json.loads(side.read_text())
    data["hidden"] = 16  # the sidecar now describes another network than the weights hold
    side.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_predictor(side)


def test_record_eval_only_for_the_scored_weights(tmp_path):
    predictor, _ = make()
    save_predictor(predictor, tmp_path / "toy")
    loaded = load_predictor(tmp_path / "toy.json")
    entry = {"dataset": "val", "channels": 4, "bits": 8, "AP50": 0.5}
    record_eval(tmp_path / "toy.json", str(loaded.source_sha256), entry)
    record_eval(tmp_path / "toy.json", str(loaded.source_sha256), {**entry, "AP50": 0.6})
    assert json.loads((tmp_path / "toy.json").read_text())["eval"] == [{**entry, "AP50": 0.6}]
    load_predictor(tmp_path / "toy.json")  # the sidecar stays valid
    with torch.no_grad():
        predictor.net[0].bias.add_(1)
    save_predictor(predictor, tmp_path / "toy")  # weights replaced after scoring
    with pytest.raises(CheckpointError, match="changed"):
        record_eval(tmp_path / "toy.json", str(loaded.source_sha256), entry)


def test_z_transform_keeps_shape_and_uses_ranked_channels():
    predictor, _ = make(bits=(8,))
    z = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        out = z_transform(predictor, 4, 8)(z)
    assert out.shape == z.shape
    sent = predictor.order[:4]
    step = (z[:, sent].amax((2, 3)) - z[:, sent].amin((2, 3))) / 255
    assert bool(((out[:, sent] - z[:, sent]).abs() <= step[..., None, None] * 0.5 + 1e-2).all())


def virtual(kind: str = "linear", bits=(2, 8)) -> BafPredictor:
    """A predictor whose sent rows are channel 7, a virtual row, channel 5, a virtual row."""
    directions = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    return make(kind=kind, bits=bits, order=(7, VIRTUAL, 5, VIRTUAL, 3, 2, 1, 0), directions=directions)[0]


def test_virtual_rows_are_restored_from_and_only_ranked_rows_clamped(tmp_path):
    predictor = virtual()
    z = correlated()
    fit_linear(predictor, [z[:12], z[12:]], ridge=1e-6)
    basis = predictor.basis
    sent = basis.send(z[:2])
    torch.testing.assert_close(sent[:, 1], torch.einsum("p,bphw->bhw", predictor.directions[0], z[:2]))
    q, lo, hi = ops.quantize_torch(sent.contiguous(), 2)
    with torch.no_grad():
        free = predictor(ops.dequantize_torch(q, lo, hi, 2), 2)
        out = predictor.restore(q, lo, hi, 2)
    clamped = ops.clamp_to_bins_torch(free[:, [7, 5]].contiguous(), q[:, [0, 2]], lo[:, [0, 2]], hi[:, [0, 2]], 2)
    torch.testing.assert_close(out[:, [7, 5]], clamped)  # eq. 6 on the two ranked rows
    others = [p for p in range(8) if p not in (7, 5)]
    torch.testing.assert_close(out[:, others], free[:, others])  # nothing clamps a channel through a virtual row
    # The fit at C=4 restores from the virtual rows too: better than from its two ranked rows alone (fit data).
    with torch.no_grad():
        only_ranked = make(kind="linear", order=(7, 5, 6, 4, 3, 2, 1, 0))[0]
        fit_linear(only_ranked, [z[:12], z[12:]], ridge=1e-6)
        with_virtual = float((predictor(basis.send(z, 4), 8) - z).square().mean())
        assert with_virtual < 0.9 * float((only_ranked(z[:, [7, 5]], 8) - z).square().mean())
    # The directions are part of the checkpoint and of its split digest.
    save_predictor(predictor, tmp_path / "v")
    loaded = load_predictor(tmp_path / "v.json")
    assert torch.equal(loaded.directions, predictor.directions) and loaded.split_digest() == predictor.split_digest()
    with torch.no_grad():
        torch.testing.assert_close(loaded.restore(q, lo, hi, 2), out)
        out_t = z_transform(loaded, 4, 8)(z[:2])
    assert out_t.shape == z[:2].shape


def test_network_kinds_refuse_virtual_rows():
    for kind in ("baf", "hybrid"):
        with pytest.raises(ValueError, match="cannot take virtual channels"):
            virtual(kind)
    with pytest.raises(ValueError, match="directions: expected shape"):
        make(kind="linear", order=(7, VIRTUAL, 5, 4, 3, 2, 1, 0))
