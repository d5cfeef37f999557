"""Bjøntegaard delta rate (baf.rate.bd_rate) on curves whose answer is known in closed form."""

from __future__ import annotations

import math

import pytest

from baf.rate import bd_rate

# log(rate) exactly cubic in quality, so the fit is exact.
REFERENCE = [(math.exp(2 + 5 * q - 3 * q**2 + 4 * q**3), q) for q in (0.1, 0.2, 0.3, 0.4, 0.5)]


@pytest.mark.parametrize("factor", [0.5, 0.1, 1.0, 1.3])
def test_a_constant_rate_factor_is_the_bd_rate(factor):
    test = [(rate * factor, q) for rate, q in REFERENCE]
    assert bd_rate(REFERENCE, test) == pytest.approx(factor - 1, abs=1e-9)


def test_only_the_shared_quality_range_counts():
    # Halved rates on [0.2, 0.4] and nothing elsewhere: still -50%.
    test = [(rate / 2, q) for rate, q in REFERENCE[1:4]]
    # pchip through 3 of the 5 points is not quite the interpolant through all 5: close, not exact.
    assert bd_rate(REFERENCE, test) == pytest.approx(-0.5, abs=1e-4)


def test_dominated_points_do_not_move_the_bd_rate():
    # Extra bytes for no extra quality (a saturated curve) leave the curve, and its BD-rate, as they were.
    test = [(rate / 2, q) for rate, q in REFERENCE]
    saturated = [*test, (test[-1][0] * 3, test[-1][1]), (test[-1][0] * 9, test[-1][1] - 0.01)]
    assert bd_rate(REFERENCE, saturated) == pytest.approx(-0.5, abs=1e-9)


def test_a_curve_that_flattens_gets_a_bounded_bd_rate():
    # Measured once: AP50 flat from n=6 to n=8 made the global cubic of VCEG-M33 report +2.5e38 %.
    flat = [(6097, 0.2781), (17290, 0.3899), (31054, 0.4049), (46121, 0.4052)]
    reference = [(4746, 0.3012), (7478, 0.3568), (11967, 0.4094), (19291, 0.4259)]
    assert 0 < bd_rate(reference, flat) < 2  # more bytes than the reference at every shared AP50, not 1e36 times


def test_a_curve_shifted_up_in_quality_needs_fewer_bytes():
    # Same rates at +0.05 quality: at equal quality the test curve spends less.
    test = [(rate, q + 0.05) for rate, q in REFERENCE]
    assert bd_rate(REFERENCE, test) < 0


def test_disjoint_quality_ranges_have_no_bd_rate():
    test = [(rate, q + 1) for rate, q in REFERENCE]
    assert bd_rate(REFERENCE, test) is None


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate(REFERENCE, [(100.0, 0.3)])
    with pytest.raises(ValueError, match="> 0"):
        bd_rate(REFERENCE, [(0.0, 0.3), (10.0, 0.4)])
