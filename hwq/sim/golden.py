"""The golden model: what the accelerator must compute, bit for bit, in integer NumPy.

Layer by layer over a QModel: conv (grouped too) is int8 x int8 products summed exactly,
plus the int32 bias, then `requantize` (one shift per channel with per-channel weights;
LeakyReLU scales the negative accumulators by its slope first). avgpool sums its window
and multiplies by the quantized reciprocal; add aligns its operands to the finer fix
position and sums; concat requantizes each input to the output's fix position. max-pool
and flatten move int8 values unchanged.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hwq.compiler.ir import ALPHA_BITS, QLayer, QModel
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.requant import quantize_float, requantize, requantize_channels
from hwq.errors import HwqError

# Work sizes that bound memory: samples per pass, and float64 im2col elements per matmul.
_BATCH = 64
_MATMUL_ELEMENTS = 1 << 22


def run_golden(qmodel: QModel, x_int8: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's int8 output (N, C, H, W), keyed by layer name, in execution order;
    the last entry is the model's output."""
    x = np.asarray(x_int8)
    if x.dtype != np.int8 or x.ndim != 4 or x.shape[1:] != tuple(qmodel.input_shape):
        raise HwqError(f"model {qmodel.name}: golden input is {x.dtype} {x.shape}; it must be "
                       f"int8 (N, {', '.join(map(str, qmodel.input_shape))}) (see quantize_input)")
    parts = [_run(qmodel, x[i:i + _BATCH]) for i in range(0, max(len(x), 1), _BATCH)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _run(qmodel: QModel, x: np.ndarray) -> dict[str, np.ndarray]:
    env = {"input": x}
    for layer in qmodel.layers:
        env[layer.name] = _LAYERS[layer.kind](layer, [env[s] for s in layer.sources])
    del env["input"]
    return env


def _windows(x: np.ndarray, k: int, s: int, p: int = 0) -> np.ndarray:
    """(N, C, OH, OW, k, k) views of the zero-padded input."""
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    return sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]


def conv_accumulators(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """conv(x, weight) + bias as int64 (N, Cout, OH, OW): the int32 accumulators."""
    cout, cin_g, k, _ = layer.weight.shape
    g = layer.groups
    windows = _windows(x, k, layer.stride, layer.padding)
    n, c, oh, ow = windows.shape[:4]
    # (group, pixel, K) x (group, K, Cout/group): one matmul per group
    cols = windows.transpose(1, 0, 2, 3, 4, 5).reshape(g, cin_g, n * oh * ow, k * k)
    cols = cols.transpose(0, 2, 1, 3).reshape(g, n * oh * ow, cin_g * k * k)
    weight = layer.weight.reshape(g, cout // g, -1).astype(np.float64).transpose(0, 2, 1)
    acc = np.empty((g, cols.shape[1], cout // g), np.int64)
    step = max(1, _MATMUL_ELEMENTS // (g * cols.shape[2]))
    for i in range(0, cols.shape[1], step):
        # float64 BLAS is exact here: each product is at most 2**14 in magnitude, so
        # every partial sum of K < 2**39 of them is an integer below 2**53.
        acc[:, i:i + step] = cols[:, i:i + step].astype(np.float64) @ weight
    acc = acc.transpose(1, 0, 2).reshape(n, oh, ow, cout).transpose(0, 3, 1, 2)
    return acc + layer.bias.astype(np.int64)[None, :, None, None]


def _requantize(layer: QLayer, acc: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Accumulators -> int8 with the layer's activation; `shifts` has one entry per
    channel, or one for all."""
    if layer.act == "leaky_relu":
        acc = np.where(acc < 0, acc * layer.alpha_q, acc << ALPHA_BITS)
        shifts = shifts + ALPHA_BITS
    if np.all(shifts == shifts[0]):
        return requantize(acc, int(shifts[0]), layer.round_mode, layer.lo, layer.hi)
    return requantize_channels(acc, shifts, layer.round_mode, layer.lo, layer.hi)


def _conv(layer: QLayer, xs) -> np.ndarray:
    # check_accumulator_bounds has proved the accumulators fit int32
    return _requantize(layer, conv_accumulators(layer, xs[0]), layer.shifts)


def _maxpool(layer: QLayer, xs) -> np.ndarray:
    return _windows(xs[0], layer.kernel, layer.stride).max(axis=(4, 5))


def _avgpool(layer: QLayer, xs) -> np.ndarray:
    total = _windows(xs[0].astype(np.int64), layer.kernel, layer.stride, layer.padding).sum(axis=(4, 5))
    return _requantize(layer, total * layer.multiplier, np.array([layer.shift]))


def _add(layer: QLayer, xs) -> np.ndarray:
    top = max(layer.f_ins)
    total = sum(x.astype(np.int64) << (top - f) for x, f in zip(xs, layer.f_ins))
    return _requantize(layer, total, np.array([top - layer.f_out]))


def _concat(layer: QLayer, xs) -> np.ndarray:
    return np.concatenate([requantize(x, f - layer.f_out, layer.round_mode, layer.lo, layer.hi)
                           for x, f in zip(xs, layer.f_ins)], axis=1)


def _flatten(layer: QLayer, xs) -> np.ndarray:
    return xs[0].reshape(len(xs[0]), -1, 1, 1)  # C-major, as torch.flatten


_LAYERS = {"conv": _conv, "maxpool": _maxpool, "avgpool": _avgpool, "add": _add,
           "concat": _concat, "flatten": _flatten}


def quantize_input(qmodel: QModel, x_float: np.ndarray) -> np.ndarray:
    """Float input (N, C, H, W) -> int8 at the model's input fix position, rounded as the
    config says for inputs."""
    tensor = _tensor_config(qmodel, "input")
    lo = -127 if tensor["narrow_range"] else -128
    return quantize_float(x_float, qmodel.f_input, tensor["round_mode"], lo, 127)


def dequantize_output(qmodel: QModel, y_int8: np.ndarray) -> np.ndarray:
    """The model's int8 output as float32 values."""
    return np.ldexp(np.asarray(y_int8, dtype=np.float32), -qmodel.f_output).astype(np.float32)


def _tensor_config(qmodel: QModel, tensor: str) -> dict:
    # a hand-built QModel may carry no config; it then means the default one
    config = qmodel.quant_config or load_quant_config().as_dict()
    return config["tensor_quantize_config"][tensor]
