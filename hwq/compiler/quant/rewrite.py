"""Float-model rewrites a quantization config asks for, before calibration: ReLU6 -> ReLU
(convert_relu6_to_relu) and cross-layer equalization (include_cle). Each returns a new
Graph; the user's float graph stays the reference the quantized one is measured against."""
from __future__ import annotations

import dataclasses

import numpy as np

from hwq.compiler.ir import Graph, Layer

# Activations that commute with a positive per-channel scale, so CLE may move scale across them.
_HOMOGENEOUS = ("none", "relu", "leaky_relu")
CLE_ROUNDS = 4


def prepare(graph: Graph, config) -> Graph:
    """The float graph the config quantizes (a copy; `graph` is left as it is)."""
    layers = [dataclasses.replace(l) for l in graph.layers]
    if config.switches["convert_relu6_to_relu"]:
        for layer in layers:
            if layer.act == "relu6":
                layer.act = "relu"
    if config.switches["include_cle"]:
        equalize(layers)
    return dataclasses.replace(graph, layers=layers)


def _readers(layers: list[Layer], name: str) -> list[Layer]:
    return [l for l in layers if name in l.sources]


def equalization_pairs(layers: list[Layer]) -> list[tuple[Layer, Layer]]:
    """(first, second) conv pairs where second alone reads first (directly or through a
    max-pool, which commutes with a positive per-channel scale) and first's activation
    is positively homogeneous."""
    pairs = []
    for first in layers:
        if first.kind != "conv" or first.act not in _HOMOGENEOUS or first.name == layers[-1].name:
            continue
        readers = _readers(layers, first.name)
        while len(readers) == 1 and readers[0].kind == "maxpool":
            readers = _readers(layers, readers[0].name)
        if len(readers) == 1 and readers[0].kind == "conv" and readers[0].groups == 1 \
                and readers[0].weight.shape[1] == first.weight.shape[0]:
            pairs.append((first, readers[0]))
    return pairs


def equalize(layers: list[Layer], rounds: int = CLE_ROUNDS) -> None:
    """Cross-layer equalization (Nagel et al. 2019), in place: output channel i of `first`
    is divided by s_i and input channel i of `second` multiplied by it, with
    s_i = sqrt(r1_i / r2_i) (r = the channel's weight range) rounded to a power of two, so
    the rescaling is exact in floating point and per-tensor power-of-two scales gain
    what per-channel ones would."""
    for _ in range(rounds):
        for first, second in equalization_pairs(layers):
            r1 = np.abs(first.weight).reshape(len(first.weight), -1).max(axis=1)
            r2 = np.abs(second.weight).transpose(1, 0, 2, 3).reshape(second.weight.shape[1], -1).max(axis=1)
            live = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[live] = np.exp2(np.round(0.5 * np.log2(r1[live] / r2[live])))
            first.weight = (first.weight / s[:, None, None, None]).astype(np.float32)
            if first.bias is not None:
                first.bias = (first.bias / s).astype(np.float32)
            second.weight = (second.weight * s[None, :, None, None]).astype(np.float32)
            first.bn = second.bn = None   # the unfolded BN no longer describes the weights
