"""The golden model's layer kinds -- conv of any shape (grouped too), per-channel shifts,
LeakyReLU, avgpool, add, concat -- and its fast requantization path against slow
references written from the definitions; conv on both its kernels (the float GEMM and
oneDNN's int8 convolution), at and past the float32 exactness bound, against a direct
int64 convolution."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hwq.arch.requant import ALPHA_BITS
from hwq.compiler.ir import QLayer, QModel
from hwq.arch.requant import (ROUND_MODES, Requantizer, requantize, requantize_fast,
                                        round_shift)
from hwq.sim import golden
from hwq.sim.golden import run_golden

MODES = st.sampled_from(list(ROUND_MODES))


def requant_ref(acc: int, shift: int, mode: str, lo: int, hi: int) -> int:
    return int(requantize(np.array([acc]), shift, mode, lo, hi)[0])


@settings(max_examples=25, deadline=None)
@given(groups=st.sampled_from([1, 2, 4]), per_group_in=st.integers(1, 3), per_group_out=st.integers(1, 3),
       k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       h=st.integers(3, 6), mode=MODES, act=st.sampled_from(["none", "relu", "leaky_relu"]),
       per_channel=st.booleans(), seed=st.integers(0, 10**6))
def test_grouped_conv_per_channel_leaky(groups, per_group_in, per_group_out, k, stride, padding,
                                        h, mode, act, per_channel, seed):
    rng = np.random.default_rng(seed)
    cin, cout = groups * per_group_in, groups * per_group_out
    oh = (h + 2 * padding - k) // stride + 1
    w = rng.integers(-128, 128, (cout, per_group_in, k, k)).astype(np.int8)
    b = rng.integers(-3000, 3000, cout).astype(np.int32)
    f_wc = rng.integers(5, 9, cout) if per_channel else None
    layer = QLayer("c", "conv", "input", (cin, h, h), (cout, oh, oh), 4, 3, weight=w, bias=b, f_w=7,
                   stride=stride, padding=padding, act=act, round_mode=mode, groups=groups,
                   f_wc=f_wc, alpha_q=26, lo=0 if act == "relu" else -128)
    x = rng.integers(-128, 128, (2, cin, h, h)).astype(np.int8)
    got = run_golden(QModel("m", (cin, h, h), 4, [layer]), x)["c"]
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for n in range(2):
        for o in range(cout):
            g = o // per_group_out
            shift = 4 + (int(f_wc[o]) if per_channel else 7) - 3
            for i in range(oh):
                for j in range(oh):
                    acc = int(b[o])
                    for c in range(per_group_in):
                        for ky in range(k):
                            for kx in range(k):
                                acc += int(w[o, c, ky, kx]) * int(xp[n, g * per_group_in + c, i * stride + ky, j * stride + kx])
                    if act == "leaky_relu":   # slope 26/256 on negative accumulators
                        acc, s = (acc * 26 if acc < 0 else acc << ALPHA_BITS), shift + ALPHA_BITS
                    else:
                        s = shift
                    assert got[n, o, i, j] == requant_ref(acc, s, mode, layer.lo, 127)


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([2, 3]), stride=st.integers(1, 3), padding=st.integers(0, 1),
       h=st.integers(3, 7), mode=MODES, f_out=st.integers(-1, 3), seed=st.integers(0, 10**6))
def test_avgpool(k, stride, padding, h, mode, f_out, seed):
    rng = np.random.default_rng(seed)
    oh = (h + 2 * padding - k) // stride + 1
    mult, f_w = (64, 8) if k == 2 else (114, 10)     # 1/4 = 64/256; 1/9 ~ 114/1024
    layer = QLayer("p", "avgpool", "input", (3, h, h), (3, oh, oh), 2, f_out, kernel=k, stride=stride,
                   padding=padding, round_mode=mode, f_w=f_w, multiplier=mult)
    x = rng.integers(-128, 128, (2, 3, h, h)).astype(np.int8)
    got = run_golden(QModel("m", (3, h, h), 2, [layer]), x)["p"]
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for idx in np.ndindex(got.shape):
        n, c, i, j = idx
        total = int(xp[n, c, i * stride:i * stride + k, j * stride:j * stride + k].sum())
        assert got[idx] == requant_ref(total * mult, 2 + f_w - f_out, mode, -128, 127)


@settings(max_examples=25, deadline=None)
@given(fa=st.integers(0, 6), fb=st.integers(0, 6), f_out=st.integers(-1, 6), mode=MODES,
       act=st.sampled_from(["none", "relu"]), seed=st.integers(0, 10**6))
def test_add_and_concat(fa, fb, f_out, mode, act, seed):
    rng = np.random.default_rng(seed)
    shape = (3, 2, 2)
    a_layer = QLayer("a", "conv", "input", shape, shape, 0, fa, weight=np.eye(3, dtype=np.int8)[:, :, None, None],
                     bias=np.zeros(3, np.int32), f_w=fa, round_mode=mode)   # a = x at fix fa
    b_layer = QLayer("b", "conv", "input", shape, shape, 0, fb, weight=-np.eye(3, dtype=np.int8)[:, :, None, None],
                     bias=np.zeros(3, np.int32), f_w=fb, round_mode=mode)   # b = -x at fix fb
    add = QLayer("add", "add", "a", shape, shape, fa, f_out, inputs=["a", "b"], f_ins=[fa, fb], act=act,
                 round_mode=mode, lo=0 if act == "relu" else -128)
    cat = QLayer("cat", "concat", "a", shape, (6, 2, 2), fa, f_out, inputs=["b", "a"], f_ins=[fb, fa],
                 round_mode=mode)
    x = rng.integers(-128, 128, (2, *shape)).astype(np.int8)
    out = run_golden(QModel("m", shape, 0, [a_layer, b_layer, add, cat]), x)
    a, b = out["a"].astype(int), out["b"].astype(int)
    top = max(fa, fb)
    for idx in np.ndindex(a.shape):
        total = (a[idx] << (top - fa)) + (b[idx] << (top - fb))
        assert out["add"][idx] == requant_ref(total, top - f_out, mode, add.lo, 127)
        n, c, i, j = idx
        assert out["cat"][n, c, i, j] == requant_ref(b[idx], fb - f_out, mode, -128, 127)
        assert out["cat"][n, c + 3, i, j] == requant_ref(a[idx], fa - f_out, mode, -128, 127)


@settings(max_examples=300, deadline=None)
@given(x=st.lists(st.integers(-(2 ** 31), 2 ** 31 - 1), min_size=1, max_size=8),
       shifts=st.lists(st.integers(-32, 31), min_size=1, max_size=8), mode=MODES)
def test_requantize_fast_equals_requantize(x, shifts, mode):
    """The golden model's requantization path is the rule itself, for one shift or one per
    channel (last axis), including ties: x also runs through exact multiples +- half."""
    s = np.array(shifts)
    xs = np.array(x, np.int64)[:, None] + np.zeros(len(s), np.int64)
    ties = (xs >> np.maximum(s, 1)) << np.maximum(s, 1) | (1 << np.maximum(s - 1, 0))
    for v in (xs, np.clip(ties, -(2 ** 31), 2 ** 31 - 1)):
        want = np.stack([round_shift(v[:, c], int(sh), mode) for c, sh in enumerate(s)], axis=1)
        assert np.array_equal(requantize_fast(v, s, mode, -100, 90),
                              np.clip(want, -100, 90).astype(np.int8))
        assert np.array_equal(requantize_fast(v[:, 0], int(s[0]), mode, -100, 90),
                              np.clip(want[:, 0], -100, 90).astype(np.int8))
        offset = v[::-1, 0] // 3 + 7            # bias folded in: the rule on v + offset
        v32 = np.clip(v - offset[:, None], -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        want = np.stack([requantize(v32[:, c].astype(np.int64) + offset, int(sh), mode, -100, 90)
                         for c, sh in enumerate(s)], axis=1)
        assert np.array_equal(requantize_fast(v32, s, mode, -100, 90, offset[:, None]), want)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), rows=st.integers(1, 6),
       shifts=st.lists(st.integers(-32, 31), min_size=1, max_size=6), mode=MODES, magnitude=st.sampled_from([1, 8, 20, 24, 30, 31]), per_channel=st.booleans(),
       with_offset=st.booleans(), clamp=st.sampled_from([(-128, 127), (0, 127), (-127, 127), (0, 48),
                                                          (-100, 90)]))
def test_requantizer_equals_requantize(data, rows, shifts, mode, magnitude, per_channel, with_offset,
                                       clamp):
    """The prepared requantizer is the rule: every mode, shifts negative, zero and positive
    (one, or one per channel), an offset (the bias) or none, saturation and every clamp,
    ties, and accumulators as int64, int32, float64 and float32 (when it holds them
    exactly), run in int32 where the bound lets it and in int64 past it."""
    lo, hi = clamp
    s = np.array(shifts if per_channel else shifts[:1])
    c = len(s)
    top = (1 << magnitude) - 1
    acc = np.array(data.draw(st.lists(st.integers(-top, top), min_size=rows * c, max_size=rows * c)),
                   np.int64).reshape(rows, c)
    offset = (np.array(data.draw(st.lists(st.integers(-top, top), min_size=c, max_size=c)), np.int64)
              if with_offset else 0)
    if not per_channel and with_offset and data.draw(st.booleans()):
        offset = int(offset[0])
    if data.draw(st.booleans()):  # acc + offset on exact ties and their neighbours, where in range
        sh = np.maximum(s, 1)
        v = acc + offset
        ties = ((v >> sh) << sh) + (1 << (sh - 1)) + data.draw(st.sampled_from([-1, 0, 0, 1])) - offset
        acc = np.where(np.abs(ties) <= top, ties, acc)
    total = acc + offset                    # the rule on acc + offset, channel by channel
    want = np.stack([requantize(total[:, j], int(s[j]), mode, lo, hi) for j in range(c)], axis=1)
    shift_arg = s if per_channel else int(s[0])
    kinds = [np.int64, np.float64] + ([np.int32] if magnitude <= 31 else []) + \
        ([np.float32] if magnitude <= 24 else [])
    for bound in (top, None, top + int(np.abs(offset).max(initial=0))):
        req = Requantizer(shift_arg, mode, lo, hi, offset, bound)
        if bound is None:
            assert req.dtype == np.int64
        for kind in kinds:
            got = req(acc.astype(kind))
            assert got.dtype == np.int8 and np.array_equal(got, want), (kind, bound, req.dtype)
            out = np.empty(acc.shape, np.int8)
            assert req(acc.astype(kind), out) is out and np.array_equal(out, want)
    # int32 whenever the bound allows it, int64 otherwise
    half = (1 << max(int(s.max()), 0)) >> 1
    fits = top + int(np.abs(offset).max(initial=0)) + half < 2 ** 31 and \
        (top + int(np.abs(offset).max(initial=0))) << max(-int(s.min()), 0) < 2 ** 31
    assert Requantizer(shift_arg, mode, lo, hi, offset, top).dtype == (np.int32 if fits else np.int64)


def test_requantizer_left_shift_saturates_without_overflow():
    """A sum of 2**31 shifted left by 32 saturates, as the rule does; in int64 it would wrap
    (the case hypothesis found)."""
    acc, offset = np.array([[1, 1]], np.int64), np.array([2 ** 31 - 1, -2 ** 31], np.int64)
    got = Requantizer(np.array([-32, -32]), "half_up", offset=offset, bound=2 ** 31 - 1)(acc)
    want = [requantize(acc[0, j] + offset[j], -32, "half_up") for j in range(2)]
    assert got.tolist() == [[127, -128]] == [[int(w) for w in want]]


def test_requantizer_rejects_unknown_mode():
    with pytest.raises(ValueError):
        Requantizer(3, "half_odd")


def direct_conv(x, w, b, stride, padding, groups):
    """conv + bias by definition, in int64, one kernel tap at a time (no BLAS); stride
    and padding are (height, width) pairs."""
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    acc = np.zeros((n, cout, oh, ow), np.int64) + b.astype(np.int64)[None, :, None, None]
    cout_g = cout // groups
    for o in range(cout):
        g = o // cout_g
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, g * cin_g:(g + 1) * cin_g, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw]
                acc[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, ky, kx].astype(np.int64))
    return acc


KERNELS = ["float", "int8"] if golden._INT8_KERNEL else ["float"]


def use_kernel(monkeypatch, kernel: str, block: int = golden._REQUANT_BLOCK,
               band: bool | None = None) -> None:
    """Run every conv on one kernel, requantizing in blocks of `block` accumulators; the
    float GEMM on im2col (band=False), on the banded weights wherever it can (True) or as
    the golden model chooses (None)."""
    monkeypatch.setattr(golden, "_SMALL_MACS", 0 if kernel == "int8" else 1 << 62)
    monkeypatch.setattr(golden, "_REQUANT_BLOCK", block)
    if band is not None:
        monkeypatch.setattr(golden, "_BAND_WIDTH", 1 << 20 if band else 0)
        monkeypatch.setattr(golden, "_BAND_ELEMENTS", 1 << 62 if band else 0)


def check_conv(layer: QLayer, x: np.ndarray) -> None:
    """conv_accumulators and run_golden against the direct int64 convolution and the rule."""
    want = direct_conv(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.groups)
    assert np.array_equal(golden.conv_accumulators(layer, x), want)
    got = run_golden(QModel("m", layer.in_shape, layer.f_in, [layer]), x)["c"]
    shifts = layer.shifts
    if layer.act == "leaky_relu":
        want, shifts = np.where(want < 0, want * layer.alpha_q, want << ALPHA_BITS), shifts + ALPHA_BITS
    for o in range(layer.out_shape[0]):
        assert np.array_equal(got[:, o], requantize(want[:, o], int(shifts[o]), layer.round_mode,
                                                    layer.lo, layer.hi))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(1, 3), groups=st.sampled_from([1, 1, 2, 3, 8]),
       cin_g=st.integers(1, 6), cout_g=st.integers(1, 6), k=st.sampled_from([1, 3, 5, 7]),
       stride=st.integers(1, 3), padding=st.integers(0, 3), mode=MODES,
       square=st.sampled_from([True, True, False]),
       act=st.sampled_from(["none", "relu", "leaky_relu"]), per_channel=st.booleans(),
       kernel=st.sampled_from(KERNELS), block=st.sampled_from([1, 50, 1 << 16]),
       seed=st.integers(0, 10**6))
def test_golden_conv_matches_direct_reference(data, n, groups, cin_g, cout_g, k, stride, padding,
                                              mode, square, act, per_channel, kernel, block, seed):
    """Any shape, stride, padding and grouping (depthwise too), square or not, on either
    kernel, requantized in blocks of any size over the threads, gives the direct
    convolution's result."""
    (kh, kw), stride, padding = (k, k), (stride, stride), (padding, padding)
    if not square:   # each axis its own kernel, stride and padding
        kh, kw = k, data.draw(st.sampled_from([1, 2, 3, 4, 5]))
        stride = (stride[0], data.draw(st.integers(1, 3)))
        padding = (padding[0], data.draw(st.integers(0, kw)))
    h = data.draw(st.integers(max(1, kh - 2 * padding[0]), 12))
    w = data.draw(st.integers(max(1, kw - 2 * padding[1]), 12))
    rng = np.random.default_rng(seed)
    cin, cout = groups * cin_g, groups * cout_g
    weight = rng.integers(-128, 128, (cout, cin_g, kh, kw)).astype(np.int8)
    if seed % 3 == 0:   # the extremes: every product 2**14
        weight[:] = -128
    bias = rng.integers(-(2 ** 20), 2 ** 20, cout).astype(np.int32)
    f_wc = rng.integers(5, 12, cout) if per_channel else None
    oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    layer = QLayer("c", "conv", "input", (cin, h, w), (cout, oh, ow), 4, 3, weight=weight, bias=bias,
                   f_w=7, stride=stride, padding=padding, act=act, round_mode=mode, groups=groups,
                   f_wc=f_wc, alpha_q=26, lo=0 if act == "relu" else -128)
    x = rng.integers(-128, 128, (n, cin, h, w)).astype(np.int8)
    if seed % 3 == 0:
        x[:] = -128
    with pytest.MonkeyPatch.context() as mp:
        use_kernel(mp, kernel, block, data.draw(st.sampled_from([None, False, True])))
        check_conv(layer, x)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), k=st.sampled_from([1, 3]), groups=st.sampled_from([1, 2]),
       wfill=st.sampled_from([-128, 127]), xfill=st.sampled_from([-128, 127]),
       kernel=st.sampled_from(KERNELS), seed=st.integers(0, 10**6))
def test_golden_conv_at_the_float32_bound(data, k, groups, wfill, xfill, kernel, seed):
    """The exactness bound B = 128 * sum|w| of one output channel, at and above 2**24: K
    (= k*k*Cin/groups) from 1008 to 1100 with nearly every value at the extremes and a few
    channels random in both operands, so that odd sums past 2**24, which float32 cannot
    hold, occur. x at 127 or -128 drives the int8 kernel's u8 operands (x, or max(x, 0)
    and max(-x, 0)) to their extremes. Below the bound the float GEMM runs in float32 and
    the int8 kernel's result stands; above it the GEMM runs in float64, as does the int8
    kernel's fallback when a sum reaches 2**24. Linear layers (k = 1 on a 1x1 image) too."""
    cin_g = data.draw(st.integers(1008 // (k * k), 1100 // (k * k)))
    rng = np.random.default_rng(seed)
    cin, cout, h = groups * cin_g, 4, data.draw(st.sampled_from([1, 2] if k == 1 else [3, 4]))
    weight = np.full((cout, cin_g, k, k), wfill, np.int8)
    x = np.full((2, cin, h, h), xfill, np.int8)
    # at a few input channels, random values in both x and w: odd products
    chans = rng.choice(cin_g, data.draw(st.integers(0, 8)), replace=False)
    weight[:, chans] = rng.integers(-128, 128, (cout, len(chans), k, k))
    x.reshape(2, groups, cin_g, h, h)[:, :, chans] = rng.integers(-128, 128,
                                                                  (2, groups, len(chans), h, h))
    weight[1] //= 4             # a channel well under the bound beside ones at it
    bias = rng.integers(-(2 ** 20), 2 ** 20, cout).astype(np.int32)
    pad = 1 if k == 3 else 0
    layer = QLayer("c", "conv", "input", (cin, h, h), (cout, h, h), 4, 3, weight=weight, bias=bias,
                   f_w=7, padding=pad, groups=groups, round_mode="half_even")
    bound = 128 * np.abs(weight.astype(np.int64)).sum(axis=(1, 2, 3)).max()
    assert golden._Conv(layer).f32_exact == (bound <= 2 ** 24)
    with pytest.MonkeyPatch.context() as mp:
        use_kernel(mp, kernel, band=data.draw(st.booleans()))
        check_conv(layer, x)


def test_golden_linear_past_the_int8_kernel_bound(monkeypatch):
    """Where the int8 kernel's int32 sums could overflow (128 * sum|w| >= 2**31: K = 2**17
    at -128) it steps aside, and the float GEMM runs in float64."""
    cin = 1 << 17
    weight = np.full((2, cin, 1, 1), -128, np.int8)
    weight[1, :7] = 3
    layer = QLayer("c", "conv", "input", (cin, 1, 1), (2, 1, 1), 0, 0, weight=weight,
                   bias=np.array([1, -1], np.int32), f_w=24)
    assert not golden._Conv(layer).int8_fits and not golden._Conv(layer).f32_exact
    x = np.full((2, cin, 1, 1), -128, np.int8)
    x[1, :5] = 101
    use_kernel(monkeypatch, "int8")
    check_conv(layer, x)


@pytest.mark.skipif(not golden._INT8_KERNEL, reason="no int8 kernel (VNNI, AMX) on this CPU")
def test_int8_kernel_checked_per_geometry(monkeypatch):
    """The int8 kernel runs a geometry only once it has matched the float GEMM there: it
    does on the usual ones (here a ResNet stage), and where oneDNN sums the wrong windows
    (a 3x3 stride-2 conv over an 11x3 image with 3 input channels, on the oneDNN of torch
    2.13) the result is exact all the same."""
    use_kernel(monkeypatch, "int8")
    rng = np.random.default_rng(5)
    for (cin, h, w, cout, k, stride, pad), usual in [((16, 8, 8, 32, 3, 1, 1), True),
                                                     ((16, 8, 8, 32, 3, 2, 1), True),
                                                     ((3, 11, 3, 2, 3, 2, 0), False)]:
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        layer = QLayer("c", "conv", "input", (cin, h, w), (cout, oh, ow), 4, 3,
                       weight=rng.integers(-128, 128, (cout, cin, k, k)).astype(np.int8),
                       bias=rng.integers(-999, 999, cout).astype(np.int32), f_w=7, stride=stride,
                       padding=pad, act="relu", lo=0)
        if usual:
            prepared = golden._Conv(layer)
            assert prepared._int8_trusted(4, True) and prepared._int8_trusted(4, False)
        check_conv(layer, rng.integers(-128, 128, (4, cin, h, w)).astype(np.int8))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("threads", [1, 3])
def test_prepared_model_batches_and_output_only(monkeypatch, kernel, threads):
    """A prepared GoldenModel gives run_golden's result on every call, over several batches
    (the last one short, shared unevenly among the threads, or not at all) and with only
    the output kept; torch's thread count comes back as it was."""
    rng = np.random.default_rng(3)
    conv = QLayer("c", "conv", "input", (5, 6, 6), (7, 6, 6), 4, 3,
                  weight=rng.integers(-128, 128, (7, 5, 3, 3)).astype(np.int8),
                  bias=rng.integers(-500, 500, 7).astype(np.int32), f_w=7, padding=1, act="relu", lo=0)
    pool = QLayer("p", "maxpool", "c", (7, 6, 6), (7, 3, 3), 3, 3, kernel=2, stride=2)
    add = QLayer("a", "add", "p", (7, 3, 3), (7, 3, 3), 3, 2, inputs=["p", "p"], f_ins=[3, 3])
    qmodel = QModel("m", (5, 6, 6), 4, [conv, pool, add])
    x = rng.integers(-128, 128, (7, 5, 6, 6)).astype(np.int8)
    want = {name: np.concatenate([run_golden(qmodel, x[i:i + 1])[name] for i in range(7)])
            for name in ("c", "p", "a")}
    use_kernel(monkeypatch, kernel, block=20)
    monkeypatch.setattr(golden, "_BATCH", 5)
    prepared = golden.GoldenModel(qmodel)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(2):
            got = prepared(x)
            assert list(got) == ["c", "p", "a"]
            assert all(np.array_equal(got[name], want[name]) for name in got)
            only = prepared(x, every_layer=False)
            assert list(only) == ["a"] and np.array_equal(only["a"], want["a"])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved)
