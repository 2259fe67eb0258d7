"""Calibration methods: the power-of-two fix position a tensor gets, as Vitis AI names them,
and how the fix positions of several calibration batches combine.

Every method returns f, the tensor's scale being 2**-f; its codes run to `hi` (127 for
int8, 255 for a uint8 activation). maxmin, percentile and entropy
pick a threshold T and take the finest f at which T does not clip; mse and diffs try
the fix positions from the max-min one up (each clipping more, rounding finer) and keep
the one with the smallest error of the fake-quantized tensor (mse: squared error of the
tensor; diffs: mean absolute difference of the layer's output).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from hwq.arch.requant import INT8_MAX, quantize_float

# A tensor that is zero on the whole calibration set can take any fix position; this one
# gives it the range [-1, 1), the usual range of normalised data.
ZERO_RANGE_FIX = 7
# mse and diffs try f0 .. f0 + SEARCH_SPAN: beyond 4 more bits the clipped mass dominates.
SEARCH_SPAN = 4
# TensorRT's entropy calibration: a 2048-bin histogram of |x|, 128 quantized levels; the
# candidate thresholds step by KL_STRIDE bins to keep calibration fast.
KL_BINS, KL_LEVELS, KL_STRIDE = 2048, 128, 16


def fix_position(absmax: float, hi: int = INT8_MAX) -> int:
    """The largest f with absmax * 2**f <= hi: the finest power-of-two scale at which
    the calibrated range does not clip."""
    if absmax == 0:
        return ZERO_RANGE_FIX
    f = math.floor(math.log2(hi / absmax))
    # log2 of a float quotient can land on the wrong side of an exact power of two
    while absmax * 2.0 ** (f + 1) <= hi:
        f += 1
    while absmax * 2.0 ** f > hi:
        f -= 1
    return f


def fake_quant(x: np.ndarray, f: int, round_mode: str, lo: int, hi: int = INT8_MAX) -> np.ndarray:
    """x quantized to codes lo..hi at fix f (by the one rounding rule) and back to float64."""
    return np.ldexp(quantize_float(x, f, round_mode, lo, hi).astype(np.float64), -f)


def kl_threshold(a: np.ndarray, bins: int = KL_BINS, levels: int = KL_LEVELS,
                 stride: int = KL_STRIDE) -> float:
    """TensorRT's entropy threshold of the magnitudes `a`: the clipping point whose
    `levels`-level quantization of the histogram diverges least (KL) from the histogram
    with everything beyond the point folded into its last bin.

    Exact zeros (a ReLU's or ReLU6's negative half, often most of the tensor) are left
    out: every threshold represents them exactly, so they say nothing about where to clip.
    Left in, they are a spike in the first bin that Q spreads over the first level's
    bins; the divergence that costs grows with the bins per level, so the narrowest
    candidate (one bin per level) wins and clips most of the data (the depthwise bench
    net's ReLU6 layers: 16% and 27% of their values)."""
    a = a[a > 0]
    top = float(a.max()) if a.size else 0.0
    if top == 0:
        return 0.0
    hist = np.histogram(a, bins=bins, range=(0, top))[0].astype(np.float64)
    cuts = np.array(list(range(levels, bins, stride)) + [bins])
    return int(cuts[np.argmin(_kl_divergences(hist, cuts, levels))]) * top / bins   # ties: the narrowest


def _kl_divergences(hist: np.ndarray, cuts: np.ndarray, levels: int, eps: float = 1e-4) -> np.ndarray:
    """KL(P || Q) for every candidate cut i (bins kept), all at once from prefix sums.

    P is hist[:i] with the mass beyond the cut folded into bin i - 1. Q quantizes hist[:i]
    (without the fold) to `levels` levels of contiguous bins (bin j in level j * levels // i)
    and spreads each level's mass evenly over its bins where P is not empty. Where Q is
    empty but P is not (only the folded bin can be), Q gets eps of a count (smoothing, as
    TensorRT's calibrators do); a cut with nothing below it diverges infinitely, since
    smoothing alone would make Q equal P. With P, Q normalised by their sums P_, Q_:
    KL = sum p log p / P_ - log P_ - sum p log q / P_ + log Q_, and every sum over a
    level's bins is a difference of prefix sums."""
    prefix = lambda v: np.concatenate([[0.0], np.cumsum(v)])   # noqa: E731
    mass, live = prefix(hist), prefix(hist > 0)
    plogp = prefix(np.where(hist > 0, hist * np.log(np.maximum(hist, 1e-300)), 0.0))
    i = cuts[:, None]
    # level k's bins among 0 .. i-2 (the folded bin i - 1 is in the last level, added after)
    edge = np.minimum(-(-np.arange(levels + 1)[None, :] * i // levels), i - 1)
    total = mass[edge[:, 1:]] - mass[edge[:, :-1]]
    count = live[edge[:, 1:]] - live[edge[:, :-1]]
    last = hist[cuts - 1]
    folded = last + mass[-1] - mass[cuts]               # P's last bin
    total[:, -1] += last
    count[:, -1] += folded > 0
    p_mass = total.copy()
    p_mass[:, -1] += folded - last
    smoothed = (total[:, -1] == 0) & (folded > 0)
    total[smoothed, -1] = eps
    q = total / np.maximum(count, 1)
    p_sum, q_sum = mass[-1], mass[cuts] + np.where(smoothed, eps, 0.0)
    plogq = np.sum(np.where(p_mass > 0, p_mass * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=1)
    sum_plogp = plogp[cuts - 1] + np.where(folded > 0, folded * np.log(np.maximum(folded, 1e-300)), 0.0)
    kl = sum_plogp / p_sum - np.log(p_sum) - plogq / p_sum + np.log(np.maximum(q_sum, 1e-300))
    return np.where(mass[cuts] > 0, kl, np.inf)


def choose_fix(method: str, x: np.ndarray, tq, lo: int, respond=None, hi: int = INT8_MAX) -> int:
    """The fix position `method` gives tensor `x` quantized as `tq` (a TensorQuant) to
    codes lo..hi. `respond` maps a (fake-quantized) x to the layer output that diffs
    compares; by default that output is x itself."""
    return choose_fixes((method,), x, tq, lo, respond, hi)[method]


def choose_fixes(methods, x: np.ndarray, tq, lo: int, respond=None, hi: int = INT8_MAX) -> dict[str, int]:
    """choose_fix for each of `methods` on one tensor; mse and diffs share their search's
    fake-quantized tensors."""
    a = np.abs(np.asarray(x, np.float64)).ravel()
    f0 = fix_position(float(a.max()) if a.size else 0.0, hi)
    fixes = {}
    if "maxmin" in methods:
        fixes["maxmin"] = f0
    if "percentile" in methods:
        fixes["percentile"] = fix_position(float(np.percentile(a, tq.percentage)), hi)
    if "entropy" in methods:
        # as many levels as the codes' magnitudes: 128 for int8, 256 for uint8
        fixes["entropy"] = fix_position(kl_threshold(a, levels=hi + 1), hi)
    searched = [m for m in ("mse", "diffs") if m in methods]
    if searched:
        respond = respond or (lambda v: v)
        reference = respond(np.asarray(x, np.float64))
        errors = {m: [] for m in searched}
        for f in range(f0, f0 + SEARCH_SPAN + 1):
            diff = respond(fake_quant(x, f, tq.round_mode, lo, hi)) - reference
            if "mse" in errors:
                errors["mse"].append(np.mean(diff ** 2))
            if "diffs" in errors:
                errors["diffs"].append(np.mean(np.abs(diff)))
        for m, e in errors.items():
            fixes[m] = f0 + int(np.argmin(e))   # ties: the first, i.e. the wider range
    unknown = set(methods) - set(fixes)
    if unknown:
        raise ValueError(f"unknown calibration method {', '.join(sorted(unknown))}")
    return fixes


def combine(fixes: list[int], how: str) -> int:
    """One fix position from those of the calibration batches (calib_statistic_method).

    modal: the most frequent (ties: the smallest, i.e. widest range); max: the one of the
    largest range, i.e. the smallest f (with maxmin this is max-min over the whole set);
    mean: the mean rounded half up; median: the median, rounded down (widest) when even.
    """
    if how == "modal":
        counts = Counter(fixes)
        top = max(counts.values())
        return min(f for f, n in counts.items() if n == top)
    if how == "max":
        return min(fixes)
    if how == "mean":
        return math.floor(np.mean(fixes) + 0.5)
    if how == "median":
        return math.floor(np.median(fixes))
    raise ValueError(f"unknown calib_statistic_method {how!r}")
