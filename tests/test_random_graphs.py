"""Random networks of every kind the back end lowers -- conv (k 1/3/5/7, stride 1-3,
padding 0-3, or each of them drawn per axis; channel counts off the array's multiples,
grouped and depthwise too, relu or none, every rounding mode), maxpool (padded, with
ceil_mode's partial windows), average pool (non-square too), residual add and channel
concat over a 1x1 conv branch, flatten + linear -- compiled for several array shapes and
run on the ISS (and a sample on Verilator) bit for bit against the golden model."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.methods import fix_position
from hwq.arch.requant import ROUND_MODES, quantize_float
from hwq.arch.config import load_hw_config
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

CONFIGS = [load_hw_config(name) for name in ("default", "small", "tall")]


def _out(size: int, k: int, s: int, p: int = 0, ceil: bool = False) -> int:
    """torch's output size; with ceil_mode the last window may start in the input or the
    padding before it only."""
    if not ceil:
        return (size + 2 * p - k) // s + 1
    out = -(-(size + 2 * p - k) // s) + 1
    return out - 1 if (out - 1) * s >= size + p else out


def _pairs(draw, ks, strides, pads, square):
    """Kernel, stride and padding pairs: both axes alike, or each drawn on its own."""
    k, s, p = draw(st.sampled_from(ks)), draw(strides), draw(pads)
    if square:
        return (k, k), (s, s), (p, p)
    return (k, draw(st.sampled_from(ks))), (s, draw(strides)), (p, draw(pads))


def _conv(draw, rng, name, src, shape, f, k, s, pad, cout, groups=1):
    c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = (k, k) if isinstance(k, int) else k, \
        (s, s) if isinstance(s, int) else s, (pad, pad) if isinstance(pad, int) else pad
    act, mode = draw(st.sampled_from(["none", "relu"])), draw(st.sampled_from(sorted(ROUND_MODES)))
    out = (cout, _out(h, kh, sh, ph), _out(w, kw, sw, pw))
    return QLayer(name, "conv", src, shape, out, f, draw(st.integers(0, 5)),
                  weight=rng.integers(-128, 128, (cout, c // groups, kh, kw)).astype(np.int8),
                  bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=7, stride=s,
                  padding=pad, groups=groups, act=act, round_mode=mode,
                  lo=0 if act == "relu" else -128, hi=127)


@st.composite
def graphs(draw) -> QModel:
    """1-4 feature stages (conv, maxpool, average pool, or a 1x1 conv branch added to or
    concatenated with the tensor) on a small image, then maybe flatten + linear. Fix
    positions and biases keep every accumulator well inside int32."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    c, h, w = draw(st.integers(1, 19)), draw(st.integers(3, 16)), draw(st.integers(3, 16))
    shape, f, src, layers = (c, h, w), 4, "input", []
    for i in range(draw(st.integers(1, 4))):
        c, h, w = shape
        kind = draw(st.sampled_from(["conv", "conv", "pool", "avgpool", "add", "concat"]))
        square = draw(st.booleans())
        if kind == "conv" or min(h, w) < 2 and kind in ("pool", "avgpool"):
            (kh, kw), s, (ph, pw) = _pairs(draw, [1, 2, 3, 5, 7], st.integers(1, 3), st.integers(0, 3), square)
            kh, kw = min(kh, h + 2 * ph), min(kw, w + 2 * pw)
            cout = draw(st.integers(1, 19))
            groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0 and cout % g == 0]))
            layers.append(_conv(draw, rng, f"conv{i}", src, shape, f, (kh, kw), s, (ph, pw), cout, groups))
        elif kind == "pool":
            k, _, _ = _pairs(draw, [1, 2, 3], st.just(1), st.just(0), square)
            kh, kw = min(k[0], h), min(k[1], w)
            s, ceil = draw(st.integers(1, 3)), draw(st.booleans())
            ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
            layers.append(QLayer(f"pool{i}", "maxpool", src, shape,
                                 (c, _out(h, kh, s, ph, ceil), _out(w, kw, s, pw, ceil)),
                                 f, f, kernel=(kh, kw), stride=s, padding=(ph, pw)))
        elif kind == "avgpool":
            k, s, _ = _pairs(draw, [1, 2, 3], st.integers(1, 3), st.just(0), square)
            kh, kw = min(k[0], h), min(k[1], w)
            ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
            f_w = fix_position(1 / (kh * kw))
            layers.append(QLayer(f"avg{i}", "avgpool", src, shape,
                                 (c, _out(h, kh, s[0], ph), _out(w, kw, s[1], pw)), f, draw(st.integers(0, 5)),
                                 f_w=f_w, kernel=(kh, kw), stride=s, padding=(ph, pw),
                                 round_mode=draw(st.sampled_from(sorted(ROUND_MODES))),
                                 multiplier=int(quantize_float(1 / (kh * kw), f_w, "half_up"))))
        else:
            cout = c if kind == "add" else draw(st.integers(1, 12))
            branch = _conv(draw, rng, f"branch{i}", src, shape, f, 1, 1, 0, cout)
            layers.append(branch)
            f_ins, f_out = [f, branch.f_out], draw(st.integers(0, 5))
            mode = draw(st.sampled_from(sorted(ROUND_MODES)))
            if kind == "add":
                act = draw(st.sampled_from(["none", "relu"]))
                layers.append(QLayer(f"add{i}", "add", src, shape, shape, f, f_out,
                                     inputs=[src, branch.name], f_ins=f_ins, act=act, round_mode=mode,
                                     lo=0 if act == "relu" else -128, hi=127))
            else:
                layers.append(QLayer(f"cat{i}", "concat", src, shape, (c + cout, h, w), f, f_out,
                                     inputs=[src, branch.name], f_ins=f_ins, round_mode=mode))
        shape, src, f = layers[-1].out_shape, layers[-1].name, layers[-1].f_out
    c, h, w = shape
    if c * h * w <= 300 and draw(st.booleans()):
        layers.append(QLayer("flat", "flatten", src, shape, (c * h * w, 1, 1), f, f))
        cout = draw(st.integers(1, 12))
        layers.append(QLayer("fc", "conv", "flat", (c * h * w, 1, 1), (cout, 1, 1), f, 2,
                             weight=rng.integers(-128, 128, (cout, c * h * w, 1, 1)).astype(np.int8),
                             bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=7,
                             round_mode=draw(st.sampled_from(sorted(ROUND_MODES)))))
    return QModel("random", layers[0].in_shape, 4, layers)


def check(qmodel: QModel, cfg, sim: str, seed: int) -> None:
    x = np.random.default_rng(seed).integers(-128, 128, (1, *qmodel.input_shape)).astype(np.int8)
    compiled = compile_model(qmodel, cfg)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, sim=sim)
    assert result.ok, result.status
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None


@settings(max_examples=320, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qmodel=graphs(), cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2 ** 16))
def test_random_graph_iss_matches_golden(qmodel, cfg, seed):
    check(qmodel, cfg, "iss", seed)


@pytest.mark.slow
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(qmodel=graphs(), cfg=st.sampled_from(CONFIGS[:2]), seed=st.integers(0, 2 ** 16))
def test_random_graph_verilator_matches_golden(qmodel, cfg, seed):
    check(qmodel, cfg, "verilator", seed)
