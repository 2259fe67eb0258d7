"""Post-training calibration: float Graph + calibration data -> quantized QModel.

The float model runs over the calibration set; each activation gets, batch by batch, the
fix position its calibration method chooses, and the batches' positions are combined by
the statistic method. Weights get theirs from their own values (per tensor or per output
channel), biases land in int32 at the accumulator's fix position, and every layer is
proved not to overflow its int32 accumulator. Bias correction and `method: auto` also
need the quantized model's activations: layer by layer, as each layer is calibrated, it
runs on its inputs as the quantized model makes them (emulate.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from hwq.arch import isa
from hwq.arch.requant import ALPHA_BITS, INT8_MAX, code_magnitude, code_max, quantize_float, relu_clamp
from hwq.compiler.ir import MOVES, Graph, Layer, QLayer, QModel, unsigned_outputs
from hwq.compiler.quant.config import AUTO, METHODS, QuantConfig, TensorQuant
from hwq.compiler.quant.emulate import before_rounding, dequantized, output
from hwq.compiler.quant.float_model import float_layer, run_float
from hwq.compiler.quant.methods import choose_fix, choose_fixes, combine, fix_position
from hwq.errors import HwqError
from hwq.progress import Progress

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
CALIB_BATCH = 32    # samples per calibration batch: the unit the statistic method combines
HIST_BINS = 64      # of the |activation| histogram kept for the report
_DIFFS_SAMPLES = 64  # calibration inputs diffs runs a layer on to choose its weights' fix


def hardware_check(qmodel_or_graph, config: QuantConfig) -> None:
    """Refuse what the int8 power-of-two array cannot run, before anything is compiled: a
    LeakyReLU slope outside POST's unsigned slope field. Per-channel weights run on POST's
    per-lane shifts; grouped convs, average pools, adds and concatenations lower onto the
    array (hwq/compiler/lower/)."""
    field = isa.BY_NAME["POST"].field("slope")
    for layer in qmodel_or_graph.layers:
        if layer.act == "leaky_relu" and not field.lo <= round(layer.alpha * 2 ** ALPHA_BITS) <= field.hi:
            raise HwqError(f"layer '{layer.name}': LeakyReLU negative_slope {layer.alpha:g} is "
                           f"outside what the hardware multiplies by ({field.lo}..{field.hi} "
                           f"/ {2 ** ALPHA_BITS}); use a slope in [0, 1.99]")


def calibrate(graph: Graph, calib: np.ndarray, config: QuantConfig, batch_size: int = CALIB_BATCH,
              progress: bool = True) -> QModel:
    """The QModel of `graph` (already rewritten for quantization) with fix positions
    calibrated on `calib`, proved free of int32 accumulator overflow."""
    floats = run_float(graph, calib)
    floats["input"] = np.asarray(calib, np.float32)
    _check_finite(floats["input"], "the calibration input", graph.name)
    fixes = {"input": _activation_fix(floats["input"], config.input, batch_size)[0]}
    unsigned = unsigned_outputs(graph.layers, config.activation_signedness)
    # the quantized model's activations so far (emulate.py), which bias correction and
    # `method: auto` measure; only they need it, and it costs a second pass of the model
    measured = config.switches["include_bias_corr"] or config.uses_auto()
    path = {"input": dequantized(floats["input"], fixes["input"], config.input.round_mode,
                                 _lowest(config.input))} if measured else None
    layers = []
    bar = Progress("calibrating", len(graph.layers), "layers", enabled=progress)
    for i, layer in enumerate(graph.layers):
        _check_finite(floats[layer.name], f"layer '{layer.name}'", graph.name)
        q = _quantize_layer(layer, fixes, floats, path, config, batch_size, unsigned[layer.name])
        layers.append(q)
        fixes[layer.name] = q.f_out
        bar.update(i + 1, layer.name)
    qmodel = QModel(name=graph.name, input_shape=tuple(graph.input_shape), f_input=fixes["input"],
                    layers=layers, quant_config=config.as_dict())
    check_accumulator_bounds(qmodel)
    return qmodel


def check_power_of_two(config: QuantConfig, graph: Graph) -> None:
    tensors = [("input", config.input)] + [(f"layer '{l.name}' {t}", tq) for l in graph.layers
                                           for t, tq in config.for_layer(l).items()]
    for what, tq in tensors:
        if tq.scale_type != "poweroftwo":
            raise HwqError(f"quant config {config.source}: {what} has scale_type float: the "
                           "integer model and the array use power-of-two scales only; use "
                           "poweroftwo")


def _check_finite(x: np.ndarray, what: str, model: str) -> None:
    if not np.all(np.isfinite(x)):
        raise HwqError(f"model {model}: {what} is not finite on the calibration data; check "
                       "the data and the model's weights for inf/nan")


def _lowest(tq: TensorQuant) -> int:
    return -INT8_MAX if tq.narrow_range else -INT8_MAX - 1


def _codes(tq: TensorQuant, unsigned: bool) -> tuple[int, int]:
    """The lowest and highest code of an activation: 0..255 stored unsigned, else int8's."""
    return (0, code_max(True)) if unsigned else (_lowest(tq), INT8_MAX)


def _activation_fix(x: np.ndarray, tq: TensorQuant, batch_size: int,
                    unsigned: bool = False) -> tuple[int, dict]:
    """The fix position of an activation by its method and the record the report shows."""
    lo, hi = _codes(tq, unsigned)
    per_batch = [choose_fix(tq.method, x[i:i + batch_size], tq, lo, hi=hi)
                 for i in range(0, len(x), batch_size)]
    f = combine(per_batch, tq.calib_statistic_method)
    return f, {**_record(x, f, hi), "method": tq.method, "statistic": tq.calib_statistic_method,
               "batch_fixes": per_batch}


def _record(x: np.ndarray, f: int, hi: int) -> dict:
    """What the report shows of an activation at fix f with codes up to hi: its range,
    threshold, histogram."""
    a = np.abs(x)
    absmax = float(a.max())
    hist, edges = np.histogram(a, bins=HIST_BINS, range=(0, absmax or 1.0))
    return {"absmax": absmax, "threshold": hi * 2.0 ** -f, "hist": hist.tolist(),
            "hist_edges": [float(edges[0]), float(edges[-1])]}


def _auto_fix(x: np.ndarray, y: np.ndarray, tq: TensorQuant, act: str, batch_size: int,
              unsigned: bool) -> tuple[int, dict]:
    """`method: auto`: in each calibration batch, the fix position of the method whose
    choice puts the layer's quantized output closest to float (mean squared error); the
    batches' positions then combine by the statistic method, as one method's do. `x` is
    the float output; `y` the quantized model's output before its own rounding (upstream
    rounding, int8 weights, corrected bias). Ties keep the earlier method of METHODS
    (maxmin first: the widest range). The record names the method most batches chose."""
    per_batch, wins = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].astype(np.float64), y[i:i + batch_size]
        errors = {}
        lo, hi = _codes(tq, unsigned)
        fixes = choose_fixes(METHODS, xb, tq, lo, hi=hi)
        for f in set(fixes.values()):
            lo, hi = relu_clamp(act, f, tq.narrow_range, unsigned)
            errors[f] = float(np.mean((dequantized(yb, f, tq.round_mode, lo, hi) - xb) ** 2))
        best = min(METHODS, key=lambda m: errors[fixes[m]])
        per_batch.append(fixes[best])
        wins.append(best)
    f = combine(per_batch, tq.calib_statistic_method)
    counts = {m: wins.count(m) for m in METHODS}
    return f, {**_record(x, f, _codes(tq, unsigned)[1]), "method": AUTO, "auto_method": max(METHODS, key=counts.__getitem__),
               "auto_batches": counts, "statistic": tq.calib_statistic_method, "batch_fixes": per_batch}


def _quantize_layer(layer: Layer, fixes: dict, floats: dict, path: dict | None, config: QuantConfig,
                    batch_size: int, unsigned: bool) -> QLayer:
    """Calibrate one layer's fix positions, then make its integer layer (its output
    stored as uint8 if `unsigned`). With `path` (the quantized model's activations so
    far), the layer's own quantized output joins it."""
    tensors = config.for_layer(layer)
    f_ins = [fixes[s] for s in layer.sources]
    xs = [path[s] for s in layer.sources] if path is not None else None
    if layer.kind in MOVES:
        # they move int8 values; their fix position is their input's
        q = make_qlayer(layer, f_ins, f_ins[0], None, tensors,
                        {"absmax": float(np.abs(floats[layer.name]).max())}, unsigned=unsigned)
        if path is not None:
            path[layer.name] = before_rounding(q, layer, xs)
        return q
    f_w, codes, correction, y = None, None, None, None
    if layer.kind == "conv":
        f_w = _weight_fix(layer, floats[layer.input], tensors["weights"])
        # made once: bias correction, auto and the layer itself use the same int8 weights
        codes = weight_codes(layer.weight, f_w, tensors["weights"])
        if config.switches["include_bias_corr"]:
            f = np.broadcast_to(np.asarray(f_w, np.int32), (len(codes),))[:, None, None, None]
            layer, correction = _bias_corrected(layer, floats[layer.input], path[layer.input],
                                                np.ldexp(codes.astype(np.float32), -f))
    act = tensors["activation"]
    if act.method == AUTO:
        # the int8 weights and bias do not depend on the output's fix position
        y = before_rounding(make_qlayer(layer, f_ins, 0, f_w, tensors, codes=codes), layer, xs)
        f_out, stats = _auto_fix(floats[layer.name], y, act, layer.act, batch_size, unsigned)
    else:
        f_out, stats = _activation_fix(floats[layer.name], act, batch_size, unsigned)
    if correction is not None:
        stats["bias_correction"] = correction
    q = make_qlayer(layer, f_ins, f_out, f_w, tensors, stats, codes, unsigned)
    if path is not None:
        path[layer.name] = output(q, y if y is not None else before_rounding(q, layer, xs))
    return q


def make_qlayer(layer: Layer, f_ins: list[int], f_out: int, f_w, tensors: dict,
                stats: dict | None = None, codes: np.ndarray | None = None,
                unsigned: bool = False) -> QLayer:
    """The integer layer for float `layer` at the given fix positions (f_w: an int, a
    (Cout,) vector for per-channel weights, or None for layers without weights); `codes`
    are its int8 weights when already made (weight_codes); `unsigned`: its output is
    stored as uint8 (ir.unsigned_outputs). PTQ and the QAT export both make their QModel
    here."""
    act = tensors["activation"]
    q = QLayer(name=layer.name, kind=layer.kind, input=layer.input, in_shape=layer.in_shape,
               out_shape=layer.out_shape, f_in=f_ins[0], f_out=f_out, source=layer.source,
               stride=layer.stride, padding=layer.padding, kernel=layer.kernel, act=layer.act,
               round_mode=act.round_mode, inputs=list(layer.sources), f_ins=list(f_ins),
               groups=layer.groups, channels=list(layer.channels), stats=dict(stats or {}),
               unsigned=unsigned)
    if layer.kind in MOVES:
        return q
    q.lo, q.hi = relu_clamp(layer.act, q.f_out, act.narrow_range, unsigned)
    q.alpha_q = round(layer.alpha * 2 ** ALPHA_BITS)
    if layer.kind == "avgpool":
        # the window's reciprocal as an int8 multiplier: exact for power-of-two windows
        window = layer.kernel[0] * layer.kernel[1]
        q.f_w = fix_position(1 / window)
        q.multiplier = int(quantize_float(1 / window, q.f_w, "half_up"))
    if layer.kind == "conv":
        _integer_weights(q, layer, f_w, tensors, codes)
    return q


def _weight_fix(layer: Layer, x_in: np.ndarray, wq: TensorQuant):
    """The weights' fix position by their method: an int, or a vector per output channel."""
    lo = _lowest(wq)
    if wq.per_channel:
        return np.array([choose_fix(wq.method, w_c[None], wq, lo, _respond(layer, x_in, c))
                         for c, w_c in enumerate(layer.weight)], np.int64)
    return choose_fix(wq.method, layer.weight, wq, lo, _respond(layer, x_in))


def _respond(layer: Layer, x_in: np.ndarray, channel: int | None = None):
    """weights -> the pre-activation output they give on calibration inputs (what diffs
    compares): of the whole layer, or of one output channel over its group's inputs."""
    x = torch.from_numpy(x_in[:_DIFFS_SAMPLES])
    cout, cin_g = layer.weight.shape[:2]
    if channel is None:
        group, groups = slice(None), layer.groups
    else:
        g = channel // (cout // layer.groups)
        group, groups = slice(g * cin_g, (g + 1) * cin_g), 1

    def run(weight):
        w = torch.from_numpy(np.asarray(weight, np.float32))
        return F.conv2d(x[:, group], w, None, layer.stride, layer.padding, 1, groups).numpy()
    return run


def _integer_weights(q: QLayer, layer: Layer, f_w, tensors: dict, codes: np.ndarray | None) -> None:
    wq, bq = tensors["weights"], tensors["bias"]
    if np.ndim(f_w):
        q.f_wc = np.asarray(f_w, np.int64)
        q.f_w = int(q.f_wc.min())   # the scalar keeps a meaning: the coarsest channel's
    else:
        q.f_w = int(f_w)
    q.weight = codes if codes is not None else weight_codes(layer.weight, f_w, wq)
    bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0], np.float32)
    acc_fix = q.f_in + (q.f_wc if q.f_wc is not None else np.full(len(bias), q.f_w))
    _check_bias_fits(layer, bias, acc_fix, q.f_in, q.f_wc is not None)
    # each bias at its own accumulator's fix: scaled by 2**fix exactly, then rounded once
    q.bias = quantize_float(np.ldexp(np.asarray(bias, np.float32), acc_fix.astype(np.int32)), 0,
                            bq.round_mode, INT32_MIN, INT32_MAX, dtype=np.int32)
    q.stats["weight_absmax"] = float(np.abs(layer.weight).max())
    q.stats["weight_method"] = wq.method


def _check_bias_fits(layer: Layer, bias: np.ndarray, acc_fix: np.ndarray, f_in: int,
                     per_channel: bool) -> None:
    """Refuse a bias that does not fit int32 at the accumulator's fix position f_in + f_w.
    The weights' fix position follows their magnitude, so weights tiny next to the bias
    (a layer whose output is its bias alone) push the bias out of int32."""
    scaled = np.abs(bias.astype(np.float64)) * np.ldexp(1.0, acc_fix)
    if not (scaled > INT32_MAX).any():
        return
    c = int(np.argmax(scaled))
    w = np.abs(layer.weight[c] if per_channel else layer.weight).max()
    where = f" ({layer.source})" if layer.source else ""
    whose = f"output channel {c}'s weights" if per_channel else "weights"
    raise HwqError(f"layer '{layer.name}'{where}: its {whose} (max |w| = {w:.3g}) are too small "
                   f"to represent in int8 next to its bias ({bias[c]:.3g}): at their fix position "
                   f"{int(acc_fix[c]) - f_in} the bias overflows int32 and the layer's output is "
                   "its bias alone (a dead layer?); check that its weights are trained or loaded")


def weight_codes(weight: np.ndarray, f_w, wq: TensorQuant) -> np.ndarray:
    """The int8 weights at fix f_w, an int or one per output channel (each channel scaled
    by its own 2**f exactly, then rounded once)."""
    if np.ndim(f_w):
        weight, f_w = np.ldexp(weight, np.asarray(f_w, np.int32)[:, None, None, None]), 0
    return quantize_float(weight, int(f_w), wq.round_mode, _lowest(wq), INT8_MAX)


def _bias_corrected(layer: Layer, x_float: np.ndarray, x_quant: np.ndarray,
                    rounded: np.ndarray) -> tuple[Layer, float]:
    """Empirical bias correction (Nagel et al. 2019): the mean shift of the layer's
    output (before its activation) that quantization causes on the calibration data goes
    back into the bias. The shift is the float layer on float inputs against the layer
    with its `rounded` weights (the int8 ones, dequantized) on the quantized model's
    inputs `x_quant`, so it takes in the inputs' rounding and clipping and the error they
    bring from upstream, not only the weights' rounding. A conv is linear in its input,
    zero padding included, so the mean of its outputs over the set is its output on the
    set's mean input: one image per side. Returns the layer and the largest correction."""
    plain = dataclasses.replace(layer, act="none", bias=None)
    mean = lambda x: torch.from_numpy(x.astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32))  # noqa: E731
    exact = float_layer(plain, [mean(x_float)])
    approx = float_layer(dataclasses.replace(plain, weight=rounded), [mean(x_quant)])
    shift = (exact - approx).double().mean(dim=(0, 2, 3)).numpy()
    bias = layer.bias if layer.bias is not None else np.zeros(len(shift), np.float32)
    return dataclasses.replace(layer, bias=(bias + shift).astype(np.float32)), float(np.abs(shift).max())


def check_accumulator_bounds(qmodel: QModel) -> None:
    """Refuse any layer whose int32 accumulator could overflow on some input.

    conv: the bound per output channel is sum|w| * X + |bias| (X = 128 for an int8
    input, 255 for a uint8 one); every partial sum, in any order the hardware adds them,
    is within it. add: both operands aligned to the finer fix position,
    X_a * 2**da + X_b * 2**db."""
    biggest = lambda name: code_magnitude(qmodel.unsigned(name))   # noqa: E731
    for q in qmodel.layers:
        if q.kind == "conv":
            w = np.abs(q.weight.astype(np.int64)).reshape(len(q.weight), -1)
            worst = int((w.sum(axis=1) * biggest(q.input) + np.abs(q.bias.astype(np.int64))).max())
            cure = f"with fan-in {w.shape[1]}; reduce the layer's fan-in (in_channels x kernel size) or its bias range"
        elif q.kind == "add":
            top = max(q.f_ins)
            worst = sum(biggest(s) << (top - f) for s, f in zip(q.sources, q.f_ins))
            cure = (f"aligning inputs at fix positions {q.f_ins}; their ranges differ too much "
                    "to add in int32")
        else:
            continue
        if worst > INT32_MAX:
            where = f" ({q.source})" if q.source else ""
            raise HwqError(f"layer '{q.name}'{where}: its int32 accumulator can overflow: worst "
                           f"case |acc| = {worst:,} > 2**31-1 {cure}")
