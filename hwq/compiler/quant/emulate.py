"""The quantized model in float, layer by layer, as calibration builds it: what bias
correction and the per-layer method choice (`method: auto`) measure against float.

A layer reads its inputs as the quantized model makes them (int8 codes times 2**-f, with
every upstream layer's rounding and clipping), computes with its int8 weights and int32
bias dequantized, and is then rounded to int8 at its output fix position. It is not the
golden model (the accumulator is float32, LeakyReLU's slope the float one), only close
to it; calibration needs the error's size, not its bits.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hwq.arch.requant import INT8_MAX, quantize_float
from hwq.compiler.ir import MOVES, Layer, QLayer
from hwq.compiler.quant.float_model import float_layer


def dequantized(x: np.ndarray, f: int, round_mode: str, lo: int = -INT8_MAX - 1,
                hi: int = INT8_MAX) -> np.ndarray:
    """x rounded to int8 codes at fix f, clamped to [lo, hi], as float32 values."""
    return np.ldexp(quantize_float(x, f, round_mode, lo, hi).astype(np.float32), -f)


def before_rounding(q: QLayer, layer: Layer, xs: list[np.ndarray]) -> np.ndarray:
    """The output of integer layer `q` (made from float `layer`) on dequantized inputs
    `xs`, before its own rounding to int8: weights and bias as q stores them, the
    activation applied; average pools multiply by q's int8 reciprocal of the window."""
    inputs = [torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in xs]
    if q.kind == "conv":
        f_w = q.f_wc if q.f_wc is not None else np.full(len(q.weight), q.f_w)
        weight = np.ldexp(q.weight.astype(np.float32), -f_w[:, None, None, None].astype(np.int32))
        bias = np.ldexp(q.bias.astype(np.float64), -(q.f_in + f_w)).astype(np.float32)
        layer = dataclasses.replace(layer, weight=weight, bias=bias)
    y = float_layer(layer, inputs).numpy()
    if q.kind == "avgpool":
        y = y * np.float32(layer.kernel[0] * layer.kernel[1] * q.multiplier * 2.0 ** -q.f_w)
    return y


def output(q: QLayer, y: np.ndarray) -> np.ndarray:
    """`before_rounding`'s y rounded and clamped as q's output is, as float32 values."""
    if q.kind in MOVES:   # they move int8 values unchanged
        return y
    return dequantized(y, q.f_out, q.round_mode, q.lo, q.hi)
