"""The requantization rule, defined once (DESIGN.md rule 2).

Every implementation of the arithmetic -- fake-quant in calibration, the golden model,
the ISS -- calls these functions, and the RTL post-processing unit is tested against
them. Integer NumPy decides every rounding.
"""
from __future__ import annotations

import numpy as np


try:  # np.clip's ufunc, without the wrapper's per-call argument checks (~5 us)
    from numpy._core.umath import clip as _clip
except ImportError:  # NumPy 1.x
    from numpy.core.umath import clip as _clip
if not isinstance(_clip, np.ufunc):
    _clip = np.clip

# LeakyReLU's slope is applied on the int accumulator as alpha_q / 2**ALPHA_BITS (the DPU
# uses 26/256 for 0.1).
ALPHA_BITS = 8
# Vitis AI names; the code is what the POST instruction's `round` field carries.
ROUND_MODES = {"half_up": 0, "half_even": 1, "half_down": 2, "std_round": 3}
INT8_MIN, INT8_MAX = -128, 127
UINT8_MAX = 255


def code_dtype(hi: int):
    """The 8-bit type of an output clamped to [lo, hi]: uint8 when hi > 127 (an unsigned
    activation, lo >= 0), else int8. Either way the byte is the clamped value's low 8 bits,
    which is what POST stores."""
    return np.uint8 if hi > INT8_MAX else np.int8


def code_max(unsigned: bool) -> int:
    """The largest code of an activation: 255 stored as uint8, 127 as int8."""
    return UINT8_MAX if unsigned else INT8_MAX


def code_magnitude(unsigned: bool) -> int:
    """The largest |code| an activation feeds a multiplier: 255 as uint8, 128 (-128) as
    int8; the accumulator bounds rest on it."""
    return UINT8_MAX if unsigned else -INT8_MIN


def round_shift(x, shift: int, mode: str) -> np.ndarray:
    """x / 2**shift rounded to an integer by `mode`; a negative shift multiplies.

    half_up   : ties toward +inf  (the DPU's (x + 2**(s-1)) >> s)
    half_even : ties to the even neighbour
    half_down : ties toward -inf
    std_round : ties away from zero
    """
    if mode not in ROUND_MODES:
        raise ValueError(f"unknown round mode {mode!r}; choose one of {', '.join(ROUND_MODES)}")
    x = np.asarray(x, dtype=np.int64)
    if shift <= 0:
        return x << -shift
    floor = x >> shift
    rem = x & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if mode == "half_up":
        up = rem >= half
    elif mode == "half_down":
        up = rem > half
    elif mode == "half_even":
        up = (rem > half) | ((rem == half) & (floor & 1 == 1))
    else:  # std_round
        up = (rem > half) | ((rem == half) & (x >= 0))
    return floor + up


SLOPE_ONE = 1 << ALPHA_BITS     # a slope of 1: no LeakyReLU


def apply_slope(acc, slope: int) -> np.ndarray:
    """LeakyReLU on the accumulator, ahead of a shift ALPHA_BITS longer: negative sums
    times slope (the negative slope is slope / 2**ALPHA_BITS), the others times
    2**ALPHA_BITS. Scaling both sides keeps one rounding, after the slope (as the DPU)."""
    acc = np.asarray(acc, dtype=np.int64)
    return np.where(acc < 0, acc * np.int64(slope), acc << ALPHA_BITS)


def requantize(acc, shift: int, mode: str, lo: int = INT8_MIN, hi: int = INT8_MAX,
               slope: int = SLOPE_ONE) -> np.ndarray:
    """int32 accumulator (bias already added) -> int8 or uint8 (`code_dtype`): LeakyReLU's
    slope (`apply_slope`; SLOPE_ONE is none), shift with rounding, then clamp to [lo, hi].
    ReLU is lo=0; ReLU6 is hi=min(127, 6 * 2**f_out), or min(255, ...) for a uint8 output;
    narrow range is lo=-127. With slope SLOPE_ONE the slope step changes nothing:
    round_shift(x << A, s + A) == round_shift(x, s)."""
    if slope != SLOPE_ONE:
        acc, shift = apply_slope(acc, slope), shift + ALPHA_BITS
    if shift < 0:   # a left shift saturates anyway; the clip keeps the int64 exact
        acc = np.clip(acc, -(1 << 8), 1 << 8)
    return np.clip(round_shift(acc, shift, mode), lo, hi).astype(code_dtype(hi))


_FRAC_BITS = 30


def quantize_float(x, fix: int, mode: str, lo: int = INT8_MIN, hi: int = INT8_MAX,
                   dtype=None) -> np.ndarray:
    """Float tensor -> integers in [lo, hi] at scale 2**-fix (weights, bias, the network
    input, an activation's codes), as `dtype` (by default `code_dtype(hi)`).

    The value is made an exact integer multiple of 2**-30 and rounded by `round_shift`, so
    floats obey the same tie rules as accumulators. Exactness: inputs are float32 (24-bit
    mantissa); values under 0.25 in magnitude round to 0 in every mode and are zeroed
    first, and every larger one has no bits below 2**-25.
    """
    v = np.asarray(x, dtype=np.float32).astype(np.float64) * np.ldexp(1.0, fix)
    v = np.where(np.abs(v) < 0.25, 0.0, v)
    v = np.clip(v, -(2.0 ** 31), 2.0 ** 31)  # saturates anyway; keeps the int64 exact
    fixed = (v * np.ldexp(1.0, _FRAC_BITS)).astype(np.int64)
    return np.clip(round_shift(fixed, _FRAC_BITS, mode), lo, hi).astype(dtype or code_dtype(hi))


def relu_clamp(act: str, f_out: int, narrow_range: bool = False,
               unsigned: bool = False) -> tuple[int, int]:
    """The [lo, hi] an activation imposes on an output at fix position f_out: an int8
    one, or with `unsigned` a uint8 one (a tensor that is never negative: a ReLU's, or a
    pool's of one), whose codes run to 255."""
    top = code_max(unsigned)
    if unsigned:
        if act not in ("none", "relu", "relu6"):
            raise ValueError(f"a {act} output can be negative; it cannot be stored unsigned")
        lo = 0
    else:
        lo = -127 if narrow_range else INT8_MIN
    if act in ("none", "leaky_relu"):  # LeakyReLU's slope acts on the accumulator
        return lo, top
    if act == "relu":
        return 0, top
    if act == "relu6":
        return 0, int(min(top, 6 * 2.0 ** f_out))
    raise ValueError(f"unknown activation {act!r}")


def requantize_fast(acc, shifts, mode: str, lo: int = INT8_MIN, hi: int = INT8_MAX, offset=0,
                    out: np.ndarray | None = None) -> np.ndarray:
    """requantize(acc + offset, ...) in few int64 passes (the golden model's path where a
    layer's constants are not kept): the same values for |acc + offset| < 2**62,
    written into `out` (int8 or uint8) when given; `shifts` and `offset` are ints or arrays
    broadcast against `acc` (one per channel, last axis)."""
    return Requantizer(shifts, mode, lo, hi, offset)(acc, out)


class Requantizer:
    """requantize(acc + offset, shifts, mode, lo, hi) with its constants made once, for
    accumulators requantized again and again with the same shifts and offset (a golden
    model's layer): the same int8 values. `shifts` and `offset` are ints or arrays
    broadcast against `acc` along its last axis.

    `bound` is a bound on |acc| the caller guarantees (None: |acc + offset| < 2**62). When
    |acc| + |offset| plus the rounding constant (at most 2**(s-1)), and |acc + offset|
    shifted left by a negative shift, stay below 2**31, every sum is exact in int32 and the
    arithmetic runs in int32 (half the bytes of int64); else in int64, as requantize_fast.
    `acc` may be integers or floats holding integers exactly (a float GEMM's sums): the
    first pass converts them. Half_up and half_down are then three passes (convert and add
    the constant, shift, clamp into int8).

    Every mode is one added constant and one arithmetic right shift. With
    x = q * 2**s + r (0 <= r < 2**s) and h = 2**(s-1), (x + b) >> s = q + (r + b >= 2**s),
    so `up` in round_shift is r + b >= 2**s for b = h (half_up: r >= h), b = h - 1
    (half_down: r > h), b = h - 1 + (q & 1) (half_even: r > h, or r == h and q odd) and
    b = h - (x < 0) (std_round: r >= h for x >= 0, r > h for x < 0). b <= h < 2**62, so
    x + b does not overflow int64; a shift <= 0 is round_shift's left shift, with b = 0.
    tests/test_quant_golden.py checks it against requantize for every mode.
    """

    def __init__(self, shifts, mode: str, lo: int = INT8_MIN, hi: int = INT8_MAX, offset=0,
                 bound: int | None = None):
        if mode not in ROUND_MODES:
            raise ValueError(f"unknown round mode {mode!r}; choose one of {', '.join(ROUND_MODES)}")
        s = np.asarray(shifts, dtype=np.int64)
        off = np.asarray(offset, dtype=np.int64)
        right, left = np.maximum(s, 0), np.maximum(-s, 0)
        half = (1 << right) >> 1
        dtype = np.int64
        if bound is not None:
            top = int(bound) + int(np.abs(off).max(initial=0))      # |acc + offset| <= top
            if top + int(half.max(initial=0)) < 1 << 31 and top << int(left.max(initial=0)) < 1 << 31:
                dtype = np.int32
        self.mode, self.lo, self.hi, self.dtype = mode, lo, hi, dtype
        if mode == "half_up":
            add = off + half
        elif mode == "half_down":
            add = off + np.maximum(half - 1, 0)
        else:
            add = off
        # right shifts by 0 are skipped, left ones only if there are any
        self.add = add.astype(dtype) if add.ndim else (dtype(add) if add else None)
        self.right = (right.astype(dtype) if right.ndim else int(right)) if np.any(right) else None
        self.left = (left.astype(dtype) if left.ndim else int(left)) if np.any(left) else None
        if mode == "half_even":
            self.round = (np.maximum(half - 1, 0).astype(dtype), (right > 0).astype(dtype),
                          right.astype(dtype))
        elif mode == "std_round":
            self.round = (half.astype(dtype), (right > 0).astype(dtype))

    def __call__(self, acc, out: np.ndarray | None = None) -> np.ndarray:
        """The int8 (or uint8: `code_dtype`) values of acc, written into `out` when given."""
        acc = np.asarray(acc)
        y = acc.astype(self.dtype)            # always a new array, then worked on in place
        if self.add is not None:
            np.add(y, self.add, out=y)
        if self.mode == "half_even":         # + 2**(s-1) - 1 + (odd floor), where s > 0
            c, shifted, right = self.round
            y += c + ((y >> right) & 1) * shifted
        elif self.mode == "std_round":       # + 2**(s-1) - (y < 0), where s > 0
            c, shifted = self.round
            y += c - (y < 0) * shifted
        if self.left is not None:           # saturates anyway; the clip keeps the int64 exact
            _clip(y, -(1 << 8), 1 << 8, out=y, where=np.asarray(self.left) > 0)
            np.left_shift(y, self.left, out=y)
        if self.right is not None:
            np.right_shift(y, self.right, out=y)
        if out is None:
            out = np.empty(y.shape, code_dtype(self.hi))
        return _clip(y, self.lo, self.hi, out=out, casting="unsafe")
