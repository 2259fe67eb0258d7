"""Fast finetune (AdaQuant): its config fields, and that the tuned model is a normal QModel
-- PTQ's fix positions, int8 weights that the golden model runs exactly as an
independent evaluation of the integer layers does -- that fits float better than PTQ."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from hwq.cli import main
from hwq.compiler.datasets import digits_split
from hwq.compiler.frontend import trace
from hwq.compiler.quant.adaquant import fast_finetune
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.config import load_quant_config, parse_quant_config
from hwq.compiler.quant.report import fake_quant_net, sqnr_db
from hwq.arch.requant import requantize
from hwq.errors import HwqError
from hwq.sim.golden import run_golden

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = load_quant_config()


def config_with(**top):
    data = DEFAULT.as_dict()
    data.update(top)
    return parse_quant_config(data, "test")


@pytest.mark.parametrize("top, fragment", [
    ({"fast_finetune": "yes"}, "fast_finetune: 'yes' must be true or false"),
    ({"fast_finetune": True, "fast_finetune_steps": 0}, "fast_finetune_steps: 0 must be in (0, 100000]"),
    ({"fast_finetune": True, "fast_finetune_steps": -5}, "fast_finetune_steps: -5 must be in (0, 100000]"),
    ({"fast_finetune": True, "fast_finetune_steps": 2.5}, "fast_finetune_steps: 2.5 must be an integer"),
    ({"fast_finetune": True, "fast_finetune_steps": "300"}, "fast_finetune_steps: '300' must be an integer"),
    ({"fast_finetune": True, "fast_finetune_steps": True}, "fast_finetune_steps: True must be an integer"),
    ({"fast_finetune_steps": 100}, "fast_finetune_steps: is set but fast_finetune is false, so it "
                                   "would do nothing; set fast_finetune: true or remove it"),
    ({"fast_finetune": True, "weight_clustering": True},
     "fast_finetune: true cannot go with weight_clustering: true"),
])
def test_config_errors(top, fragment):
    with pytest.raises(HwqError) as info:
        config_with(**top)
    message = str(info.value)
    assert message.startswith("quant config test: ") and "\n" not in message
    assert fragment in message, message


def test_config_fields_round_trip():
    config = config_with(fast_finetune=True, fast_finetune_steps=7)
    assert config.switches["fast_finetune"] and config.options["fast_finetune_steps"] == 7
    again = parse_quant_config(config.as_dict(), "copy")
    assert (again.switches, again.options) == (config.switches, config.options)
    # off, its setting is not written out, so the copy reads back as valid
    assert "fast_finetune_steps" not in DEFAULT.as_dict() and DEFAULT.options["fast_finetune_steps"] == 300
    shipped = load_quant_config(ROOT / "hwq" / "configs" / "quant" / "fast_finetune.yaml")
    assert shipped.switches["fast_finetune"] and shipped.options["fast_finetune_steps"] == 300


def mlp_graph(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    return trace(model, (1, 4, 4), "mlp")


def integer_mlp(qmodel, x_int8):
    """The integer layers evaluated directly: int64 matmul + bias, then the one
    requantization rule with each layer's shift, rounding and clamp."""
    v = x_int8.reshape(len(x_int8), -1).astype(np.int64)
    for q in qmodel.layers:
        if q.kind == "conv":
            acc = v @ q.weight.reshape(len(q.weight), -1).astype(np.int64).T + q.bias
            v = requantize(acc, q.shift, q.round_mode, q.lo, q.hi).astype(np.int64)
    return v


def same_fix_positions(a, b):
    return all((p.f_in, p.f_out, p.f_w, p.lo, p.hi, p.shift) == (t.f_in, t.f_out, t.f_w, t.lo, t.hi, t.shift)
               for p, t in zip(a.layers, b.layers))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 16), mode=st.sampled_from(["half_up", "half_even", "half_down", "std_round"]))
def test_finetuned_mlp_runs_bit_exact(seed, mode):
    data = DEFAULT.as_dict()
    data["tensor_quantize_config"]["weights"]["round_mode"] = mode
    config = parse_quant_config(data, "test")
    graph = mlp_graph(seed)
    x = np.random.default_rng(seed).normal(size=(48, 1, 4, 4)).astype(np.float32)
    ptq = quantize(graph, x, config, progress=False)
    tuned = fast_finetune(graph, ptq, x, config, steps=6, progress=False)
    assert same_fix_positions(ptq, tuned)
    assert all(q.weight.dtype == np.int8 and q.bias.dtype == np.int32 for q in tuned.layers if q.kind == "conv")
    x_int = tuned.quantize_input(x)
    golden = run_golden(tuned, x_int)[tuned.layers[-1].name].reshape(len(x), -1)
    assert np.array_equal(golden, integer_mlp(tuned, x_int))
    with torch.no_grad():
        fake = fake_quant_net(graph, tuned, config)(torch.from_numpy(x)).numpy().reshape(len(x), -1)
    assert np.array_equal(fake, tuned.dequantize_output(golden))


@pytest.fixture(scope="module")
def lenet():
    spec = importlib.util.spec_from_file_location("lenet_digits", ROOT / "hwq" / "examples" / "lenet_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x_train, _, x_test, _ = digits_split()
    return trace(module.pretrained(), (1, 8, 8), "lenet"), x_train[:256], x_test


def golden_logits(qmodel, x):
    out = run_golden(qmodel, qmodel.quantize_input(x))[qmodel.layers[-1].name]
    return qmodel.dequantize_output(out).reshape(len(x), -1)


def test_lenet_fits_float_better(lenet):
    # without bias correction, which already removes the mean error that is most of what
    # tuning gains on LeNet: here the tuning alone is measured
    graph, calib, x_test = lenet
    ptq = quantize(graph, calib, config_with(include_bias_corr=False), progress=False)
    tuned = quantize(graph, calib, config_with(include_bias_corr=False, fast_finetune=True,
                                               fast_finetune_steps=100), progress=False)
    assert same_fix_positions(ptq, tuned) and tuned.quant_config["fast_finetune"]
    errors = [q.stats["fast_finetune_mse"] for q in tuned.layers if q.kind == "conv"]
    assert len(errors) == 4 and all(after <= before for before, after in errors)
    assert sum(a for _, a in errors) < 0.9 * sum(b for b, _ in errors)
    assert any(not np.array_equal(p.weight, t.weight) for p, t in zip(ptq.layers, tuned.layers) if p.kind == "conv")
    assert tuned.layers[0].stats["method"] == "maxmin"   # PTQ's calibration record is kept
    # on held-out digits, against the float logits
    float_logits = graph.module(torch.from_numpy(x_test)).detach().numpy()
    assert sqnr_db(float_logits, golden_logits(tuned, x_test)) > sqnr_db(float_logits, golden_logits(ptq, x_test)) + 1
    # the torch model of the tuned QModel (BatchNorm folded conv1 included) is golden, bit for bit
    with torch.no_grad():
        fake = fake_quant_net(graph, tuned, DEFAULT)(torch.from_numpy(x_test)).numpy().reshape(len(x_test), -1)
    assert np.array_equal(fake, golden_logits(tuned, x_test))


def test_progress(capsys):
    x = np.random.default_rng(0).normal(size=(16, 1, 4, 4)).astype(np.float32)
    quantize(mlp_graph(0), x, config_with(fast_finetune=True, fast_finetune_steps=3), progress=True)
    err = capsys.readouterr().err
    assert "fast finetune  [####################] 6/6 steps" in err and "mse" in err


def test_quantize_report_shows_it(tmp_path, capsys):
    (tmp_path / "ft.yaml").write_text((ROOT / "hwq" / "configs" / "quant" / "fast_finetune.yaml").read_text()
                                      .replace("fast_finetune_steps: 300", "fast_finetune_steps: 20"))
    assert main(["quantize", f"{ROOT / 'hwq' / 'examples' / 'lenet_digits.py'}:LeNet", "--input-shape", "1x8x8",
                 "--calib", "digits", "-o", str(tmp_path / "out"), "--quant-config", str(tmp_path / "ft.yaml"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "fast finetune (20 steps per layer)" in out and "| fc2 | " in out
    assert "| conv1 | conv | auto: " in out   # the config's method auto, with what each layer took
    assert "fake_quant_agreement" in out
