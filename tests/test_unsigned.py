"""Unsigned activations (quant config `activation_signedness: auto`): a ReLU's output and
what pools, adds and concatenates only such tensors stored as uint8, codes 0..255. The
requantization rule's uint8 clamp, the quantizer's choice, golden == ISS on every layer
kind (RTL: the slow test), and the signed default left as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.arch.requant import ROUND_MODES, Requantizer, quantize_float, relu_clamp, requantize, round_shift
from hwq.compiler.frontend import trace
from hwq.compiler.ir import unsigned_outputs
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.config import load_quant_config, parse_quant_config
from hwq.compiler.quant.emulate import dequantized
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.qat import FakeQuantNet
from hwq.errors import HwqError
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate
from test_lower import CONFIGS


def config(signedness: str = "auto", **switches):
    data = {**load_quant_config().as_dict(), "activation_signedness": signedness, **switches}
    return parse_quant_config(data, "test")


class Relus(nn.Module):
    """Every layer kind on uint8 tensors and beside signed ones: ReLU and ReLU6 convs, a
    max pool, an add of two uint8 tensors and one of uint8 and int8, average pools, a
    concat of uint8 and int8 parts, linears."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc1 = nn.Linear(64, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        p = F.max_pool2d(F.relu(self.conv1(x)), 2)      # uint8, 4x4
        b = F.relu6(self.conv2(p))                       # uint8
        r = F.relu(b + p)                                # uint8 + uint8
        m = b + self.conv3(p)                            # uint8 + int8: int8
        y = torch.cat([F.avg_pool2d(r, 2), F.avg_pool2d(m, 2)], 1)   # uint8 | int8
        return self.fc2(F.relu(self.fc1(torch.flatten(y, 1))))


def relus(signedness="auto", **switches):
    xf = np.random.default_rng(0).normal(size=(32, 3, 8, 8)).astype(np.float32)
    return quantize(trace(Relus(), (3, 8, 8), "relus"), xf, config(signedness, **switches),
                    progress=False), xf


# ---- the rule ----

@settings(max_examples=300, deadline=None)
@given(acc=st.integers(-(1 << 31), (1 << 31) - 1), shift=st.integers(-32, 31),
       mode=st.sampled_from(sorted(ROUND_MODES)), f_out=st.integers(-4, 12),
       act=st.sampled_from(["none", "relu", "relu6"]))
def test_requantize_unsigned_clamps_to_uint8(acc, shift, mode, f_out, act):
    """A uint8 output: the rounded value clamped to [0, 255] (ReLU6: 6 at its fix
    position, at most 255), as uint8; POST's byte is its low 8 bits."""
    lo, hi = relu_clamp(act, f_out, unsigned=True)
    assert lo == 0 and hi == (min(255, int(6 * 2.0 ** f_out)) if act == "relu6" else 255)
    got = requantize(np.array([acc]), shift, mode, lo, hi)
    assert got.dtype == (np.uint8 if hi > 127 else np.int8)
    wide = int(round_shift(np.clip(np.int64(acc), -256, 256) if shift < 0 else np.int64(acc), shift, mode))
    assert int(got[0]) == min(max(wide, lo), hi)
    assert np.array_equal(Requantizer(shift, mode, lo, hi)(np.array([acc])), got)


def test_relu_clamp_refuses_a_negative_unsigned_output():
    with pytest.raises(ValueError, match="cannot be stored unsigned"):
        relu_clamp("leaky_relu", 4, unsigned=True)


def test_quantize_float_unsigned_codes():
    x = np.array([0.0, 1.0, 7.9, 8.0, 100.0], np.float32)
    got = quantize_float(x, 5, "half_up", 0, 255)
    assert got.dtype == np.uint8 and got.tolist() == [0, 32, 253, 255, 255]
    assert np.allclose(dequantized(x, 5, "half_up", 0, 255), got / 32)


# ---- the quantizer ----

def test_which_tensors_are_unsigned():
    qmodel, _ = relus()
    got = {l.name: l.unsigned for l in qmodel.layers}
    kinds = {l.name: (l.kind, l.act) for l in qmodel.layers}
    for name, (kind, act) in kinds.items():
        if act in ("relu", "relu6"):
            assert got[name], name
        if kind == "conv" and act == "none":
            assert not got[name], name
    assert sum(got.values()) >= 6
    assert unsigned_outputs(qmodel.layers, "signed") == dict.fromkeys(["input", *got], False)
    for l in qmodel.layers:
        if l.unsigned and l.kind not in ("maxpool", "flatten", "view"):
            assert l.lo == 0 and l.hi > 127, l.name


def test_method_auto_chooses_among_uint8_fix_positions():
    """`method: auto` measures each candidate with the uint8 clamp; the result runs."""
    data = config().as_dict()
    data["tensor_quantize_config"]["activation"]["method"] = "auto"
    xf = np.random.default_rng(0).normal(size=(32, 3, 8, 8)).astype(np.float32)
    qmodel = quantize(trace(Relus(), (3, 8, 8), "relus"), xf, parse_quant_config(data, "t"),
                      progress=False)
    assert qmodel.layers[0].unsigned and qmodel.layers[0].stats["method"] == "auto"
    assert qmodel.layers[0].stats["threshold"] == 255 * 2.0 ** -qmodel.layers[0].f_out
    run_golden(qmodel, qmodel.quantize_input(xf[:2]))


def test_unsigned_fix_position_is_one_finer():
    """A ReLU's uint8 output at twice the resolution: maxmin picks f one finer than the
    int8 choice (same range, 255 codes instead of 127)."""
    signed, _ = relus("signed", include_bias_corr=False)
    auto, _ = relus("auto", include_bias_corr=False)
    first = signed.layers[0]
    assert first.act == "relu" and auto.layers[0].f_out == first.f_out + 1


def test_switch_is_recorded_and_checked():
    qmodel, _ = relus()
    assert qmodel.quant_config["activation_signedness"] == "auto"
    assert load_quant_config().as_dict()["activation_signedness"] in ("auto", "signed")
    with pytest.raises(HwqError, match="activation_signedness"):
        parse_quant_config({**load_quant_config().as_dict(), "activation_signedness": "uint8"}, "t")
    # a Vitis file without the key stores every activation signed, as the DPU does
    data = load_quant_config().as_dict()
    del data["activation_signedness"]
    assert parse_quant_config(data, "t").activation_signedness == "signed"


def test_qat_eval_equals_golden_with_unsigned_outputs():
    """QAT's integer-domain forward (eval, fix positions kept) models the uint8 clamp: it
    equals the golden model of its export bit for bit."""
    qmodel, xf = relus()
    cfg = config()
    net = FakeQuantNet(trace(Relus(), (3, 8, 8), "relus"), qmodel, cfg, fix_mode="keep").eval()
    exported = net.export()
    assert [l.unsigned for l in exported.layers] == [l.unsigned for l in qmodel.layers]
    with torch.no_grad():
        got = net(torch.from_numpy(xf[:8])).numpy()
    want = run_golden(exported, exported.quantize_input(xf[:8]), every_layer=False)
    assert np.array_equal(got, exported.dequantize_output(list(want.values())[0]))


# ---- golden == ISS ----

@pytest.mark.parametrize("name", list(CONFIGS))
def test_golden_equals_iss_on_unsigned_model(name):
    cfg = CONFIGS[name]
    qmodel, xf = relus()
    compiled = compile_model(qmodel, cfg)
    program = compiled.program
    # uint8 inputs on the array, an unsigned max pool, uint8 clamps -- and int8 beside them
    assert {i["inp_unsigned"] for i in program if i.op == "GEMM"} == {0, 1}
    assert {i["unsigned"] for i in program if i.op == "MAXPOOL"} == {1}
    assert {i["hi"] for i in program if i.op == "POST"} >= {127, 255}
    x = qmodel.quantize_input(xf[:3])
    golden = run_golden(qmodel, x)
    assert any(g.dtype == np.uint8 and g.max() > 127 for g in golden.values())
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    iss = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, "iss")
    assert iss.ok and first_mismatch(iss, golden, list(golden), cfg.cols) is None


def test_signed_setting_compiles_no_unsigned_instruction():
    """`signed`: the DPU's int8 program, every new field at its default."""
    qmodel, _ = relus("signed")
    program = compile_model(qmodel, CONFIGS["default"]).program
    assert not any(l.unsigned for l in qmodel.layers)
    assert all(i["inp_unsigned"] == 0 for i in program if i.op == "GEMM")
    assert all(i["unsigned"] == 0 for i in program if i.op == "MAXPOOL")
    assert all(-128 <= i["lo"] and i["hi"] <= 127 for i in program if i.op == "POST")


# ---- RTL ----

@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "small"])
def test_unsigned_model_on_rtl(name):
    """conv, max pool, average pool, add, concat and linear on uint8 tensors (and int8
    beside them) on the RTL: golden == ISS == RTL bit for bit, cycles and counters equal."""
    from test_e2e_rtl import _golden_iss_rtl
    qmodel, xf = relus()
    _golden_iss_rtl(qmodel, CONFIGS[name], qmodel.quantize_input(xf[:2]))
