"""Back end: every layer kind, lowered onto arrays of several shapes, runs on the ISS
bit for bit as the golden model computes it -- partial tiles, bands and padding included."""
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.lower import compile_model
from hwq.config import HwConfig, load_hw_config
from hwq.errors import HwqError
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

CONFIGS = {name: load_hw_config(name) for name in ("default", "small", "tall")}
# Shallow buffers force several row bands and per-block weight reloads.
CRAMPED = dataclasses.replace(CONFIGS["small"], name="cramped", ibuf_depth=512, wbuf_depth=64,
                              abuf_depth=16, obuf_depth=64)


def conv(rng, name, src, cin, cout, k, h, w, stride, pad, act, mode="half_up"):
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    f_in, f_w, f_out = 4, 7, int(rng.integers(1, 5))
    return QLayer(name, "conv", src, (cin, h, w), (cout, oh, ow), f_in, f_out,
                  weight=rng.integers(-128, 128, (cout, cin, k, k)).astype(np.int8),
                  bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=f_w,
                  stride=stride, padding=pad, act=act, round_mode=mode,
                  lo=0 if act == "relu" else -128, hi=127)


def pool(name, src, c, h, w, k, s):
    return QLayer(name, "maxpool", src, (c, h, w), (c, (h - k) // s + 1, (w - k) // s + 1),
                  3, 3, kernel=k, stride=s)


def check(qmodel, cfg, n=2, seed=0):
    x = np.random.default_rng(seed).integers(-128, 128, (n, *qmodel.input_shape)).astype(np.int8)
    compiled = compile_model(qmodel, cfg)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x)
    assert result.ok
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None
    return compiled, result


@pytest.mark.parametrize("cfg", [*CONFIGS.values(), CRAMPED], ids=lambda c: c.name)
def test_small_network_every_layer_kind(cfg):
    rng = np.random.default_rng(1)
    layers = [conv(rng, "c1", "input", 3, 5, 3, 9, 7, 1, 1, "relu", "half_even"),
              pool("p1", "c1", 5, 9, 7, 2, 2),
              conv(rng, "c2", "p1", 5, 9, 3, 4, 3, 2, 1, "none", "std_round"),
              QLayer("flat", "flatten", "c2", (9, 2, 2), (36, 1, 1), 3, 3),
              conv(rng, "fc", "flat", 36, 7, 1, 1, 1, 1, 0, "none", "half_down")]
    check(QModel("net", (3, 9, 7), 4, layers), cfg)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 19), cout=st.integers(1, 19), k=st.sampled_from([1, 3, 5]),
       h=st.integers(5, 10), w=st.integers(5, 10), stride=st.integers(1, 2),
       pad=st.integers(0, 2), act=st.sampled_from(["none", "relu"]),
       mode=st.sampled_from(["half_up", "half_even", "half_down", "std_round"]),
       cfg=st.sampled_from([*CONFIGS.values(), CRAMPED]), seed=st.integers(0, 2**16))
def test_random_conv_matches_golden(cin, cout, k, h, w, stride, pad, act, mode, cfg, seed):
    layer = conv(np.random.default_rng(seed), "c", "input", cin, cout, k, h, w, stride, pad, act, mode)
    check(QModel("one", (cin, h, w), 4, [layer]), cfg, n=1, seed=seed)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 12), h=st.integers(2, 9), w=st.integers(2, 9), k=st.integers(1, 3),
       s=st.integers(1, 3), cfg=st.sampled_from([*CONFIGS.values(), CRAMPED]))
def test_random_maxpool_matches_golden(c, h, w, k, s, cfg):
    if k > min(h, w):
        k = min(h, w)
    check(QModel("pool", (c, h, w), 3, [pool("p", "input", c, h, w, k, s)]), cfg, n=1)


def test_linear_on_a_vector_input_with_wide_k():
    rng = np.random.default_rng(3)
    layers = [conv(rng, "fc1", "input", 200, 30, 1, 1, 1, 1, 0, "relu"),
              conv(rng, "fc2", "fc1", 30, 10, 1, 1, 1, 1, 0, "none")]
    compiled, _ = check(QModel("mlp", (200, 1, 1), 4, layers), CONFIGS["default"])
    assert compiled.useful_macs == 200 * 30 + 30 * 10


def test_layer_too_big_for_the_buffers_is_a_clear_error():
    rng = np.random.default_rng(0)
    layer = conv(rng, "huge", "input", 4, 4, 3, 3, 600, 1, 1, "none")
    with pytest.raises(HwqError, match="layer 'huge' does not fit the hardware: one input row"):
        compile_model(QModel("m", (4, 3, 600), 4, [layer]), CONFIGS["small"])


def test_program_ends_and_data_precedes_it():
    rng = np.random.default_rng(0)
    compiled = compile_model(QModel("m", (2, 4, 4), 4, [conv(rng, "c", "input", 2, 3, 3, 4, 4, 1, 1, "relu")]),
                             CONFIGS["default"])
    assert compiled.program[-1].op == "END"
    code = compiled.memmap.by_name("program")
    assert code.word == compiled.start_pc
    assert all(r.word + r.words <= code.word for r in compiled.memmap.regions if r is not code)


def test_config_rejects_what_the_isa_cannot_address():
    with pytest.raises(HwqError, match="ibuf_depth"):
        HwConfig(ibuf_depth=1 << 15)
    with pytest.raises(HwqError, match="bus_bytes"):
        HwConfig(rows=4, cols=4, bus_bytes=8)


def test_linear_wider_than_ibuf_is_split_into_input_groups():
    """784 -> 300 on an array whose ibuf holds a quarter of the input vector."""
    rng = np.random.default_rng(4)
    cfg = dataclasses.replace(CONFIGS["default"], name="narrow-ibuf", ibuf_depth=32, wbuf_depth=64,
                              bbuf_depth=16)
    layers = [conv(rng, "fc", "input", 784, 300, 1, 1, 1, 1, 0, "relu")]
    compiled, _ = check(QModel("wide", (784, 1, 1), 4, layers), cfg, n=1)
    loads = [i for i in compiled.program if i.op == "LOAD" and i["buf"] == 0]
    assert len(loads) == 98 * 38  # every input block, once per output block
