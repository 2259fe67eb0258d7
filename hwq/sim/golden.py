"""The golden model: what the accelerator must compute, bit for bit, in integer NumPy.

Layer by layer over a QModel: conv is int8 x int8 products summed exactly, plus the
int32 bias, then `requantize`; max-pool and flatten move int8 values unchanged.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.requant import quantize_float, requantize
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
    outputs = {}
    for layer in qmodel.layers:
        x = _LAYERS[layer.kind](layer, x)
        outputs[layer.name] = x
    return outputs


def conv_accumulators(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """conv(x, weight) + bias as int64 (N, Cout, OH, OW): the int32 accumulators."""
    cout, _, k, _ = layer.weight.shape
    p, s = layer.padding, layer.stride
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    windows = sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    n, c, oh, ow = windows.shape[:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k)
    weight = layer.weight.reshape(cout, -1).astype(np.float64).T
    acc = np.empty((len(cols), cout), np.int64)
    step = max(1, _MATMUL_ELEMENTS // cols.shape[1])
    for i in range(0, len(cols), step):
        # float64 BLAS is exact here: each product is at most 2**14 in magnitude, so
        # every partial sum of K < 2**39 of them is an integer below 2**53.
        acc[i:i + step] = cols[i:i + step].astype(np.float64) @ weight
    acc = acc.reshape(n, oh, ow, cout).transpose(0, 3, 1, 2)
    return acc + layer.bias.astype(np.int64)[None, :, None, None]


def _conv(layer: QLayer, x: np.ndarray) -> np.ndarray:
    # check_accumulator_bounds has proved the accumulators fit int32
    return requantize(conv_accumulators(layer, x), layer.shift, layer.round_mode, layer.lo, layer.hi)


def _maxpool(layer: QLayer, x: np.ndarray) -> np.ndarray:
    k, s = layer.kernel, layer.stride
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(4, 5))


def _flatten(layer: QLayer, x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1, 1, 1)  # C-major, as torch.flatten


_LAYERS = {"conv": _conv, "maxpool": _maxpool, "flatten": _flatten}


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
