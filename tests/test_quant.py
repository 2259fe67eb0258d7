"""Quantization config, max-min calibration, the accumulator proof and the golden model."""
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hwq.compiler.datasets import calibration_set, digits_split
from hwq.compiler.frontend import trace
from hwq.compiler.ir import Graph, Layer, QLayer, QModel
from hwq.compiler.quant.calibrate import check_accumulator_bounds
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.methods import ZERO_RANGE_FIX, fix_position
from hwq.compiler.quant.config import CONFIGS, load_quant_config, parse_quant_config

DEFAULT_PATH = CONFIGS / "default.yaml"
from hwq.arch.requant import ROUND_MODES, requantize
from hwq.errors import HwqError
from hwq.sim.golden import conv_accumulators, run_golden

EXAMPLE = Path(__file__).resolve().parent.parent / "hwq" / "examples" / "lenet_digits.py"


# --- config -------------------------------------------------------------------------

def test_default_config_is_the_dpu_one():
    config = load_quant_config()
    assert [config.input.round_mode, config.weights.round_mode, config.bias.round_mode,
            config.activation.round_mode] == ["std_round", "std_round", "std_round", "half_up"]
    assert config.weights.method == "maxmin" and config.weights.scale_type == "poweroftwo"
    assert config.source == str(DEFAULT_PATH)


def test_config_round_trips_through_its_dict():
    config = load_quant_config()
    again = parse_quant_config(config.as_dict(), "copy")
    assert [getattr(again, t) for t in ("input", "weights", "bias", "activation")] == \
        [getattr(config, t) for t in ("input", "weights", "bias", "activation")]


def write_config(tmp_path, edit):
    import yaml

    data = yaml.safe_load(DEFAULT_PATH.read_text())
    edit(data)
    path = tmp_path / "quant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def set_key(*keys_value):
    *keys, last, value = keys_value

    def edit(data):
        for k in keys:
            data = data.setdefault(k, {})
        data[last] = value
    return edit


@pytest.mark.parametrize("edit, fragments", [
    (set_key("calib_size", 10), ["calib_size: unknown key; allowed: target_device"]),
    (set_key("tensor_quantize_config", "weights", "roundmode", "half_up"),
     ["tensor_quantize_config.weights.roundmode: unknown key; allowed: bit_width, method"]),
    (set_key("tensor_quantize_config", "grads", {}), ["tensor_quantize_config.grads: unknown key"]),
    (set_key("tensor_quantize_config", "activation", "round_mode", "half_away"),
     ["tensor_quantize_config.activation.round_mode: 'half_away' is not one of "
      "half_up, half_even, half_down, std_round"]),
    (set_key("overall_quantize_config", "per_channel", True),
     ["tensor_quantize_config.input.per_channel: true is not supported: hwq quantizes weights "
      "per channel only; set it false for input"]),
    (set_key("tensor_quantize_config", "activation", "method", "kmeans"),
     ["tensor_quantize_config.activation.method: 'kmeans' is not one of maxmin, percentile, "
      "entropy, mse, diffs"]),
    (set_key("tensor_quantize_config", "activation", "calib_statistic_method", "min"),
     ["calib_statistic_method: 'min' is not one of modal, max, mean, median"]),
    (set_key("tensor_quantize_config", "activation", "percentage", 101),
     ["tensor_quantize_config.activation.percentage: 101.0 must be in (0, 100]"]),
    (set_key("overall_quantize_config", "bit_width", "8"), ["bit_width: '8' must be an integer"]),
    (set_key("overall_quantize_config", "bit_width", 4),
     ["bit_width: 4 is not supported by the int8 power-of-two hardware; use 8"]),
    (set_key("overall_quantize_config", "symmetry", "yes please"), ["symmetry: 'yes please' must be true or false"]),
    (set_key("overall_quantize_config", "scale_type", "log"), ["scale_type: 'log' is not one of float, poweroftwo"]),
    (set_key("keep_first_last_layer_accuracy", True),
     ["keep_first_last_layer_accuracy: true is not supported: the array is int8-only"]),
    (set_key("keep_add_layer_accuracy", True), ["keep_add_layer_accuracy: true is not supported: the array is int8-only"]),
    (set_key("include_cle", "yes"), ["include_cle: 'yes' must be true or false"]),
    (set_key("layer_quantize_config", {"layer_name": "x"}), ["layer_quantize_config: must be a list, got dict"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "layer_type": "Conv2d"}]),
     ["layer_quantize_config[0]: give exactly one of layer_type and layer_name"]),
    (set_key("layer_quantize_config", [{"layer_type": "torch.nn.Conv3d"}]),
     ["layer_quantize_config[0].layer_type: 'torch.nn.Conv3d' is not a layer hwq compiles"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "quantize": 1}]),
     ["layer_quantize_config[0].quantize: unknown key; allowed: layer_type, layer_name"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "tensor_quantize_config": {"input": {}}}]),
     ["layer_quantize_config[0].tensor_quantize_config.input: unknown key; allowed: weights, bias, activation"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "overall_quantize_config": {"method": "avg"}}]),
     ["layer_quantize_config[0].overall_quantize_config.method: 'avg' is not one of maxmin"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "overall_quantize_config": {"per_channel": True}}]),
     ["layer_quantize_config[0]: per_channel true would apply to the activation"]),
    (set_key("overall_quantize_config", "method", "auto"),
     ["overall_quantize_config.method: auto is for activations only: it compares each layer's "
      "quantized output with float, and input is no layer's output; set it under "
      "tensor_quantize_config.activation and give input one of maxmin, percentile, entropy, mse, diffs"]),
    (set_key("tensor_quantize_config", "weights", "method", "auto"),
     ["tensor_quantize_config.weights.method: auto is for activations only"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "overall_quantize_config": {"method": "auto"}}]),
     ["layer_quantize_config[0]: method auto would apply to the weights, and it is for activations "
      "only; set it under tensor_quantize_config.activation"]),
    (set_key("layer_quantize_config", [{"layer_name": "x", "tensor_quantize_config": {"weights": {"method": "auto"}}}]),
     ["layer_quantize_config[0]: method auto would apply to the weights"]),
    (set_key("target_device", "CPU"), ["target_device: 'CPU' is not supported"]),
    (lambda d: d["overall_quantize_config"].pop("signed"), ["overall_quantize_config: missing signed"]),
    (set_key("tensor_quantize_config", "bias", 3), ["tensor_quantize_config.bias: must be a mapping"]),
])
def test_config_errors(tmp_path, edit, fragments):
    path = write_config(tmp_path, edit)
    with pytest.raises(HwqError) as info:
        load_quant_config(path)
    message = str(info.value)
    assert message.startswith(f"quant config {path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_config_file_problems(tmp_path):
    with pytest.raises(HwqError, match="missing.yaml not found"):
        load_quant_config(tmp_path / "missing.yaml")
    with pytest.raises(HwqError, match="quant config 'nosuch' not found; available: default, "
                       "fast_finetune, percentile_perchannel"):
        load_quant_config("nosuch")
    (tmp_path / "latin1.yaml").write_bytes("m\xe9thode: maxmin\n".encode("latin-1"))
    with pytest.raises(HwqError, match="not a text file"):
        load_quant_config(tmp_path / "latin1.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(HwqError, match="not valid YAML"):
        load_quant_config(tmp_path / "bad.yaml")


def test_auto_method_parses(tmp_path):
    config = load_quant_config(write_config(tmp_path, set_key("tensor_quantize_config", "activation", "method", "auto")))
    assert (config.activation.method, config.input.method, config.weights.method) == ("auto", "maxmin", "maxmin")
    assert config.uses_auto() and not load_quant_config().uses_auto()
    assert parse_quant_config(config.as_dict(), "copy").activation == config.activation
    rule = set_key("layer_quantize_config", [{"layer_name": "c", "tensor_quantize_config": {"activation": {"method": "auto"}}}])
    by_rule = load_quant_config(write_config(tmp_path, rule))
    assert by_rule.activation.method == "maxmin" and by_rule.uses_auto()
    assert by_rule.for_layer(Layer("c", "conv", "input", (1, 1, 1), (1, 1, 1)))["activation"].method == "auto"


def test_per_tensor_override(tmp_path):
    path = write_config(tmp_path, set_key("tensor_quantize_config", "activation", "round_mode", "half_even"))
    config = load_quant_config(path)
    assert (config.activation.round_mode, config.weights.round_mode) == ("half_even", "std_round")


# --- calibration --------------------------------------------------------------------

@pytest.mark.parametrize("absmax, f", [
    (0.75, 7), (1.0, 6), (127 / 64, 6), (127.0, 0), (128.0, -1), (200.0, -1), (1000.0, -3),
    (1e-3, 16), (0.0, ZERO_RANGE_FIX),
])
def test_fix_position(absmax, f):
    assert fix_position(absmax) == f
    assert absmax * 2.0 ** f <= 127
    assert absmax == 0 or absmax * 2.0 ** (f + 1) > 127


def one_conv_graph(weight, bias, act="none"):
    w = np.array(weight, np.float32).reshape(1, 1, 1, 1)
    layer = Layer(name="c", kind="conv", input="input", in_shape=(1, 1, 1), out_shape=(1, 1, 1),
                  weight=w, bias=np.array([bias], np.float32), act=act)
    return Graph(name="one", input_shape=(1, 1, 1), layers=[layer])


def test_maxmin_by_hand():
    calib = np.array([-3.0, 1.0, 2.0], np.float32).reshape(3, 1, 1, 1)
    # y = 0.75 x + 0.3 over the set: -1.95, 1.05, 1.8
    q = quantize(one_conv_graph(0.75, 0.3), calib, load_quant_config(), progress=False)
    layer = q.layers[0]
    assert q.f_input == 5                 # 3.0 * 2**5 = 96 <= 127 < 192
    assert layer.f_w == 7                 # 0.75 * 2**7 = 96
    assert layer.f_out == 6               # 1.95 * 2**6 = 124.8
    assert layer.shift == 6 and (layer.lo, layer.hi) == (-128, 127)
    assert layer.weight.tolist() == [[[[96]]]] and layer.weight.dtype == np.int8
    assert layer.bias.tolist() == [1229] and layer.bias.dtype == np.int32   # 0.3 * 2**12 = 1228.8
    assert layer.stats["absmax"] == pytest.approx(1.95) and layer.stats["weight_absmax"] == 0.75
    assert layer.round_mode == "half_up"
    assert q.quant_config["tensor_quantize_config"]["weights"]["round_mode"] == "std_round"

    relu = quantize(one_conv_graph(0.75, 0.3, act="relu6"), calib, load_quant_config(), progress=False)
    # int8 (the default activation_signedness: signed): 1.8 * 2**6 = 115.2 <= 127
    assert (relu.layers[0].f_out, relu.layers[0].lo, relu.layers[0].hi) == (6, 0, 127)
    # uint8 (auto): 1.8 * 2**7 = 230.4 <= 255
    unsigned = dataclasses.replace(load_quant_config(), activation_signedness="auto")
    relu = quantize(one_conv_graph(0.75, 0.3, act="relu6"), calib, unsigned, progress=False)
    assert (relu.layers[0].f_out, relu.layers[0].lo, relu.layers[0].hi) == (7, 0, 255)


def test_calibration_data_checked():
    with pytest.raises(HwqError, match=r"calibration data has shape \(3, 2\)"):
        quantize(one_conv_graph(1.0, 0.0), np.zeros((3, 2), np.float32), load_quant_config())
    with pytest.raises(HwqError, match="the calibration input is not finite"):
        quantize(one_conv_graph(1.0, 0.0), np.full((2, 1, 1, 1), np.inf, np.float32), load_quant_config())


def test_progress(capsys):
    calib = np.ones((2, 1, 1, 1), np.float32)
    quantize(one_conv_graph(1.0, 0.0), calib, load_quant_config(), progress=True)
    err = capsys.readouterr().err
    assert "calibrating  [####################] 1/1 layers" in err and err.endswith("\n")
    quantize(one_conv_graph(1.0, 0.0), calib, load_quant_config(), progress=False)
    assert capsys.readouterr().err == ""


def conv_qmodel(weight, bias, source="forward line 7"):
    layer = QLayer(name="big", kind="conv", input="input", in_shape=(weight.shape[1], 1, 1),
                   out_shape=(weight.shape[0], 1, 1), f_in=0, f_out=0, source=source,
                   weight=weight, bias=np.asarray(bias, np.int32))
    return QModel(name="m", input_shape=layer.in_shape, f_input=0, layers=[layer])


def test_accumulator_bound_exactly_at_int32():
    # sum|w| = 127 * 132104 + 7 = 2**24 - 1, and (2**24 - 1) * 128 + 127 = 2**31 - 1
    w = np.full((1, 132105, 1, 1), 127, np.int8)
    w[0, -1] = -7
    check_accumulator_bounds(conv_qmodel(w, [-127]))
    with pytest.raises(HwqError) as info:
        check_accumulator_bounds(conv_qmodel(w, [-128]))
    assert str(info.value) == (
        "layer 'big' (forward line 7): its int32 accumulator can overflow: worst case |acc| = "
        "2,147,483,648 > 2**31-1 with fan-in 132105; reduce the layer's fan-in "
        "(in_channels x kernel size) or its bias range")


@pytest.mark.parametrize("weight, bias, f_w", [
    (1e-3, 1000.0, 16),     # f_w 16, input f 6: the bias lands at fix 22, where 1000 is ~2**32
    (1e-30, 0.5, 106),      # a dead layer: the bias at fix 112 is ~2**111
])
def test_quantize_refuses_weights_too_small_for_their_bias(weight, bias, f_w):
    calib = np.array([-1.0, 1.0], np.float32).reshape(2, 1, 1, 1)
    with pytest.raises(HwqError) as info:
        quantize(one_conv_graph(weight, bias), calib, load_quant_config(), progress=False)
    assert str(info.value) == (
        f"layer 'c': its weights (max |w| = {weight:.3g}) are too small to represent in int8 "
        f"next to its bias ({bias:.3g}): at their fix position {f_w} the bias overflows int32 "
        "and the layer's output is its bias alone (a dead layer?); check that its weights are "
        "trained or loaded")


def test_dead_output_channel_is_named():
    import dataclasses
    config = load_quant_config()
    config = dataclasses.replace(config, weights=dataclasses.replace(config.weights, per_channel=True))
    calib = np.array([-1.0, 1.0], np.float32).reshape(2, 1, 1, 1)
    layer = Layer(name="c", kind="conv", input="input", in_shape=(1, 1, 1), out_shape=(2, 1, 1),
                  weight=np.array([0.5, 1e-30], np.float32).reshape(2, 1, 1, 1),
                  bias=np.array([0.5, 0.5], np.float32), source="forward line 3")
    with pytest.raises(HwqError, match=r"^layer 'c' \(forward line 3\): its output channel 1's "
                       r"weights \(max \|w\| = 1e-30\) are too small"):
        quantize(Graph(name="one", input_shape=(1, 1, 1), layers=[layer]), calib, config,
                 progress=False)


# --- golden model -------------------------------------------------------------------

def slow_conv(x, weight, bias, stride, padding):
    """conv + bias straight from the definition, one output at a time."""
    n, c, h, w = x.shape
    cout, _, k, _ = weight.shape
    xp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), np.int64)
    xp[:, :, padding:padding + h, padding:padding + w] = x
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    acc = np.zeros((n, cout, oh, ow), np.int64)
    for b in range(n):
        for o in range(cout):
            for i in range(oh):
                for j in range(ow):
                    window = xp[b, :, i * stride:i * stride + k, j * stride:j * stride + k]
                    acc[b, o, i, j] = int(bias[o]) + sum(
                        int(a) * int(v) for a, v in zip(window.ravel(), weight[o].ravel()))
    return acc


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 2), cin=st.integers(1, 3), cout=st.integers(1, 3),
       k=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 2),
       shift=st.integers(-2, 14), mode=st.sampled_from(sorted(ROUND_MODES)),
       act=st.sampled_from([(-128, 127), (0, 127), (0, 96)]), seed=st.integers(0, 2 ** 32 - 1))
def test_golden_conv_matches_slow_loop(data, n, cin, cout, k, stride, padding, shift, mode, act, seed):
    h = data.draw(st.integers(max(1, k - 2 * padding), 7))
    w = data.draw(st.integers(max(1, k - 2 * padding), 7))
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (n, cin, h, w), dtype=np.int8)
    weight = rng.integers(-128, 128, (cout, cin, k, k), dtype=np.int8)
    bias = rng.integers(-(2 ** 20), 2 ** 20, cout, dtype=np.int32)
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    layer = QLayer(name="c", kind="conv", input="input", in_shape=(cin, h, w),
                   out_shape=(cout, oh, ow), f_in=shift, f_out=0, weight=weight, bias=bias,
                   stride=stride, padding=padding, round_mode=mode, lo=act[0], hi=act[1])
    want = slow_conv(x, weight, bias, stride, padding)
    assert np.array_equal(conv_accumulators(layer, x), want)
    qmodel = QModel(name="m", input_shape=(cin, h, w), f_input=0, layers=[layer])
    got = run_golden(qmodel, x)["c"]
    assert got.dtype == np.int8
    assert np.array_equal(got, requantize(want, shift, mode, act[0], act[1]))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 3), stride=st.integers(1, 3), h=st.integers(3, 7), seed=st.integers(0, 2 ** 32 - 1))
def test_golden_maxpool_and_flatten(k, stride, h, seed):
    x = np.random.default_rng(seed).integers(-128, 128, (2, 3, h, h), dtype=np.int8)
    o = (h - k) // stride + 1
    pool = QLayer(name="p", kind="maxpool", input="input", in_shape=(3, h, h), out_shape=(3, o, o),
                  f_in=0, f_out=0, kernel=k, stride=stride)
    flat = QLayer(name="f", kind="flatten", input="p", in_shape=(3, o, o), out_shape=(3 * o * o, 1, 1),
                  f_in=0, f_out=0)
    outs = run_golden(QModel(name="m", input_shape=(3, h, h), f_input=0, layers=[pool, flat]), x)
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x).float(), k, stride).numpy()
    assert np.array_equal(outs["p"], want.astype(np.int8))
    assert np.array_equal(outs["f"][:, :, 0, 0], torch.flatten(torch.from_numpy(want), 1).numpy())
    assert list(outs) == ["p", "f"]


def test_golden_conv_in_pieces(monkeypatch):
    """Batches and requantization row blocks split where they fall; the result must not change."""
    from hwq.sim import golden

    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (3, 2, 5, 5), dtype=np.int8)
    weight = rng.integers(-128, 128, (4, 2, 3, 3), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 4, dtype=np.int32)
    layer = QLayer(name="c", kind="conv", input="input", in_shape=(2, 5, 5), out_shape=(4, 3, 3),
                   f_in=6, f_out=0, weight=weight, bias=bias, stride=2, padding=1)
    qmodel = QModel(name="m", input_shape=(2, 5, 5), f_input=0, layers=[layer])
    monkeypatch.setattr(golden, "_BATCH", 2)
    monkeypatch.setattr(golden, "_REQUANT_BLOCK", 8)      # 2 output pixels of 4 channels per block
    want = requantize(slow_conv(x, weight, bias, 2, 1), 6, "half_up")
    assert np.array_equal(run_golden(qmodel, x)["c"], want)


def test_golden_input_checks():
    qmodel = conv_qmodel(np.ones((1, 2, 1, 1), np.int8), [0])
    with pytest.raises(HwqError, match="it must be int8"):
        run_golden(qmodel, np.zeros((1, 2, 1, 1), np.float32))


def test_input_quantization_and_output_dequantization():
    qmodel = conv_qmodel(np.ones((1, 2, 1, 1), np.int8), [0])
    qmodel.f_input, qmodel.layers[0].f_out = 4, 3
    x = np.array([0.5, -0.03125, 100.0, -0.09375], np.float32)   # 8, -0.5, clips, -1.5
    assert qmodel.quantize_input(x).tolist() == [8, -1, 127, -2]  # std_round: ties away from 0
    assert qmodel.dequantize_output(np.array([8, -128], np.int8)).tolist() == [1.0, -16.0]


def load_example():
    spec = importlib.util.spec_from_file_location("lenet_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lenet_int8_agrees_with_float():
    lenet = load_example()
    model = lenet.pretrained()
    _, _, x_test, y_test = digits_split()
    graph = trace(model, (1, 8, 8), "lenet")
    qmodel = quantize(graph, calibration_set("digits", (1, 8, 8)), load_quant_config(),
                      progress=False)
    golden = run_golden(qmodel, qmodel.quantize_input(x_test))
    logits = qmodel.dequantize_output(golden["fc2"]).reshape(len(x_test), 10)
    with torch.no_grad():
        float_pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    int8_pred = logits.argmax(1)
    assert (float_pred == y_test).mean() >= 0.95
    assert (int8_pred == float_pred).mean() >= 0.95
    assert (int8_pred == y_test).mean() >= 0.95


def test_calibration_sets(tmp_path):
    x = calibration_set("digits", (1, 8, 8), n=100)
    assert x.shape == (100, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert calibration_set("digits", (64, 1, 1), n=5).shape == (5, 64, 1, 1)
    with pytest.raises(HwqError, match=r"digits has 1x8x8 images \(or 64-vectors\) but the "
                       "model's input is 3x8x8"):
        calibration_set("digits", (3, 8, 8))
    with pytest.raises(HwqError, match="model's input is 4x4x4"):   # 64 values, not the image
        calibration_set("digits", (4, 4, 4))
    with pytest.raises(HwqError, match="unknown calibration set 'imagenet'; choose one of digits"):
        calibration_set("imagenet", (1, 8, 8))
    path = tmp_path / "calib.npy"
    np.save(path, np.ones((10, 2, 3, 3), np.float64))
    assert calibration_set(str(path), (2, 3, 3), n=4).shape == (4, 2, 3, 3)
    with pytest.raises(HwqError, match=r"it must hold real numbers of shape \(N, 1, 3, 3\)"):
        calibration_set(str(path), (1, 3, 3))
    assert calibration_set(np.zeros((3, 2, 3, 3)), (2, 3, 3)).dtype == np.float32
    with open(tmp_path / "two.npy", "wb") as f:            # an .npz under an .npy name
        np.savez(f, a=np.ones(3))
    with pytest.raises(HwqError, match="is an .npz archive, not an .npy array"):
        calibration_set(str(tmp_path / "two.npy"), (2, 3, 3))
    (tmp_path / "text.npy").write_text("1 2 3\n")
    with pytest.raises(HwqError, match="not a NumPy .npy file"):
        calibration_set(str(tmp_path / "text.npy"), (2, 3, 3))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(HwqError, match=r"Python objects \(pickled data\)"):
        calibration_set(str(tmp_path / "obj.npy"), (2, 3, 3))
