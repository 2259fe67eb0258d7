"""QAT: the fake-quant rounding is requant.py's rule, the net in eval mode is the golden
model bit for bit, and a QAT-trained LeNet exports to a QModel that the ISS runs exactly
as golden computes it."""
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hwq.compiler.datasets import digits_split
from hwq.compiler.frontend import trace
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.config import load_quant_config, parse_quant_config
from hwq.compiler.quant.qat import ROUNDERS, FakeQuantNet, round_clamp, train_qat
from hwq.arch.requant import ROUND_MODES, quantize_float, round_shift
from hwq.arch.config import load_hw_config
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

EXAMPLE = Path(__file__).resolve().parent.parent / "hwq" / "examples" / "lenet_digits.py"


def lenet():
    spec = importlib.util.spec_from_file_location("lenet_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pretrained()


@pytest.mark.parametrize("mode", list(ROUND_MODES))
def test_rounders_are_the_requant_rule(mode):
    rng = np.random.default_rng(0)
    acc = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 20000), np.arange(-64, 65)])
    for shift in range(0, 13):
        want = round_shift(acc, shift, mode)
        got = ROUNDERS[mode](torch.from_numpy(acc).double() * 2.0 ** -shift).numpy()
        assert np.array_equal(got, want), (mode, shift)
    # and quantize_float's, on float32 values at a fix position (ties included)
    x = np.concatenate([rng.normal(size=5000) * 3, np.arange(-40, 41) / 16]).astype(np.float32)
    for f in (-2, 0, 3, 7):
        want = quantize_float(x, f, mode)
        got = round_clamp(torch.from_numpy(x).double() * 2.0 ** f, mode, -128, 127).numpy()
        assert np.array_equal(got, want.astype(np.float64)), (mode, f)


def test_straight_through_gradient():
    v = torch.tensor([0.4, 1.6, 300.0], dtype=torch.float64, requires_grad=True)
    round_clamp(v, "half_up", -128, 127).sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 0.0]   # identity through rounding, zero when saturated


@pytest.fixture(scope="module")
def lenet_ptq():
    model = lenet()
    graph = trace(model, (1, 8, 8), "lenet")
    x_train, y_train, x_test, _ = digits_split()
    config = load_quant_config()
    return graph, config, quantize(graph, x_train[:256], config, progress=False), x_train, y_train, x_test


def golden_output(qmodel, x):
    out = run_golden(qmodel, qmodel.quantize_input(x))[qmodel.layers[-1].name]
    return qmodel.dequantize_output(out).reshape(len(x), -1)


def test_fake_quant_eval_is_golden(lenet_ptq):
    graph, config, qmodel, _, _, x_test = lenet_ptq
    net = FakeQuantNet(graph, qmodel, config).eval()
    with torch.no_grad():
        fake = net(torch.from_numpy(x_test)).numpy().reshape(len(x_test), -1)
    assert np.array_equal(fake, golden_output(qmodel, x_test))
    exported = net.export()   # untrained: the very QModel it came from
    for a, b in zip(qmodel.layers, exported.layers):
        assert (a.f_in, a.f_out, a.f_w, a.lo, a.hi) == (b.f_in, b.f_out, b.f_w, b.lo, b.hi)
        if a.weight is not None:
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


@pytest.mark.parametrize("fix_mode, per_channel", [("derive", False), ("learn", True)])
def test_qat_export_is_bit_exact(lenet_ptq, fix_mode, per_channel):
    graph, config, qmodel, x_train, y_train, x_test = lenet_ptq
    if per_channel:
        data = config.as_dict()
        data["tensor_quantize_config"]["weights"]["per_channel"] = True
        config = parse_quant_config(data, "per-channel")
        qmodel = quantize(graph, x_train[:256], config, progress=False, hardware=False)
    net = train_qat(graph, qmodel, config, x_train[:384], y_train[:384], epochs=1,
                    fix_mode=fix_mode, freeze_bn_step=3)
    mean_after_freeze = net.bn_mean_conv1.clone()
    exported = net.export()
    assert int(net.step) == 6 and torch.equal(net.bn_mean_conv1, mean_after_freeze)
    assert [l.f_wc is not None for l in exported.layers if l.kind == "conv"] == [per_channel] * 4
    if per_channel:
        assert len(exported.layers[0].f_wc) == 8
    with torch.no_grad():
        fake = net(torch.from_numpy(x_test)).numpy().reshape(len(x_test), -1)
    assert np.array_equal(fake, golden_output(exported, x_test))
    cfg = load_hw_config("default")
    compiled = compile_model(exported, cfg)
    x_q = exported.quantize_input(x_test[:4])
    shapes = {"input": exported.input_shape, **{l.name: l.out_shape for l in exported.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x_q, "iss")
    golden = run_golden(exported, x_q)
    assert result.ok and first_mismatch(result, golden, list(golden), cfg.cols) is None


def test_qat_from_qmodel_weights(lenet_ptq):
    """init="qmodel" with fix_mode "keep": step 0 is the QModel itself (so QAT can continue
    from fast finetune's weights), and a short distillation run, cosine-decayed, still
    exports a QModel at the same fix positions that golden runs as the net computes it."""
    graph, config, qmodel, x_train, _, x_test = lenet_ptq
    net = FakeQuantNet(graph, qmodel, config, "keep", init="qmodel").eval()
    assert not any(name.startswith("bn_") for name, _ in net.named_buffers())   # BN folded
    for a, b in zip(qmodel.layers, net.export().layers):
        assert (a.f_in, a.f_out, a.f_w) == (b.f_in, b.f_out, b.f_w)
        if a.weight is not None:
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    # from a start whose biases are off by up to 40 codes, one epoch lowers the loss and
    # the trained net is kept (a PTQ model near its best may end the epoch worse, and
    # its start is kept: which, depends on the libraries' numerics)
    config = parse_quant_config({**config.as_dict(), "activation_signedness": "signed"}, "test")
    ptq = quantize(graph, x_train[:256], config, progress=False)
    rng = np.random.default_rng(0)
    qmodel = dataclasses.replace(ptq, layers=[
        dataclasses.replace(l, bias=(l.bias + rng.integers(-40, 41, l.bias.shape)).astype(l.bias.dtype))
        if l.weight is not None else l for l in ptq.layers])
    net = train_qat(graph, qmodel, config, x_train[:256], None, epochs=1, lr=1e-3,
                    fix_mode="keep", init="qmodel", schedule="cosine")
    assert int(net.step) == 4   # trained, and kept (its loss is below the start's)
    exported = net.export()
    fixes = lambda m: [(l.f_in, l.f_out, l.f_w) for l in m.layers]   # noqa: E731
    assert fixes(exported) == fixes(qmodel)
    assert any(not np.array_equal(a.bias, b.bias) for a, b in zip(qmodel.layers, exported.layers)
               if a.weight is not None)   # it moved
    with torch.no_grad():
        fake = net(torch.from_numpy(x_test)).numpy().reshape(len(x_test), -1)
    assert np.array_equal(fake, golden_output(exported, x_test))


def test_train_qat_rejects_unknown_modes(lenet_ptq):
    graph, config, qmodel, x_train, y_train, _ = lenet_ptq
    with pytest.raises(ValueError, match="fix_mode"):
        FakeQuantNet(graph, qmodel, config, "fixed")
    with pytest.raises(ValueError, match="schedule"):
        train_qat(graph, qmodel, config, x_train[:64], y_train[:64], schedule="linear")


def test_qat_from_qmodel_keeps_a_better_start(lenet_ptq):
    """A run that ends with a higher loss on the training set than the QModel it started
    from (here: a step size far too large) returns the start."""
    graph, config, qmodel, x_train, _, _ = lenet_ptq
    net = train_qat(graph, qmodel, config, x_train[:128], None, epochs=1, lr=1.0,
                    fix_mode="keep", init="qmodel")
    for a, b in zip(qmodel.layers, net.export().layers):
        if a.weight is not None:
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
