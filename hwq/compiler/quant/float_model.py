"""The float reference of a Graph in torch: what calibration measures, fine-tuning and
clustering aim at, and the reports compare the integer model with."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from hwq.compiler.ir import Graph, Layer

_CHUNK = 256        # samples per float op, to bound memory on large calibration sets


def run_float(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """The float reference of the Graph: every layer's float32 output (N, C, H, W)."""
    env = {"input": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}
    for layer in graph.layers:
        env[layer.name] = float_layer(layer, [env[s] for s in layer.sources])
    return {layer.name: env[layer.name].numpy() for layer in graph.layers}


def float_layer(layer: Layer, xs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        parts = zip(*(torch.split(x, _CHUNK) for x in xs))
        return torch.cat([float_op(layer, list(p)) for p in parts])


def float_op(layer: Layer, xs: list[torch.Tensor], weight=None, bias=None) -> torch.Tensor:
    """One layer in float torch; `weight`/`bias` (tensors) replace the layer's own, for QAT."""
    x = xs[0]
    if layer.kind == "maxpool":
        return F.max_pool2d(pad(x, layer), layer.kernel, layer.stride)
    if layer.kind == "avgpool":
        return F.avg_pool2d(pad(x, layer), layer.kernel, layer.stride)
    if layer.kind == "flatten":
        return x.reshape(len(x), -1, 1, 1)
    if layer.kind == "view":
        return x[:, layer.channels]
    if layer.kind == "concat":
        return torch.cat(xs, dim=1)
    if layer.kind == "add":
        y = xs[0] + xs[1]
    else:
        if weight is None:
            weight = torch.from_numpy(layer.weight)
            bias = torch.from_numpy(layer.bias) if layer.bias is not None else None
        y = F.conv2d(x, weight, bias, layer.stride, layer.padding, 1, layer.groups)
    return activation(layer, y)


def pad(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    """x with the zero padding a pool's windows read (Layer.pads): an average pool's count
    it (count_include_pad), a max pool's change no max (the front end pads non-negative
    tensors only)."""
    top, bottom, left, right = layer.pads
    return F.pad(x, (left, right, top, bottom))


def activation(layer: Layer, y: torch.Tensor) -> torch.Tensor:
    if layer.act == "relu":
        return y.clamp(min=0)
    if layer.act == "relu6":
        return y.clamp(0, 6)
    if layer.act == "leaky_relu":
        return F.leaky_relu(y, layer.alpha)
    return y


@contextmanager
def one_torch_thread():
    """The fine-tunes (fast finetune's and clustering's) are thousands of small ops, where
    torch's thread pool only adds barriers, and where another process holds a core those
    barriers wait for it: the LeNet test took 30 s with the pool and 2 s without."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
