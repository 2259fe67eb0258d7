"""Calibration methods, statistic methods, per-channel weights, layered configs and the
float rewrites (CLE, bias correction), each against a case worked by hand."""
import math

import numpy as np
import pytest
import torch.nn as nn
from hypothesis import assume, given, settings, strategies as st

from hwq.compiler.frontend import trace
from hwq.compiler.ir import Graph, Layer
from hwq.compiler.quant.float_model import run_float
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.config import METHODS, load_quant_config, parse_quant_config
from hwq.compiler.quant.methods import _kl_divergences, choose_fix, combine, kl_threshold, magnitude_histogram
from hwq.compiler.quant.report import method_label, sqnr_db, summary_markdown
from hwq.compiler.quant.rewrite import equalize
from hwq.errors import HwqError
from hwq.sim.golden import run_golden

DEFAULT = load_quant_config()


def config_with(**edits):
    """The default config with dotted-path edits, e.g. {"tensor_quantize_config.weights.method": "mse"}."""
    data = DEFAULT.as_dict()
    for path, value in edits.items():
        *keys, last = path.split("/")
        d = data
        for k in keys:
            d = d.setdefault(k, {})
        d[last] = value
    return parse_quant_config(data, "test")


# 99 values of 0.3 and one 2.0: max-min keeps 2.0 (f=5, step 1/32); f=6 clips 2.0 to
# 127/64 but rounds the 0.3s 4x finer, which wins in both squared and absolute error.
SKEWED = np.array([0.3] * 99 + [2.0], np.float32)
TQ = DEFAULT.activation


@pytest.mark.parametrize("method, x, f", [
    ("maxmin", np.array([0.5, -3.0], np.float32), 5),          # 3 * 2**5 = 96 <= 127 < 192
    ("maxmin", SKEWED, 5),
    ("mse", SKEWED, 6),    # f=5: 99 * 0.0125**2 = 0.0155; f=6: 99 * 0.003125**2 + 0.015625**2 = 0.0012
    ("diffs", SKEWED, 6),  # f=5: 99 * 0.0125 = 1.24; f=6: 99 * 0.003125 + 0.015625 = 0.33
    ("percentile", np.arange(1, 101, dtype=np.float32) / 10, 4),   # 50th: 5.05 * 16 = 80.8
])
def test_methods_by_hand(method, x, f):
    tq = TQ if method != "percentile" else config_with(**{"tensor_quantize_config/activation/percentage": 50.0}).activation
    assert choose_fix(method, x, tq, -128) == f


def test_diffs_compares_the_layer_output():
    # the output is the sum: f=5 misses by 99 * 0.0125 = 1.24, f=6 by |-0.309 - 0.016| = 0.33,
    # f=7 by |-0.309 - 1.008| = 1.32
    assert choose_fix("diffs", SKEWED, TQ, -128, respond=lambda v: np.sum(v, keepdims=True)) == 6


def test_entropy_threshold_by_hand():
    # |x| histogram over 8 bins of [0, 1]: 600 in bin 0, 399 in bin 2, one outlier in bin 7.
    # Clipping after bin 3 folds the outlier into bin 2, and the 2-level quantization of
    # [600, 0, 399] (levels {0, 1} | {2}) reproduces it up to that one sample: the least KL.
    # i=2 leaves bin 2 unrepresented (only smoothing mass); wider i smear mass over empty bins.
    a = np.array([0.05] * 600 + [0.3] * 399 + [1.0])
    assert kl_threshold(a, bins=8, levels=2, stride=1) == 0.375
    gauss = np.random.default_rng(0).normal(size=20000)
    gauss[0] = 1000.0
    assert choose_fix("maxmin", gauss, TQ, -128) == -3
    # 2048 bins of 1000/2048: the smallest candidate, 128 bins (62.5), already beats
    # smearing the Gaussian over 16-bin levels; 62.5 * 2 <= 127
    assert choose_fix("entropy", gauss, TQ, -128) == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), zeros=st.floats(0.3, 0.97), scale=st.floats(0.05, 20.0))
def test_entropy_on_relu6_outputs_does_not_clip_far_below_the_data(seed, zeros, scale):
    # a ReLU6 output: `zeros` of it exactly 0, the rest |normal| * scale clamped at 6. The
    # zeros once made the narrowest candidate win (one bin per level, where Q cannot
    # smear the zero spike), clipping most of the data: 16% and 27% of the depthwise
    # bench net's ReLU6 activations, logits SQNR 6.8 dB against max-min's 26.7
    rng = np.random.default_rng(seed)
    n = 4096
    x = np.minimum(np.abs(rng.normal(size=n)) * scale, 6.0).astype(np.float32)
    x[: int(zeros * n)] = 0.0
    f = choose_fix("entropy", x, TQ, -128)
    assert f <= choose_fix("maxmin", x, TQ, -128) + 1          # threshold >= half the range
    assert np.mean(x > 127 * 2.0 ** -f) < 0.01


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=300),
       st.integers(1, 2000))
def test_entropy_ignores_exact_zeros(values, zeros):
    a = np.array(values)
    assert kl_threshold(np.concatenate([a, np.zeros(zeros)])) == kl_threshold(a)


def test_entropy_keeps_a_discrete_input_whole():
    # digits pixels are k/16: nothing below the first candidates' cuts but the folded bin,
    # where smoothing alone would make Q equal P (a divergence of 0): entropy clipped the
    # input to 1/16 before that cut counted as an infinite divergence
    x = (np.random.default_rng(0).integers(0, 17, size=4096) / 16).astype(np.float32)
    assert choose_fix("entropy", x, TQ, -128) == choose_fix("maxmin", x, TQ, -128) == 6


def _kl_direct(hist, i, levels, eps=1e-4):
    """KL(P || Q) at one cut, built bin by bin (TensorRT's construction)."""
    p = hist[:i].copy()
    p[-1] += hist[i:].sum()
    group = np.arange(i) * levels // i
    live = p > 0
    total = np.bincount(group, hist[:i], levels)
    count = np.bincount(group, live.astype(float), levels)
    q = np.where(live, total[group] / np.maximum(count[group], 1), 0.0)
    if not q.any():
        return math.inf
    q = np.where(live & (q == 0), eps, q)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p[live] * np.log(p[live] / q[live])))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=16, max_size=96), st.sampled_from([2, 4, 8]))
def test_kl_prefix_sums_equal_the_bin_by_bin_divergence(counts, levels):
    hist = np.array(counts, np.float64)
    assume(hist.any())   # kl_threshold's histogram holds the tensor's largest value
    cuts = np.arange(levels, len(hist) + 1)
    direct = [_kl_direct(hist, i, levels) for i in cuts]
    assert np.allclose(_kl_divergences(hist, cuts, levels), direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("how, fixes, f", [
    ("modal", [3, 4, 4, 5], 4), ("modal", [3, 3, 5, 5], 3), ("max", [3, 4, 6], 3),
    ("mean", [3, 4], 4), ("mean", [3, 3, 4], 3), ("median", [3, 4, 6], 4), ("median", [3, 4], 3),
])
def test_statistic_methods(how, fixes, f):
    assert combine(fixes, how) == f


def conv_graph(weight, bias=None, act="none", name="c", op="Conv2d"):
    w = np.asarray(weight, np.float32).reshape(-1, 1, 1, 1)
    layer = Layer(name=name, kind="conv", input="input", in_shape=(1, 1, 1),
                  out_shape=(len(w), 1, 1), weight=w, op=op,
                  bias=np.zeros(len(w), np.float32) if bias is None else np.asarray(bias, np.float32))
    return Graph(name="g", input_shape=(1, 1, 1), layers=[layer])


@pytest.mark.parametrize("how, f_input", [("max", 5), ("modal", 5), ("mean", 6), ("median", 5)])
def test_statistic_over_calibration_batches(how, f_input):
    # batches of 2: absmax 1 (f=6), 3 (f=5), 1 (f=6)... then a last 3 (f=5): [6, 5, 6, 5]
    calib = np.array([1, -1, 3, 0, 1, 0, -3, 1], np.float32).reshape(-1, 1, 1, 1)
    config = config_with(**{"tensor_quantize_config/input/calib_statistic_method": how})
    q = quantize(conv_graph([1.0]), calib, config, progress=False, batch_size=2)
    assert q.f_input == f_input   # mean 5.5 rounds half up to 6; median 5.5 down to 5


def test_per_channel_weights():
    calib = np.linspace(-1, 1, 16, dtype=np.float32).reshape(-1, 1, 1, 1)
    graph = conv_graph([0.5, 2.0, -8.0], bias=[0.1, 0.2, 0.3])
    config = config_with(**{"tensor_quantize_config/weights/per_channel": True})
    q = quantize(graph, calib, config, progress=False, hardware=False).layers[0]
    assert len(q.f_wc) == 3 and q.f_wc.tolist() == [7, 5, 3]   # 0.5*2**7, 2*2**5, 8*2**3 = 64
    assert q.weight.ravel().tolist() == [64, 64, -64]
    assert q.shifts.tolist() == [q.f_in + 7 - q.f_out, q.f_in + 5 - q.f_out, q.f_in + 3 - q.f_out]
    assert q.bias.tolist() == [round(0.1 * 2 ** (q.f_in + 7)), round(0.2 * 2 ** (q.f_in + 5)),
                               round(0.3 * 2 ** (q.f_in + 3))]
    qmodel = quantize(graph, calib, config, progress=False, hardware=False)
    got = qmodel.dequantize_output(run_golden(qmodel, qmodel.quantize_input(calib))["c"])
    assert sqnr_db(run_float(graph, calib)["c"], got) > 30
    # the array runs them (POST lane_shifts): the hardware check lets them through
    assert quantize(graph, calib, config, progress=False).layers[0].f_wc.tolist() == [7, 5, 3]


def test_float_scale_refused_for_the_integer_model():
    config = config_with(**{"tensor_quantize_config/activation/scale_type": "float"})
    with pytest.raises(HwqError, match="layer 'c' activation has scale_type float: the integer "
                       "model and the array use power-of-two scales only"):
        quantize(conv_graph([1.0]), np.ones((2, 1, 1, 1), np.float32), config, progress=False)


def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                         nn.Linear(16, 3))


def test_layered_config_global_type_name():
    graph = trace(small_net(), (1, 6, 6), "net")
    assert [l.name for l in graph.layers] == ["_0", "_2", "_3", "_4"]
    config = config_with(**{"layer_quantize_config": [
        {"layer_name": "_2", "tensor_quantize_config": {"activation": {"method": "mse"}}},
        {"layer_type": "torch.nn.Conv2d", "overall_quantize_config": {"round_mode": "half_even"},
         "tensor_quantize_config": {"activation": {"method": "entropy"}}},
    ]})
    by_layer = {l.name: config.for_layer(l) for l in graph.layers}
    assert by_layer["_0"]["activation"].method == "entropy"      # type rule
    assert by_layer["_2"]["activation"].method == "mse"          # name rule beats type rule
    assert by_layer["_2"]["weights"].round_mode == "half_even"   # type rule's overall part
    assert by_layer["_4"]["activation"].method == "maxmin"       # global
    assert parse_quant_config(config.as_dict(), "again").layer_rules == config.layer_rules
    calib = np.random.default_rng(0).normal(size=(8, 1, 6, 6)).astype(np.float32)
    q = quantize(graph, calib, config, progress=False)
    assert [l.stats.get("method") for l in q.layers] == ["entropy", "mse", None, "maxmin"]
    assert q.layers[0].round_mode == "half_even"


@pytest.mark.parametrize("rule, fragment", [
    ({"layer_name": "conv9"}, "layer_quantize_config[0]: layer_name 'conv9' matches no layer of "
                              "model net; it has _0, _2, _3, _4"),
    ({"layer_type": "AvgPool2d"}, "layer_quantize_config[0]: layer_type AvgPool2d matches no layer"),
])
def test_layer_rules_must_match(rule, fragment):
    graph = trace(small_net(), (1, 6, 6), "net")
    with pytest.raises(HwqError) as info:
        quantize(graph, np.zeros((2, 1, 6, 6), np.float32),
                 config_with(**{"layer_quantize_config": [rule]}), progress=False)
    assert fragment in str(info.value)


def auto_config(**top):
    return config_with(**{"tensor_quantize_config/activation/method": "auto", **top})


def test_auto_picks_the_method_of_lowest_output_error():
    # y = x on SKEWED: max-min keeps f=5; percentile (the 99.99th of 100 values,
    # interpolated: 1.983), mse and diffs take f=6, whose rounding of the 0.3s is 4x finer
    # (output MSE 0.0012 against 0.0155, test_methods_by_hand): auto takes f=6, and names
    # the first method that chose it
    calib = SKEWED.reshape(-1, 1, 1, 1)
    one = lambda method: quantize(conv_graph([1.0]), calib, config_with(  # noqa: E731
        **{"tensor_quantize_config/activation/method": method}), progress=False, batch_size=100).layers[0]
    fixes = {m: one(m).f_out for m in METHODS}
    assert (fixes["maxmin"], fixes["percentile"], fixes["mse"], fixes["diffs"]) == (5, 6, 6, 6)
    q = quantize(conv_graph([1.0]), calib, auto_config(), progress=False, batch_size=100).layers[0]
    assert q.f_out == 6 and q.stats["method"] == "auto"
    assert q.stats["auto_method"] == next(m for m in METHODS if fixes[m] == 6)
    assert method_label(q.stats) == f"auto: {q.stats['auto_method']}"
    # a uniform output: every method keeps the whole range, and ties go to maxmin
    uniform = np.linspace(-1, 1, 64, dtype=np.float32).reshape(-1, 1, 1, 1)
    q = quantize(conv_graph([1.0]), uniform, auto_config(), progress=False).layers[0]
    assert q.stats["auto_method"] == "maxmin" and q.stats["auto_batches"]["maxmin"] == 2


def golden_output_mse(graph, calib, qmodel):
    out = qmodel.dequantize_output(run_golden(qmodel, qmodel.quantize_input(calib))[graph.layers[-1].name])
    return float(np.mean((out.astype(np.float64) - run_float(graph, calib)[graph.layers[-1].name]) ** 2))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), act=st.sampled_from(["none", "relu", "relu6"]),
       tail=st.floats(1.0, 30.0))
def test_auto_is_no_worse_than_any_method(seed, act, tail):
    # one conv over one calibration batch: auto's error is the golden model's (the
    # emulation is exact for a layer this small) and no method's choice beats it
    rng = np.random.default_rng(seed)
    layer = Layer("c", "conv", "input", (3, 4, 4), (4, 4, 4), weight=rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                  bias=rng.normal(size=4).astype(np.float32), padding=1, act=act)
    graph = Graph("g", (3, 4, 4), [layer])
    calib = rng.normal(size=(32, 3, 4, 4)).astype(np.float32)
    calib[0, 0, 0, 0] = tail                  # an outlier for the clipping methods to weigh
    auto = quantize(graph, calib, auto_config(), progress=False)
    again = quantize(graph, calib, auto_config(), progress=False)
    assert auto.layers[0].f_out == again.layers[0].f_out and auto.layers[0].stats == again.layers[0].stats
    best = min(golden_output_mse(graph, calib, quantize(graph, calib, config_with(
        **{"tensor_quantize_config/activation/method": m}), progress=False)) for m in METHODS)
    assert golden_output_mse(graph, calib, auto) <= best * (1 + 1e-9)


def test_auto_in_a_layer_rule_and_the_report():
    graph = trace(small_net(), (1, 6, 6), "net")
    config = config_with(layer_quantize_config=[
        {"layer_name": "_2", "tensor_quantize_config": {"activation": {"method": "auto"}}}])
    calib = np.random.default_rng(0).normal(size=(8, 1, 6, 6)).astype(np.float32)
    q = quantize(graph, calib, config, progress=False)
    assert [l.stats.get("method") for l in q.layers] == ["maxmin", "auto", None, "maxmin"]
    assert q.layers[1].stats["auto_method"] in METHODS
    summary = summary_markdown(q, {l.name: 30.0 for l in q.layers})
    assert f"| _2 | conv | auto: {q.layers[1].stats['auto_method']} |" in summary


def test_equalization_is_exact_and_balances_ranges():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 2, 3, 3)).astype(np.float32) * np.array([8, 1, 0.25, 2], np.float32)[:, None, None, None]
    first = Layer("a", "conv", "input", (2, 5, 5), (4, 3, 3), weight=w1, bias=rng.normal(size=4).astype(np.float32), act="relu")
    second = Layer("b", "conv", "a", (4, 3, 3), (3, 1, 1), weight=rng.normal(size=(3, 4, 3, 3)).astype(np.float32),
                   bias=np.zeros(3, np.float32))
    graph = Graph("g", (2, 5, 5), [first, second])
    x = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)
    before = run_float(graph, x)["b"]
    r_before = np.abs(first.weight).reshape(4, -1).max(1)
    equalize(graph.layers)
    r_after = np.abs(first.weight).reshape(4, -1).max(1)
    assert np.allclose(run_float(graph, x)["b"], before, atol=1e-5)   # power-of-two scales: exact
    assert r_after.max() / r_after.min() < r_before.max() / r_before.min()


def test_bias_correction_by_hand():
    # x = 1; weights 0.3 and 1.9 at f_w = 6 become 19/64 = 0.296875 and 122/64 = 1.90625:
    # the outputs move by -0.003125 and +0.00625, so the biases (at fix 6 + 6 = 12) get
    # +0.003125 * 4096 = 12.8 -> 13 and -0.00625 * 4096 = -25.6 -> -26
    calib = np.ones((16, 1, 1, 1), np.float32)
    graph = conv_graph([0.3, 1.9])
    plain = quantize(graph, calib, config_with(include_bias_corr=False), progress=False).layers[0]
    fixed = quantize(graph, calib, DEFAULT, progress=False).layers[0]   # on by default
    assert (plain.f_in, plain.f_w, plain.bias.tolist()) == (6, 6, [0, 0])
    assert fixed.bias.tolist() == [13, -26]
    assert fixed.stats["bias_correction"] == pytest.approx(0.00625, rel=1e-3)


def test_bias_correction_takes_in_the_inputs_rounding():
    # x = 0.3 at f_in = 8 (76.8 <= 127) is 77/256 = 0.30078125; the weight 1.0 at f_w = 6 is
    # exact, so only the input's rounding shifts the output, by 0.3 - 0.30078125 =
    # -0.00078125: at the accumulator's fix 8 + 6 = 14 the bias is -0.00078125 * 16384 =
    # -12.8 -> -13. A correction of the weights' rounding alone would leave it 0.
    calib = np.full((16, 1, 1, 1), 0.3, np.float32)
    q = quantize(conv_graph([1.0]), calib, DEFAULT, progress=False).layers[0]
    assert (q.f_in, q.f_w, q.bias.tolist()) == (8, 6, [-13])


def test_bias_correction_takes_in_the_error_from_upstream():
    # two layers: the second one's correction sees the first's output as the quantized
    # model computes it, so its mean error on the calibration data (the golden model's
    # output against float) is what the correction removes
    rng = np.random.default_rng(1)
    first = Layer("a", "conv", "input", (3, 4, 4), (6, 4, 4), weight=rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
                  bias=rng.normal(size=6).astype(np.float32), padding=1, act="relu")
    second = Layer("b", "conv", "a", (6, 4, 4), (5, 4, 4), weight=rng.normal(size=(5, 6, 1, 1)).astype(np.float32),
                   bias=np.zeros(5, np.float32))
    graph = Graph("g", (3, 4, 4), [first, second])
    calib = rng.normal(size=(64, 3, 4, 4)).astype(np.float32)
    reference = run_float(graph, calib)["b"]

    def mean_error(config):
        qmodel = quantize(graph, calib, config, progress=False)
        out = qmodel.dequantize_output(run_golden(qmodel, qmodel.quantize_input(calib))["b"])
        return np.abs((out - reference).mean(axis=(0, 2, 3))).max()
    assert mean_error(DEFAULT) < 0.2 * mean_error(config_with(include_bias_corr=False))


def test_subnormal_activations_calibrate():
    # a tensor whose magnitudes are all subnormal has no 2048 (or 64) distinct histogram
    # edges between 0 and its max: entropy and the report's histogram (both
    # magnitude_histogram) bin fractions of it
    assert kl_threshold(np.array([5e-324])) == 5e-324            # float64's least
    tiny = np.finfo(np.float32).smallest_subnormal               # activations are float32
    x = np.array([0.0, tiny, 2 * tiny, -3 * tiny], np.float32)
    for method in ("entropy", "maxmin", "mse", "percentile"):
        assert np.ldexp(3 * float(tiny), choose_fix(method, x, TQ, -128)) <= 127
    assert np.nonzero(magnitude_histogram(np.abs(x), 64, 3 * float(tiny)))[0].tolist() == [0, 21, 42, 63]
