"""Max-min calibration: float Graph + calibration data -> quantized QModel.

The float model runs layer by layer over the calibration set; each tensor gets the
power-of-two fix position that holds its largest magnitude without clipping. Weights are
quantized the same way from their own range, biases land in int32 at the accumulator's
fix position, and every conv is proved not to overflow its int32 accumulator.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from hwq.compiler.ir import Graph, Layer, QLayer, QModel
from hwq.compiler.quant.config import QuantConfig
from hwq.compiler.quant.requant import INT8_MAX, quantize_float, relu_clamp
from hwq.errors import HwqError

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# A tensor that is zero on the whole calibration set can take any fix position; this one
# gives it the range [-1, 1), the usual range of normalised data.
ZERO_RANGE_FIX = 7
_CHUNK = 256  # samples per float op, to bound memory on large calibration sets


def run_float(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """The float reference of the Graph: every layer's float32 output (N, C, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    outputs = {}
    for layer in graph.layers:
        t = _float_layer(layer, t)
        outputs[layer.name] = t.numpy()
    return outputs


def _float_layer(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([_float_op(layer, part) for part in torch.split(x, _CHUNK)])


def _float_op(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    if layer.kind == "maxpool":
        return F.max_pool2d(x, layer.kernel, layer.stride)
    if layer.kind == "flatten":
        return x.reshape(len(x), -1, 1, 1)
    bias = torch.from_numpy(layer.bias) if layer.bias is not None else None
    y = F.conv2d(x, torch.from_numpy(layer.weight), bias, layer.stride, layer.padding)
    if layer.act == "relu":
        return y.clamp(min=0)
    if layer.act == "relu6":
        return y.clamp(0, 6)
    return y


def fix_position(absmax: float) -> int:
    """The largest f with absmax * 2**f <= 127: the finest power-of-two scale at which
    the calibrated range does not clip."""
    if absmax == 0:
        return ZERO_RANGE_FIX
    f = math.floor(math.log2(INT8_MAX / absmax))
    # log2 of a float quotient can land on the wrong side of an exact power of two
    while absmax * 2.0 ** (f + 1) <= INT8_MAX:
        f += 1
    while absmax * 2.0 ** f > INT8_MAX:
        f -= 1
    return f


def quantize(graph: Graph, calib: np.ndarray, config: QuantConfig, progress: bool = True) -> QModel:
    """Quantize `graph` with fix positions calibrated (max-min) on `calib`, (N, C, H, W)
    float samples of the model's input."""
    calib = np.asarray(calib)
    if calib.ndim != 4 or calib.shape[1:] != tuple(graph.input_shape) or len(calib) == 0:
        raise HwqError(f"model {graph.name}: calibration data has shape {calib.shape}; it must "
                       f"be (N, {', '.join(map(str, graph.input_shape))}) with N >= 1")
    x = torch.from_numpy(np.ascontiguousarray(calib, dtype=np.float32))
    f_input = fix_position(_absmax(x, "the calibration input", graph.name))
    f_in, layers = f_input, []
    for i, layer in enumerate(graph.layers):
        x = _float_layer(layer, x)
        absmax = _absmax(x, f"layer '{layer.name}'", graph.name)
        layers.append(_quantize_layer(layer, f_in, absmax, config))
        f_in = layers[-1].f_out
        if progress:
            _show_progress(i + 1, len(graph.layers))
    qmodel = QModel(name=graph.name, input_shape=tuple(graph.input_shape), f_input=f_input,
                    layers=layers, quant_config=config.as_dict())
    check_accumulator_bounds(qmodel)
    return qmodel


def _absmax(x: torch.Tensor, what: str, model: str) -> float:
    absmax = float(x.abs().max())
    if not math.isfinite(absmax):
        raise HwqError(f"model {model}: {what} is not finite on the calibration data; check "
                       "the data and the model's weights for inf/nan")
    return absmax


def _quantize_layer(layer: Layer, f_in: int, absmax: float, config: QuantConfig) -> QLayer:
    q = QLayer(name=layer.name, kind=layer.kind, input=layer.input, in_shape=layer.in_shape,
               out_shape=layer.out_shape, f_in=f_in, f_out=f_in, source=layer.source,
               stride=layer.stride, padding=layer.padding, kernel=layer.kernel, act=layer.act,
               round_mode=config.activation.round_mode, stats={"absmax": absmax})
    if layer.kind != "conv":
        return q  # maxpool and flatten move int8 values; their fix position is their input's
    w_absmax = float(np.abs(layer.weight).max())
    q.f_w = fix_position(w_absmax)
    q.f_out = fix_position(absmax)
    w_lo = -INT8_MAX if config.weights.narrow_range else -INT8_MAX - 1
    q.weight = quantize_float(layer.weight, q.f_w, config.weights.round_mode, w_lo, INT8_MAX)
    bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0], np.float32)
    q.bias = quantize_float(bias, f_in + q.f_w, config.bias.round_mode, INT32_MIN, INT32_MAX,
                            dtype=np.int32)
    q.lo, q.hi = relu_clamp(layer.act, q.f_out, config.activation.narrow_range)
    q.stats["weight_absmax"] = w_absmax
    return q


def check_accumulator_bounds(qmodel: QModel) -> None:
    """Refuse any conv whose int32 accumulator could overflow on some int8 input.

    The bound per output channel is sum|w| * 128 + |bias|; every partial sum, in any
    order the hardware adds them, is within it.
    """
    for q in qmodel.layers:
        if q.kind != "conv":
            continue
        w = np.abs(q.weight.astype(np.int64)).reshape(len(q.weight), -1)
        bound = w.sum(axis=1) * 128 + np.abs(q.bias.astype(np.int64))
        worst = int(bound.max())
        if worst > INT32_MAX:
            where = f" ({q.source})" if q.source else ""
            raise HwqError(f"layer '{q.name}'{where}: its int32 accumulator can overflow: worst "
                           f"case |acc| = {worst:,} > 2**31-1 with fan-in {w.shape[1]}; reduce the "
                           "layer's fan-in (in_channels x kernel size) or its bias range")


def _show_progress(done: int, total: int, width: int = 20) -> None:
    filled = width * done // total
    end = "\n" if done == total else ""
    sys.stderr.write(f"\rcalibrating  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} layers{end}")
    sys.stderr.flush()
