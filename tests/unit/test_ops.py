"""baf.ops against the NumPy reference of the paper's equations, plus its properties and errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from baf import ops
from tests import reference_ops as ref

F32_EPS = float(np.finfo(np.float32).eps)


@st.composite
def tensors(draw, max_side: int = 9, max_channels: int = 19) -> np.ndarray:
    """[C,H,W] float32 with a per-tensor magnitude from tiny (fp16 subnormal) to huge (near 65504)."""
    shape = draw(array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=max_side))
    shape = (draw(st.integers(1, max_channels)),) + shape[1:]
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 37.5, 1e3, 3e4]))
    unit = draw(arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
    z = (unit * np.float32(scale)).astype(np.float32)
    if draw(st.booleans()):  # some constant channels
        z[:: draw(st.integers(1, 3))] = z.flat[0]
    return z


bits_st = st.integers(1, 16)


@settings(deadline=None, max_examples=300)
@given(z=tensors(), bits=bits_st)
def test_quantize_matches_reference(z, bits):
    q, lo, hi = ops.quantize(z, bits)
    q_ref, lo_ref, hi_ref = ref.quantize(z, bits)
    assert q.dtype == q_ref.dtype and lo.dtype == np.float16 and hi.dtype == np.float16
    np.testing.assert_array_equal(lo, lo_ref)
    np.testing.assert_array_equal(hi, hi_ref)
    # Same float32 operations in the same order: no rounding ties to excuse, so exact.
    np.testing.assert_array_equal(q, q_ref)


@settings(deadline=None, max_examples=200)
@given(z=tensors(), bits=bits_st)
def test_dequantize_matches_reference_and_error_is_half_a_step(z, bits):
    q, lo, hi = ops.quantize(z, bits)
    z_hat = ops.dequantize(q, lo, hi, bits)
    np.testing.assert_array_equal(z_hat, ref.dequantize(q, lo, hi, bits))
    l, h = lo.astype(np.float64), hi.astype(np.float64)
    step = (h - l) / (2**bits - 1)
    fp16_rounding = np.maximum(np.abs(l - z.min(axis=(1, 2))), np.abs(h - z.max(axis=(1, 2))))
    float32_slack = 8 * F32_EPS * np.maximum(np.abs(l), np.abs(h))
    bound = (step / 2 + fp16_rounding + float32_slack)[:, None, None]
    assert np.all(np.abs(z_hat.astype(np.float64) - z) <= bound)


@settings(deadline=None, max_examples=200)
@given(z=tensors(), bits=bits_st, data=st.data())
def test_clamp_to_bins_properties(z, bits, data):
    q, lo, hi = ops.quantize(z, bits)
    noise = data.draw(arrays(np.float32, z.shape, elements=st.floats(-3, 3, width=32)))
    spread = np.float32(max(float(np.abs(z).max()), 1e-6))
    pred = (z + noise * spread).astype(np.float32)
    out = ops.clamp_to_bins(pred, q, lo, hi, bits)
    np.testing.assert_array_equal(out, ref.clamp_to_bins(pred, q, lo, hi, bits))
    lower, upper = ref.bin_bounds(q, lo, hi, bits)
    assert np.all((lower <= out) & (out <= upper)), "every element lands in its bin"
    np.testing.assert_array_equal(ops.clamp_to_bins(out, q, lo, hi, bits), out)  # idempotent
    inside = (lower <= pred) & (pred <= upper)
    np.testing.assert_array_equal(out[inside], pred[inside])  # in-bin values untouched


@settings(deadline=None, max_examples=200)
@given(
    q=arrays(
        st.sampled_from([np.uint8, np.uint16]),
        array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=7),
    ),
    channels=st.integers(1, 70),
)
def test_tile_places_channels_on_the_grid_and_untile_inverts_it(q, channels):
    q = np.resize(q, (channels,) + q.shape[1:])  # C not a power of two, too
    image = ops.tile(q)
    np.testing.assert_array_equal(image, ref.tile(q))
    np.testing.assert_array_equal(ops.untile(image, *q.shape), q)


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 8, 16, 31, 32, 64, 100, 128, 256, 257])
def test_grid_follows_the_paper(channels):
    assert ops.grid(channels) == ref.grid(channels)


def test_paper_grids_for_powers_of_two():
    assert [ops.grid(c) for c in (8, 16, 32, 64, 128)] == [(2, 4), (4, 4), (4, 8), (8, 8), (8, 16)]


def test_constant_channel_gives_zero_and_comes_back_exactly():
    z = np.full((3, 4, 5), 1.5, np.float32)
    q, lo, hi = ops.quantize(z, 8)
    assert not q.any()
    np.testing.assert_array_equal(ops.dequantize(q, lo, hi, 8), z)


@pytest.mark.parametrize(
    "value, half",
    [
        (65504.0, 65504.0),  # largest float16
        (65519.0, 65504.0),  # rounds down to it
        (1.0009765625 + 2**-11, 1.001953125),  # a tie goes to the even mantissa
        (2.0**-24, 2.0**-24),  # smallest subnormal
        (2.0**-25, 0.0),  # tie between 0 and the smallest subnormal: even is 0
        (6.1e-5, np.float16(6.1e-5)),  # just below the smallest normal
    ],
)
def test_side_info_rounds_like_numpy_float16(value, half):
    z = np.array([[[0.0, value]]], np.float32)
    _, lo, hi = ops.quantize(z, 8)
    assert hi[0] == np.float16(half) == np.float32(value).astype(np.float16)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    z = np.zeros((4, 3, 3), np.float32)
    z[2, 1, 1] = bad
    with pytest.raises(ValueError, match=r"^z: channel 2 contains NaN or infinity"):
        ops.quantize(z, 8)


def test_values_beyond_float16_are_refused():
    z = np.zeros((2, 2, 2), np.float32)
    z[1, 0, 0] = -70000.0
    with pytest.raises(ValueError, match=r"^z: channel 1 exceeds the float16 range"):
        ops.quantize(z, 8)


def _valid(bits: int = 8):
    z = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    q, lo, hi = ops.quantize(z, bits)
    return z, q, lo, hi


BAD_CALLS = [
    ("z", lambda z, q, lo, hi: ops.quantize(z.astype(np.float64), 8)),
    ("z", lambda z, q, lo, hi: ops.quantize(z[0], 8)),
    ("z", lambda z, q, lo, hi: ops.quantize(z[:, :, ::2], 8)),
    ("z", lambda z, q, lo, hi: ops.quantize(z[:0], 8)),
    ("bits", lambda z, q, lo, hi: ops.quantize(z, 0)),
    ("bits", lambda z, q, lo, hi: ops.quantize(z, 17)),
    ("bits", lambda z, q, lo, hi: ops.quantize(z, 8.0)),
    ("bits", lambda z, q, lo, hi: ops.quantize(z, True)),
    ("q", lambda z, q, lo, hi: ops.dequantize(q.astype(np.uint16), lo, hi, 8)),
    ("q", lambda z, q, lo, hi: ops.dequantize(q, lo, hi, 4)),
    ("lo", lambda z, q, lo, hi: ops.dequantize(q, lo[:3], hi, 8)),
    ("lo", lambda z, q, lo, hi: ops.dequantize(q, lo.astype(np.float32), hi, 8)),
    ("hi", lambda z, q, lo, hi: ops.dequantize(q, lo, lo - np.float16(1), 8)),
    ("hi", lambda z, q, lo, hi: ops.dequantize(q, lo, np.full_like(hi, np.inf), 8)),
    ("bits", lambda z, q, lo, hi: ops.dequantize(q, lo, hi, "8")),
    ("pred", lambda z, q, lo, hi: ops.clamp_to_bins(z[:, :2].copy(), q, lo, hi, 8)),
    ("pred", lambda z, q, lo, hi: ops.clamp_to_bins(np.full_like(z, np.nan), q, lo, hi, 8)),
    ("q", lambda z, q, lo, hi: ops.clamp_to_bins(z, q.astype(np.int8), lo, hi, 8)),
    ("q", lambda z, q, lo, hi: ops.tile(q.astype(np.float32))),
    ("image", lambda z, q, lo, hi: ops.untile(ops.tile(q), 5, 3, 5)),
    ("image", lambda z, q, lo, hi: ops.untile(ops.tile(q).astype(np.int32), 4, 3, 5)),
    ("channels", lambda z, q, lo, hi: ops.untile(ops.tile(q), 0, 3, 5)),
    ("width", lambda z, q, lo, hi: ops.untile(ops.tile(q), 4, 3, 5.0)),
    ("channels", lambda z, q, lo, hi: ops.grid(-1)),
]


@pytest.mark.parametrize("name, call", BAD_CALLS)
def test_bad_arguments_raise_value_error_naming_them(name, call):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        call(*_valid())


@pytest.mark.parametrize("bits", [1, 4, 8, 10, 16])
def test_torch_kernels_equal_native_on_cpu(bits):
    rng = np.random.default_rng(bits)
    zs = [(rng.standard_normal((6, 5, 7)) * 10**k).astype(np.float32) for k in (-3, 0, 3)]
    quantized = [ops.quantize(z, bits) for z in zs]
    q, lo, hi = (torch.from_numpy(np.stack(parts).astype(np.int32)) for parts in zip(*quantized))
    lo, hi = (torch.from_numpy(np.stack([x[i] for x in quantized])) for i in (1, 2))
    pred = torch.from_numpy(np.stack(zs) + rng.standard_normal((3, 6, 5, 7)).astype(np.float32))

    z_hat = ops.dequantize_torch(q, lo, hi, bits)
    clamped = ops.clamp_to_bins_torch(pred, q, lo, hi, bits)
    for i, (qi, loi, hii) in enumerate(quantized):
        np.testing.assert_array_equal(z_hat[i].numpy(), ops.dequantize(qi, loi, hii, bits))
        np.testing.assert_array_equal(clamped[i].numpy(), ops.clamp_to_bins(pred[i].numpy(), qi, loi, hii, bits))


@pytest.mark.parametrize(
    "name, call",
    [
        ("bits", lambda q, lo: ops.dequantize_torch(q, lo, lo, 0)),
        ("q", lambda q, lo: ops.dequantize_torch(q.float(), lo, lo, 8)),
        ("q", lambda q, lo: ops.dequantize_torch(q[0, 0], lo, lo, 8)),
        ("lo", lambda q, lo: ops.dequantize_torch(q, lo[:1], lo, 8)),
        ("pred", lambda q, lo: ops.clamp_to_bins_torch(q[:, :1].float(), q, lo, lo, 8)),
    ],
)
def test_torch_kernels_refuse_bad_arguments(name, call):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        call(torch.zeros((2, 3, 4, 4), dtype=torch.uint8), torch.zeros((2, 3), dtype=torch.float16))
