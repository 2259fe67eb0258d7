"""The requantization rule against exact rational arithmetic."""
from fractions import Fraction
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hwq.arch.requant import (ROUND_MODES, SLOPE_ONE, quantize_float, relu_clamp,
                                        requantize, round_shift)

INT32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
SHIFTS = st.integers(-8, 31)
MODES = st.sampled_from(sorted(ROUND_MODES))


def ref_round(v: Fraction, mode: str) -> int:
    """Round a rational to an integer, ties broken by `mode`, by definition."""
    floor = math.floor(v)
    frac = v - floor
    if frac != Fraction(1, 2):
        return floor + (frac > Fraction(1, 2))
    return {"half_up": floor + 1, "half_down": floor,
            "half_even": floor + (floor % 2), "std_round": floor + (v > 0)}[mode]


def ref_requantize(acc: int, shift: int, mode: str, lo: int, hi: int) -> int:
    return min(hi, max(lo, ref_round(Fraction(acc) / Fraction(2) ** shift, mode)))


@pytest.mark.parametrize("mode", sorted(ROUND_MODES))
def test_round_shift_exhaustive_small(mode):
    x = np.arange(-1024, 1025)
    for shift in range(-3, 8):
        want = [ref_round(Fraction(int(v)) / Fraction(2) ** shift, mode) for v in x]
        assert round_shift(x, shift, mode).tolist() == want, shift


@pytest.mark.parametrize("mode", sorted(ROUND_MODES))
@given(k=st.integers(-(2 ** 20), 2 ** 20), shift=st.integers(1, 31))
def test_round_shift_ties(mode, k, shift):
    tie = (2 * k + 1) << (shift - 1)  # exactly halfway between two integers after the shift
    assert int(round_shift(tie, shift, mode)) == ref_round(Fraction(tie, 2 ** shift), mode)


def test_tie_directions():
    assert [int(round_shift(v, 1, "half_up")) for v in (5, -5, 3, -3)] == [3, -2, 2, -1]
    assert [int(round_shift(v, 1, "half_down")) for v in (5, -5, 3, -3)] == [2, -3, 1, -2]
    assert [int(round_shift(v, 1, "half_even")) for v in (5, -5, 3, -3)] == [2, -2, 2, -2]
    assert [int(round_shift(v, 1, "std_round")) for v in (5, -5, 3, -3)] == [3, -3, 2, -2]


@settings(max_examples=300)
@given(acc=INT32, shift=SHIFTS, mode=MODES, act=st.sampled_from(["none", "relu", "relu6"]),
       f_out=st.integers(-4, 10), narrow=st.booleans())
def test_requantize_matches_reference(acc, shift, mode, act, f_out, narrow):
    lo, hi = relu_clamp(act, f_out, narrow)
    got = requantize(np.array([acc]), shift, mode, lo, hi)
    assert got.dtype == np.int8
    assert int(got[0]) == ref_requantize(acc, shift, mode, lo, hi)


@settings(max_examples=300)
@given(acc=INT32, shift=st.integers(-32, 31), mode=MODES, slope=st.integers(0, 511),
       lo=st.integers(-128, 0), hi=st.integers(0, 127))
def test_requantize_leaky_slope(acc, shift, mode, slope, lo, hi):
    """LeakyReLU: a negative sum is scaled by slope / 256 exactly, then rounded once by
    `mode`; a non-negative one is untouched (SLOPE_ONE: no slope at all)."""
    x = Fraction(acc) * (Fraction(slope, SLOPE_ONE) if acc < 0 else 1)
    want = min(hi, max(lo, ref_round(x / Fraction(2) ** shift, mode)))
    assert int(requantize(np.array([acc]), shift, mode, lo, hi, slope)[0]) == want
    if acc >= 0 or slope == SLOPE_ONE:
        assert int(requantize(np.array([acc]), shift, mode, lo, hi)[0]) == want


def test_relu_clamp():
    assert relu_clamp("none", 5) == (-128, 127)
    assert relu_clamp("none", 5, narrow_range=True) == (-127, 127)
    assert relu_clamp("relu", 5) == (0, 127)
    assert relu_clamp("relu6", 4) == (0, 96)   # 6.0 at scale 2**-4
    assert relu_clamp("relu6", 5) == (0, 127)  # 6.0 is beyond the int8 range there


def ref_quantize_float(x: np.float32, fix: int, mode: str, lo: int, hi: int) -> int:
    return min(hi, max(lo, ref_round(Fraction(float(x)) * Fraction(2) ** fix, mode)))


FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(x=FLOAT32, fix=st.integers(-8, 16), mode=MODES)
def test_quantize_float_int8(x, fix, mode):
    got = quantize_float(np.float32(x), fix, mode)
    assert got.dtype == np.int8
    assert int(got) == ref_quantize_float(np.float32(x), fix, mode, -128, 127)


@settings(max_examples=300)
@given(x=FLOAT32, fix=st.integers(-8, 24), mode=MODES)
def test_quantize_float_int32(x, fix, mode):
    lo, hi = -(2 ** 31), 2 ** 31 - 1
    got = quantize_float(np.float32(x), fix, mode, lo, hi, dtype=np.int32)
    assert int(got) == ref_quantize_float(np.float32(x), fix, mode, lo, hi)


@pytest.mark.parametrize("mode", sorted(ROUND_MODES))
@given(k=st.integers(-300, 300), fix=st.integers(-4, 12))
def test_quantize_float_ties(mode, k, fix):
    x = np.float32((k + 0.5) * 2.0 ** -fix)  # exactly halfway at scale 2**-fix
    assert int(quantize_float(x, fix, mode)) == ref_quantize_float(x, fix, mode, -128, 127)
