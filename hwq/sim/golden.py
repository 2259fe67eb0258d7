"""The golden model: what the accelerator must compute, bit for bit, in integer NumPy.

Layer by layer over a QModel: conv (grouped too) is int8 x int8 products summed exactly
(an integer GEMM over im2col blocks), plus the int32 bias, then the requantization rule
(`requantize_fast`, proven equal to `requantize`; one shift per channel with per-channel
weights; LeakyReLU scales the negative accumulators by its slope first). avgpool sums its window
and multiplies by the quantized reciprocal; add aligns its operands to the finer fix
position and sums; concat requantizes each input to the output's fix position. max-pool
and flatten move int8 values unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from hwq.compiler.ir import ALPHA_BITS, QLayer, QModel
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.requant import quantize_float, requantize_fast
from hwq.errors import HwqError

# Work sizes that bound memory: samples per pass, and int8 im2col elements per matmul
# (at least one output row).
_BATCH = 64
_MATMUL_ELEMENTS = 1 << 22
# torch._int_mm multiplies int8 matrices into int32 with integer arithmetic (AMX/VNNI
# dot products), so it is exact while no sum overflows: every product is at most 2**14
# in magnitude (-128 * -128), so a dot product of K <= 2**17 - 1 terms stays below 2**31.
# Longer K is cut into chunks of that length, summed in int64.
_K_CHUNK = (1 << 17) - 1


def run_golden(qmodel: QModel, x_int8: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's int8 output (N, C, H, W), keyed by layer name, in execution order;
    the last entry is the model's output."""
    x = np.asarray(x_int8)
    if x.dtype != np.int8 or x.ndim != 4 or x.shape[1:] != tuple(qmodel.input_shape):
        raise HwqError(f"model {qmodel.name}: golden input is {x.dtype} {x.shape}; it must be "
                       f"int8 (N, {', '.join(map(str, qmodel.input_shape))}) (see quantize_input)")
    with _one_torch_thread():
        parts = [_run(qmodel, x[i:i + _BATCH]) for i in range(0, max(len(x), 1), _BATCH)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@contextmanager
def _one_torch_thread():
    """The int8 GEMMs (AMX/VNNI) take a fraction of the time NumPy spends requantizing on
    one core, so torch's thread pool gains little; and where another process holds a core,
    its barriers made the golden model 5x slower (ResNet-style net: 50 against 280 img/s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(qmodel: QModel, x: np.ndarray) -> dict[str, np.ndarray]:
    # Layers pass pixel-major (N, H, W, C) arrays, channels last: the GEMM's natural
    # layout. The (N, C, H, W) results are transposed views of them.
    env = {"input": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    for layer in qmodel.layers:
        env[layer.name] = _LAYERS[layer.kind](layer, [env[s] for s in layer.sources])
    del env["input"]
    return {name: y.transpose(0, 3, 1, 2) for name, y in env.items()}


def _pad(x: np.ndarray, p: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x


def _out_size(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(N, OH, OW, k, k, C) view of the windows of pixel-major x (no copy)."""
    n, h, w, c = x.shape
    sn, sh, sw, sc = x.strides
    shape = (n, _out_size(h, k, s), _out_size(w, k, s), k, k, c)
    return np.lib.stride_tricks.as_strided(x, shape, (sn, s * sh, s * sw, sh, sw, sc), writeable=False)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    # _int_mm misreads a matrix whose size-1 dimension has an odd stride, which reshape
    # and slicing may leave; a contiguous matrix has these strides in its memory anyway
    t = t.contiguous()
    return t.as_strided(t.shape, (t.shape[1], 1))


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Exact a @ b of int8 matrices (M, K) x (K, N) as int32, or int64 when K needs chunks."""
    k = a.shape[1]
    if k <= _K_CHUNK:
        return torch._int_mm(_row_major(a), _row_major(b)).numpy()
    return sum(torch._int_mm(_row_major(a[:, i:i + _K_CHUNK]), _row_major(b[i:i + _K_CHUNK]))
               .numpy().astype(np.int64) for i in range(0, k, _K_CHUNK))


def _conv_blocks(layer: QLayer, x: np.ndarray):
    """conv(x, weight) of pixel-major x in blocks of images and output rows: yields
    (images, rows, channels) slices of the (N, OH, OW, Cout) result and the accumulator
    block (without bias), int32 or int64."""
    cout, cin_g, k, _ = layer.weight.shape
    g = layer.groups
    cout_g, kk = cout // g, k * k * cin_g
    s = layer.stride
    padded = torch.from_numpy(np.ascontiguousarray(_pad(x, layer.padding)))
    n, hp, wp, c = padded.shape
    oh, ow = _out_size(hp, k, s), _out_size(wp, k, s)
    sn, sh, sw, sc = padded.stride()
    # the (N, OH, OW, ky, kx, C) windows as a view; copying a block of it makes that
    # block's im2col rows (torch's copy, on every core)
    view = padded.as_strided((n, oh, ow, k, k, c), (sn, s * sh, s * sw, sh, sw, sc))
    # weight columns in the windows' (ky, kx, c) order, one matrix per group
    weight = torch.from_numpy(np.ascontiguousarray(
        layer.weight.reshape(g, cout_g, cin_g, k, k).transpose(0, 3, 4, 2, 1).reshape(g, kk, cout_g)))
    per_row = max(1, ow * kk * g)
    rows = max(1, min(oh, _MATMUL_ELEMENTS // per_row))
    images = max(1, _MATMUL_ELEMENTS // (per_row * oh)) if rows == oh else 1
    for n0 in range(0, n, images):
        for y0 in range(0, oh, rows):
            block = (slice(n0, n0 + images), slice(y0, y0 + rows))
            for gi in range(g):
                window = view[block + (slice(None),) * 3 + (slice(gi * cin_g, (gi + 1) * cin_g),)]
                m = window.shape[:3]
                acc = _int_matmul(window.reshape(-1, kk), weight[gi])
                yield block + (slice(None), slice(gi * cout_g, (gi + 1) * cout_g)), acc.reshape(*m, cout_g)


def conv_accumulators(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """conv(x, weight) + bias as int64 (N, Cout, OH, OW): the int32 accumulators."""
    acc = np.empty((len(x), *layer.out_shape[1:], layer.out_shape[0]), np.int64)
    for where, block in _conv_blocks(layer, np.ascontiguousarray(x.transpose(0, 2, 3, 1))):
        acc[where] = block
    return (acc + layer.bias.astype(np.int64)).transpose(0, 3, 1, 2)


def _requantize(layer: QLayer, acc: np.ndarray, shifts, bias=0, out=None) -> np.ndarray:
    """acc + bias (channels last) -> int8 with the layer's activation; `shifts` and `bias`
    are one per channel or one for all."""
    if layer.act == "leaky_relu":
        acc = np.add(acc, bias, dtype=np.int64)
        acc, bias = np.where(acc < 0, acc * np.int64(layer.alpha_q), acc << ALPHA_BITS), 0
        shifts = shifts + ALPHA_BITS
    return requantize_fast(acc, shifts, layer.round_mode, layer.lo, layer.hi, bias, out)


def _conv(layer: QLayer, xs) -> np.ndarray:
    # check_accumulator_bounds has proved the accumulators fit int32
    out = np.empty((len(xs[0]), *layer.out_shape[1:], layer.out_shape[0]), np.int8)
    bias, shifts = layer.bias.astype(np.int64), layer.shifts
    for where, acc in _conv_blocks(layer, xs[0]):
        ch = where[3]
        _requantize(layer, acc, shifts[ch], bias[ch], out[where])
    return out


def _maxpool(layer: QLayer, xs) -> np.ndarray:
    windows = _windows(xs[0], layer.kernel, layer.stride)
    out = windows[:, :, :, 0, 0].copy()
    for ky in range(layer.kernel):
        for kx in range(layer.kernel):
            np.maximum(out, windows[:, :, :, ky, kx], out=out)
    return out


def _avgpool(layer: QLayer, xs) -> np.ndarray:
    windows = _windows(_pad(xs[0].astype(np.int64), layer.padding), layer.kernel, layer.stride)
    total = windows.sum(axis=(3, 4))
    return _requantize(layer, total * layer.multiplier, layer.shift)


def _add(layer: QLayer, xs) -> np.ndarray:
    top = max(layer.f_ins)
    total = sum(x.astype(np.int64) << (top - f) for x, f in zip(xs, layer.f_ins))
    return _requantize(layer, total, top - layer.f_out)


def _concat(layer: QLayer, xs) -> np.ndarray:
    return np.concatenate([requantize_fast(x, f - layer.f_out, layer.round_mode, layer.lo, layer.hi)
                           for x, f in zip(xs, layer.f_ins)], axis=3)


def _flatten(layer: QLayer, xs) -> np.ndarray:
    # C-major, as torch.flatten: the vector is one pixel of C*H*W channels
    x = xs[0]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 1, 1, -1)


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
