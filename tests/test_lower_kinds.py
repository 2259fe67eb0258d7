"""Back end: the layer kinds that lower onto the array's existing instructions -- grouped
and depthwise conv (zero tiles skipped), average pool (a depthwise conv of the reciprocal
multiplier), residual add (a 1x1 conv over the inputs side by side) and channel concat
(an identity conv per input into its part of the output) -- run on the ISS bit for bit
as the golden model computes them, alone and in a DAG, on arrays of several shapes, with
LeakyReLU on POST's slope; and what the hardware cannot run is refused in one clear line."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from hwq.compiler.frontend import trace
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.methods import fix_position
from hwq.arch.requant import ROUND_MODES, quantize_float
from hwq.arch.config import load_hw_config
from hwq.errors import HwqError
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

CONFIGS = [load_hw_config(name) for name in ("default", "small", "tall")]
# Shallow buffers: several bands, input groups, weights streamed in small chunks.
CRAMPED = dataclasses.replace(CONFIGS[1], name="cramped", ibuf_depth=512, wbuf_depth=64,
                              abuf_depth=16, obuf_depth=64)
CONFIGS.append(CRAMPED)
MODES = sorted(ROUND_MODES)


def check(qmodel: QModel, cfg, seed: int = 0, n: int = 1):
    x = np.random.default_rng(seed).integers(-128, 128, (n, *qmodel.input_shape)).astype(np.int8)
    compiled = compile_model(qmodel, cfg)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x)
    assert result.ok, result.status
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None
    return compiled


def _out(size, k, s, p=0):
    return (size + 2 * p - k) // s + 1


def conv(rng, name, src, shape, cout, k=3, stride=1, pad=1, groups=1, act="none", mode="half_up",
         f_in=4, zero_groups=(), alpha_q=26):
    cin, h, w = shape
    weight = rng.integers(-128, 128, (cout, cin // groups, k, k)).astype(np.int8)
    for g in zero_groups:                 # whole groups of zeros: output blocks with bias only
        weight[g * (cout // groups):(g + 1) * (cout // groups)] = 0
    return QLayer(name, "conv", src, shape, (cout, _out(h, k, stride, pad), _out(w, k, stride, pad)),
                  f_in, int(rng.integers(1, 5)), weight=weight,
                  bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=7, stride=stride,
                  padding=pad, groups=groups, act=act, round_mode=mode,
                  lo=0 if act == "relu" else -128, hi=127, alpha_q=alpha_q)


def avgpool(name, src, shape, k, stride, pad=0, f_in=3, f_out=3, mode="half_up", multiplier=None):
    c, h, w = shape
    f_w = fix_position(1 / (k * k))
    m = int(quantize_float(1 / (k * k), f_w, "half_up")) if multiplier is None else multiplier
    return QLayer(name, "avgpool", src, shape, (c, _out(h, k, stride, pad), _out(w, k, stride, pad)),
                  f_in, f_out, f_w=f_w, kernel=k, stride=stride, padding=pad, round_mode=mode,
                  multiplier=m)


def add(name, srcs, shape, f_ins, f_out, act="none", mode="half_up", alpha_q=26):
    return QLayer(name, "add", srcs[0], shape, shape, f_ins[0], f_out, inputs=list(srcs),
                  f_ins=list(f_ins), act=act, round_mode=mode, lo=0 if act == "relu" else -128, hi=127,
                  alpha_q=alpha_q)


def concat(name, srcs, shapes, f_ins, f_out, mode="half_up"):
    c = sum(s[0] for s in shapes)
    return QLayer(name, "concat", srcs[0], shapes[0], (c, *shapes[0][1:]), f_ins[0], f_out,
                  inputs=list(srcs), f_ins=list(f_ins), round_mode=mode)


settle = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settle
@given(cin_g=st.integers(1, 6), cout_g=st.integers(1, 6), groups=st.integers(1, 6),
       k=st.sampled_from([1, 3]), h=st.integers(3, 8), w=st.integers(3, 8), stride=st.integers(1, 2),
       act=st.sampled_from(["none", "relu", "leaky_relu"]), alpha_q=st.integers(0, 511),
       mode=st.sampled_from(MODES), cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2 ** 16),
       data=st.data())
def test_grouped_conv_matches_golden(cin_g, cout_g, groups, k, h, w, stride, act, alpha_q, mode, cfg,
                                     seed, data):
    zero = data.draw(st.sets(st.integers(0, groups - 1), max_size=groups))
    layer = conv(np.random.default_rng(seed), "g", "input", (cin_g * groups, h, w), cout_g * groups,
                 k, stride, k // 2, groups, act, mode, zero_groups=zero, alpha_q=alpha_q)
    check(QModel("grouped", layer.in_shape, 4, [layer]), cfg, seed)


@settle
@given(c=st.integers(1, 20), k=st.integers(1, 4), h=st.integers(4, 9), stride=st.integers(1, 3),
       pad=st.integers(0, 1), f_out=st.integers(0, 5), mode=st.sampled_from(MODES),
       cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2 ** 16))
def test_avgpool_matches_golden(c, k, h, stride, pad, f_out, mode, cfg, seed):
    pad = min(pad, k // 2)
    layer = avgpool("avg", "input", (c, h, h + 1), k, stride, pad, 3, f_out, mode)
    check(QModel("avg", layer.in_shape, 3, [layer]), cfg, seed)


def test_global_average_pool_matches_golden():
    layer = avgpool("gap", "input", (12, 6, 6), 6, 6)
    for cfg in CONFIGS:
        check(QModel("gap", layer.in_shape, 3, [layer]), cfg, n=2)


@settle
@given(c=st.integers(1, 20), h=st.integers(1, 7), f_ins=st.lists(st.integers(0, 6), min_size=2, max_size=3),
       f_out=st.integers(0, 6), act=st.sampled_from(["none", "relu", "leaky_relu"]),
       mode=st.sampled_from(MODES), cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2 ** 16))
def test_add_matches_golden(c, h, f_ins, f_out, act, mode, cfg, seed):
    """The inputs of an add are other layers' outputs (here 1x1 convs of the input)."""
    rng = np.random.default_rng(seed)
    shape = (c, h, h + 2)
    layers = [dataclasses.replace(conv(rng, f"c{i}", "input", shape, c, 1, 1, 0), f_out=f)
              for i, f in enumerate(f_ins)]
    layers.append(add("add", [l.name for l in layers], shape, f_ins, f_out, act, mode))
    check(QModel("add", shape, 4, layers), cfg, seed)


@settle
@given(cs=st.lists(st.integers(1, 13), min_size=2, max_size=3), h=st.integers(1, 6),
       f_ins=st.lists(st.integers(0, 6), min_size=3, max_size=3), f_out=st.integers(0, 6),
       mode=st.sampled_from(MODES), then=st.sampled_from(["conv", "maxpool", "flatten", "none"]),
       cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2 ** 16))
def test_concat_matches_golden(cs, h, f_ins, f_out, mode, then, cfg, seed):
    """Each input starts output blocks of its own; what reads the concatenation (a conv, a
    max-pool, a flatten + linear, or the host) finds its channels through channel_index."""
    rng = np.random.default_rng(seed)
    w = h + 1
    layers = [dataclasses.replace(conv(rng, f"c{i}", "input", (3, h, w), c, 1, 1, 0), f_out=f)
              for i, (c, f) in enumerate(zip(cs, f_ins))]
    shapes = [l.out_shape for l in layers]
    layers.append(concat("cat", [l.name for l in layers], shapes, f_ins[:len(cs)], f_out, mode))
    total = sum(cs)
    if then == "conv":
        layers.append(conv(rng, "after", "cat", (total, h, w), 5, 3, 1, 1, f_in=f_out))
    elif then == "maxpool" and min(h, w) >= 2:
        layers.append(QLayer("after", "maxpool", "cat", (total, h, w), (total, h // 2, w // 2),
                             f_out, f_out, kernel=2, stride=2))
    elif then == "flatten":
        layers.append(QLayer("flat", "flatten", "cat", (total, h, w), (total * h * w, 1, 1), f_out, f_out))
        layers.append(conv(rng, "fc", "flat", (total * h * w, 1, 1), 6, 1, 1, 0, f_in=f_out))
    check(QModel("cat", (3, h, w), 4, layers), cfg, seed)


class Block(nn.Module):
    """Residual add, depthwise conv, concat, average pools (a window and global), LeakyReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.grouped = nn.Conv2d(12, 12, 1, groups=3)
        self.b = nn.Conv2d(12, 6, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(18, 5)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu(y + self.grouped(F.relu(self.dw(y))))
        y = torch.cat([self.pool(y), F.leaky_relu(self.b(y), 0.1)], 1)
        return self.fc(torch.flatten(self.gap(y), 1))


def test_dag_end_to_end_through_the_quantizer():
    x = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    graph = trace(Block(), (3, 8, 8), "block")
    qmodel = quantize(graph, x, load_quant_config(), progress=False)
    assert {l.kind for l in qmodel.layers} >= {"add", "concat", "avgpool"}
    assert any(l.groups == 12 for l in qmodel.layers)
    for cfg in CONFIGS:
        check(qmodel, cfg, n=2)


def test_dram_holds_only_live_weight_tiles():
    """DRAM holds a depthwise conv's diagonal tiles only, and the tiles of an average
    pool, an add and a concat, which repeat, once each; the GEMMs address them there."""
    rng = np.random.default_rng(0)
    cfg = CONFIGS[0]
    shape = (16, 6, 6)
    layers = [conv(rng, "dw", "input", shape, 16, groups=16, act="relu"),
              avgpool("avg", "dw", shape, 3, 1, 1, f_in=3, f_out=3),
              add("add", ["dw", "avg"], shape, [3, 4], 3),
              concat("cat", ["add", "dw"], [shape, shape], [3, 3], 2)]
    layers[0] = dataclasses.replace(layers[0], f_out=3)
    compiled = check(QModel("sparse", shape, 4, layers), cfg, n=2)
    tile = cfg.rows * cfg.cols
    stored = {r.name: r.words * cfg.bus_bytes // tile for r in compiled.memmap.regions if r.kind == "weights"}
    assert stored == {"dw.weight": 2 * 9, "avg.weight": 1, "add.weight": 2, "cat.0.weight": 1,
                      "cat.1.weight": 1}


# ---- refusals ----

@pytest.mark.parametrize("slope", [-0.1, 2.5])
def test_leaky_relu_slope_out_of_range_is_refused_in_one_line(slope):
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return F.leaky_relu(self.conv(x), slope)

    graph = trace(Leaky(), (1, 6, 6), "leaky")
    with pytest.raises(HwqError, match=rf"^layer 'conv': LeakyReLU negative_slope {slope:g} is outside "
                                       r"what the hardware multiplies by \(0\.\.511 / 256\); use a "
                                       r"slope in \[0, 1\.99\]$"):
        quantize(graph, np.zeros((2, 1, 6, 6), np.float32), load_quant_config(), progress=False)
    qmodel = quantize(graph, np.ones((2, 1, 6, 6), np.float32), load_quant_config(), progress=False,
                      hardware=False)
    with pytest.raises(HwqError, match=r"^layer 'conv' does not fit the hardware: LeakyReLU slope "):
        compile_model(qmodel, CONFIGS[0])


def test_leaky_relu_without_slope_multipliers_is_refused():
    layer = conv(np.random.default_rng(0), "c", "input", (3, 5, 5), 4, act="leaky_relu")
    cfg = dataclasses.replace(CONFIGS[0], name="nodsp", leaky_relu=False)
    with pytest.raises(HwqError, match=r"^layer 'c' does not fit the hardware: LeakyReLU needs "
                                       r"POST's slope multipliers, which hardware config 'nodsp' "
                                       r"leaves out \(leaky_relu: false\); use ReLU or another board$"):
        compile_model(QModel("m", (3, 5, 5), 4, [layer]), cfg)


def test_avgpool_multiplier_beyond_int8_is_refused():
    layer = avgpool("avg", "input", (4, 4, 4), 2, 2, multiplier=200)
    with pytest.raises(HwqError, match=r"^layer 'avg': average pool multiplier 200 \(1/4 at fix "
                                       r"position 8\) does not fit an int8 weight$"):
        compile_model(QModel("m", (4, 4, 4), 3, [layer]), CONFIGS[0])


def test_add_of_too_distant_fix_positions_is_refused():
    rng = np.random.default_rng(0)
    shape = (4, 3, 3)
    layers = [dataclasses.replace(conv(rng, "a", "input", shape, 4, 1, 1, 0), f_out=0),
              dataclasses.replace(conv(rng, "b", "input", shape, 4, 1, 1, 0), f_out=7),
              add("add", ["a", "b"], shape, [0, 7], 3)]
    with pytest.raises(HwqError, match=r"^layer 'add': adding inputs at fix positions \[0, 7\] "
                                       r"scales one by 2\*\*7, beyond an int8 weight"):
        compile_model(QModel("m", shape, 4, layers), CONFIGS[0])
