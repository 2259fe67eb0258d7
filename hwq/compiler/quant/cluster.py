"""k-means weight clustering (Han et al. 2016, "Deep Compression"): the weights of each
conv/linear layer share k values, so the layer can be stored as a log2(k)-bit index per
weight plus a k-entry codebook instead of 8 bits per weight.

Each layer's weights are clustered by 1-D k-means; then the centroids and biases are
fine-tuned on the calibration data to match the float model's output (distillation),
with every weight tied to its centroid: a weight tensor is `centroids[index]`, so
autograd sums the gradients of a cluster's weights onto its centroid. The result is a
float Graph with at most k distinct weights per layer, which post-training quantization
then quantizes like any other model: with per-tensor fix positions its int8 weights have
at most k distinct values per layer.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwq.compiler.ir import Graph, QModel
from hwq.compiler.quant.float_model import float_op, one_torch_thread, run_float
from hwq.progress import Progress

KMEANS_ITERS = 100
# Adam's step size, relative to the layer's largest weight. On LeNet (k=16, 200 steps)
# 3e-3 recovers 4 dB of logits SQNR over the untuned k-means; 3e-4 recovers 3.
LR = 3e-3
BATCH = 64
WEIGHT_BITS = 8   # an int8 weight: a codebook entry, and what an unclustered weight takes


def kmeans_1d(values: np.ndarray, k: int, iters: int = KMEANS_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars: (centroids ascending, each value's centroid index).

    Centroids start evenly spaced over [min, max] (Han et al.'s linear initialisation:
    the few large weights, which matter most, keep centroids of their own). In 1-D the
    nearest centroid is found by the midpoints between sorted centroids. Centroids that
    end up with no value are dropped, so fewer than k come back when the values have
    fewer than k clusters."""
    v = np.asarray(values, np.float64).ravel()
    centroids = np.linspace(v.min(), v.max(), k)
    index = None
    for _ in range(iters):
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        if index is not None and np.array_equal(new, index):
            break
        index = new
        counts = np.bincount(index, minlength=len(centroids))
        sums = np.bincount(index, v, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    used = np.unique(index)
    return centroids[used], np.searchsorted(used, index)


def cluster_graph(graph: Graph, x: np.ndarray, k: int, steps: int, progress: bool = True,
                  seed: int = 0) -> Graph:
    """`graph` with every conv/linear layer's weights clustered to at most k values and
    the centroids and biases fine-tuned for `steps` Adam steps on the samples `x`."""
    tied, groups = {}, []   # layer name -> (centroids, index shaped as the weight, bias)
    for layer in (l for l in graph.layers if l.kind == "conv"):
        centroids, index = kmeans_1d(layer.weight, k)
        bias = layer.bias if layer.bias is not None else np.zeros(len(layer.weight), np.float32)
        c, b = (nn.Parameter(torch.tensor(t, dtype=torch.float32)) for t in (centroids, bias))
        tied[layer.name] = (c, torch.from_numpy(index.reshape(layer.weight.shape)), b)
        groups.append({"params": [c, b], "lr": LR * (float(np.abs(layer.weight).max()) or 1.0)})
    optimizer = torch.optim.Adam(groups)
    xt = torch.from_numpy(np.asarray(x, np.float32))
    target = torch.from_numpy(run_float(graph, x)[graph.layers[-1].name])

    def forward(xb: torch.Tensor) -> torch.Tensor:
        env = {"input": xb}
        for layer in graph.layers:
            c, index, b = tied.get(layer.name, (None, None, None))
            weight = c[index] if c is not None else None
            env[layer.name] = float_op(layer, [env[s] for s in layer.sources], weight, b)
        return env[graph.layers[-1].name]

    bar = Progress("clustering", steps, "steps", enabled=progress)
    with torch.random.fork_rng(devices=[]), one_torch_thread():
        torch.manual_seed(seed)
        for step in range(steps):
            idx = torch.randperm(len(xt))[:BATCH]
            optimizer.zero_grad()
            loss = F.mse_loss(forward(xt[idx]), target[idx])
            loss.backward()
            optimizer.step()
            bar.update(step + 1, f"distillation loss {loss.item():.3g}")
    layers = []
    for layer in graph.layers:
        if layer.name in tied:
            c, index, b = tied[layer.name]
            # bn: the unfolded BatchNorm no longer describes the clustered weights
            layer = dataclasses.replace(layer, weight=c.detach()[index].numpy(),
                                        bias=b.detach().numpy().copy(), bn=None)
        layers.append(layer)
    return dataclasses.replace(graph, layers=layers)


@dataclasses.dataclass(frozen=True)
class Compression:
    """The storage of one layer's int8 weights as indices into a codebook of its distinct
    values: an index of ceil(log2(codes)) bits per weight plus `codes` int8 entries."""

    layer: str
    weights: int
    codes: int          # distinct int8 values

    @property
    def index_bits(self) -> int:
        return math.ceil(math.log2(self.codes)) if self.codes > 1 else 0

    @property
    def bits(self) -> int:
        return self.weights * self.index_bits + self.codes * WEIGHT_BITS

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.weights

    @property
    def ratio(self) -> float:
        """How many times smaller than WEIGHT_BITS per weight."""
        return WEIGHT_BITS / self.bits_per_weight


def compression(qmodel: QModel) -> list[Compression]:
    """Every weighted layer's codebook storage, counted on its actual int8 weights (so
    per-channel fix positions, which give a layer more distinct codes, are counted too)."""
    return [Compression(q.name, int(q.weight.size), len(np.unique(q.weight)))
            for q in qmodel.layers if q.weight is not None]


def bits_per_weight(rows: list[Compression]) -> float:
    """The whole model's bits per weight: all layers' bits over all their weights."""
    return sum(r.bits for r in rows) / sum(r.weights for r in rows)
