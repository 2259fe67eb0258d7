"""Post-training calibration: float Graph + calibration data -> quantized QModel.

The float model runs over the calibration set; each activation gets, batch by batch, the
fix position its calibration method chooses, and the batches' positions are combined by
the statistic method. Weights get theirs from their own values (per tensor or per output
channel), biases land in int32 at the accumulator's fix position, and every layer is
proved not to overflow its int32 accumulator.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from hwq.arch import isa
from hwq.arch.requant import ALPHA_BITS, INT8_MAX, quantize_float, relu_clamp
from hwq.compiler.ir import Graph, Layer, QLayer, QModel
from hwq.compiler.quant.config import QuantConfig, TensorQuant
from hwq.compiler.quant.float_model import run_float
from hwq.compiler.quant.methods import choose_fix, combine, fake_quant, fix_position
from hwq.errors import HwqError
from hwq.progress import Progress

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
CALIB_BATCH = 32    # samples per calibration batch: the unit the statistic method combines
HIST_BINS = 64      # of the |activation| histogram kept for the report
_DIFFS_SAMPLES = 64  # calibration inputs diffs runs a layer on to choose its weights' fix
MOVES = ("maxpool", "flatten", "view")   # layers that move int8 values, requantizing none


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
    layers = []
    bar = Progress("calibrating", len(graph.layers), "layers", enabled=progress)
    for i, layer in enumerate(graph.layers):
        _check_finite(floats[layer.name], f"layer '{layer.name}'", graph.name)
        q = _quantize_layer(layer, fixes, floats, config, batch_size)
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


def _activation_fix(x: np.ndarray, tq: TensorQuant, batch_size: int) -> tuple[int, dict]:
    """The fix position of an activation and the record the report shows."""
    per_batch = [choose_fix(tq.method, x[i:i + batch_size], tq, _lowest(tq))
                 for i in range(0, len(x), batch_size)]
    f = combine(per_batch, tq.calib_statistic_method)
    a = np.abs(x)
    absmax = float(a.max())
    hist, edges = np.histogram(a, bins=HIST_BINS, range=(0, absmax or 1.0))
    return f, {"absmax": absmax, "method": tq.method, "statistic": tq.calib_statistic_method,
               "batch_fixes": per_batch, "threshold": INT8_MAX * 2.0 ** -f,
               "hist": hist.tolist(), "hist_edges": [float(edges[0]), float(edges[-1])]}


def _quantize_layer(layer: Layer, fixes: dict, floats: dict, config: QuantConfig,
                    batch_size: int) -> QLayer:
    """Calibrate one layer's fix positions, then make its integer layer."""
    tensors = config.for_layer(layer)
    f_ins = [fixes[s] for s in layer.sources]
    if layer.kind in MOVES:
        # they move int8 values; their fix position is their input's
        return make_qlayer(layer, f_ins, f_ins[0], None, tensors,
                           {"absmax": float(np.abs(floats[layer.name]).max())})
    f_out, stats = _activation_fix(floats[layer.name], tensors["activation"], batch_size)
    f_w = None
    if layer.kind == "conv":
        f_w = _weight_fix(layer, floats[layer.input], tensors["weights"])
        if config.switches["include_bias_corr"]:
            layer = _bias_corrected(layer, floats[layer.input], f_w, tensors["weights"], stats)
    return make_qlayer(layer, f_ins, f_out, f_w, tensors, stats)


def make_qlayer(layer: Layer, f_ins: list[int], f_out: int, f_w, tensors: dict,
                stats: dict | None = None) -> QLayer:
    """The integer layer for float `layer` at the given fix positions (f_w: an int, a
    (Cout,) vector for per-channel weights, or None for layers without weights). PTQ and
    the QAT export both make their QModel here."""
    act = tensors["activation"]
    q = QLayer(name=layer.name, kind=layer.kind, input=layer.input, in_shape=layer.in_shape,
               out_shape=layer.out_shape, f_in=f_ins[0], f_out=f_out, source=layer.source,
               stride=layer.stride, padding=layer.padding, kernel=layer.kernel, act=layer.act,
               round_mode=act.round_mode, inputs=list(layer.sources), f_ins=list(f_ins),
               groups=layer.groups, channels=list(layer.channels), stats=dict(stats or {}))
    if layer.kind in MOVES:
        return q
    q.lo, q.hi = relu_clamp(layer.act, q.f_out, act.narrow_range)
    q.alpha_q = round(layer.alpha * 2 ** ALPHA_BITS)
    if layer.kind == "avgpool":
        # the window's reciprocal as an int8 multiplier: exact for power-of-two windows
        window = layer.kernel[0] * layer.kernel[1]
        q.f_w = fix_position(1 / window)
        q.multiplier = int(quantize_float(1 / window, q.f_w, "half_up"))
    if layer.kind == "conv":
        _integer_weights(q, layer, f_w, tensors)
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


def _integer_weights(q: QLayer, layer: Layer, f_w, tensors: dict) -> None:
    wq, bq = tensors["weights"], tensors["bias"]
    lo = _lowest(wq)
    if np.ndim(f_w):
        q.f_wc = np.asarray(f_w, np.int64)
        q.f_w = int(q.f_wc.min())   # the scalar keeps a meaning: the coarsest channel's
        q.weight = np.concatenate([quantize_float(w_c[None], int(f), wq.round_mode, lo, INT8_MAX)
                                   for w_c, f in zip(layer.weight, q.f_wc)])
    else:
        q.f_w = int(f_w)
        q.weight = quantize_float(layer.weight, q.f_w, wq.round_mode, lo, INT8_MAX)
    bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0], np.float32)
    acc_fix = q.f_in + (q.f_wc if q.f_wc is not None else np.full(len(bias), q.f_w))
    q.bias = np.array([quantize_float(b, int(f), bq.round_mode, INT32_MIN, INT32_MAX, dtype=np.int32)
                       for b, f in zip(bias, acc_fix)], np.int32)
    q.stats["weight_absmax"] = float(np.abs(layer.weight).max())
    q.stats["weight_method"] = wq.method


def _bias_corrected(layer: Layer, x_in: np.ndarray, f_w, wq: TensorQuant, stats: dict) -> Layer:
    """Empirical bias correction: the mean output shift that rounding the weights causes
    on the calibration data goes back into the bias."""
    f = np.broadcast_to(np.asarray(f_w), (len(layer.weight),))
    lo = _lowest(wq)
    rounded = np.concatenate([fake_quant(w_c[None], int(fc), wq.round_mode, lo)
                              for w_c, fc in zip(layer.weight, f)])
    respond = _respond(layer, x_in)
    shift = (respond(layer.weight) - respond(rounded)).mean(axis=(0, 2, 3))
    stats["bias_correction"] = float(np.abs(shift).max())
    bias = layer.bias if layer.bias is not None else np.zeros(len(shift), np.float32)
    return dataclasses.replace(layer, bias=(bias + shift).astype(np.float32))


def check_accumulator_bounds(qmodel: QModel) -> None:
    """Refuse any layer whose int32 accumulator could overflow on some int8 input.

    conv: the bound per output channel is sum|w| * 128 + |bias|; every partial sum, in
    any order the hardware adds them, is within it. add: both operands aligned to the
    finer fix position, 128 * (2**da + 2**db)."""
    for q in qmodel.layers:
        if q.kind == "conv":
            w = np.abs(q.weight.astype(np.int64)).reshape(len(q.weight), -1)
            worst = int((w.sum(axis=1) * 128 + np.abs(q.bias.astype(np.int64))).max())
            cure = f"with fan-in {w.shape[1]}; reduce the layer's fan-in (in_channels x kernel size) or its bias range"
        elif q.kind == "add":
            top = max(q.f_ins)
            worst = sum(128 << (top - f) for f in q.f_ins)
            cure = (f"aligning inputs at fix positions {q.f_ins}; their ranges differ too much "
                    "to add in int32")
        else:
            continue
        if worst > INT32_MAX:
            where = f" ({q.source})" if q.source else ""
            raise HwqError(f"layer '{q.name}'{where}: its int32 accumulator can overflow: worst "
                           f"case |acc| = {worst:,} > 2**31-1 {cure}")
