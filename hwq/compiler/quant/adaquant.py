"""Fast finetune (AdaQuant, Hubara et al. 2020): after post-training calibration, the
float weights and bias of each conv/linear layer are tuned, layer by layer in execution
order, so that the layer's output with quantized weights and inputs matches the float
model's output of that layer (mean squared error) on the calibration data.

The fake quantization is QAT's integer-domain conv (qat.FakeQuantNet) in eval mode: the
fix positions stay those PTQ chose, weights and bias are rounded by their configured
modes through the straight-through estimator, and each layer reads the int8 outputs of
the layers before it as already tuned (sequential AdaQuant), so it also corrects the
error it inherits. As in the paper (min ||WX - Q(W)Q(X)||), the compared output is the
accumulator with the activation applied, before the layer's own output rounding: that
rounding is noise of a fixed size the weights cannot remove, and left in, it swamps the
gradient and the before/after comparison. `FakeQuantNet.export` then makes the QModel
exactly as PTQ and QAT make theirs, so it runs bit-exact on the golden model like any other.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from hwq.compiler.ir import Graph, QModel
from hwq.compiler.quant.float_model import activation, one_torch_thread, run_float
from hwq.compiler.quant.config import QuantConfig
from hwq.compiler.quant.qat import FakeQuantNet
from hwq.progress import Progress

# Adam's step size, in units of the tensor's quantization step (weights: 2**-f_w of the
# finest channel; bias: the output's 2**-f_out, where a bias change shows), decaying
# linearly to 0. 300 steps move a weight at most ~0.15 of a grid step: enough to decide
# which way the weights near a rounding boundary round, which is where the error is; on
# LeNet larger steps (0.005 and up) flip weights back and forth and end no better.
STEP = 0.001
BATCH = 64   # calibration samples per step


def fast_finetune(graph: Graph, qmodel: QModel, calib: np.ndarray, config: QuantConfig,
                  steps: int, progress: bool = True, seed: int = 0) -> QModel:
    """`qmodel` (PTQ of the user's float `graph` under `config` on `calib`) with every
    conv/linear layer's weights and bias tuned for `steps` Adam steps; the same fix
    positions. A layer whose tuning does not lower its error on the whole calibration
    set keeps its PTQ weights. Each tuned layer's stats get `fast_finetune_mse`: the
    calibration-set MSE (before, after)."""
    # the folded weights, as PTQ rounded them: the unfolded BN would tune other parameters
    graph = dataclasses.replace(graph, layers=[dataclasses.replace(l, bn=None) for l in graph.layers])
    net = FakeQuantNet(graph, qmodel, config).eval()   # eval: PTQ's fix positions stay put
    floats = run_float(net.graph, calib)
    env = {"input": (torch.from_numpy(qmodel.quantize_input(calib).astype(np.float64)), net.fix["input"]())}
    convs = [l for l in net.graph.layers if l.kind == "conv"]
    bar = Progress("fast finetune", steps * len(convs), "steps", enabled=progress)
    errors = {}
    with torch.random.fork_rng(devices=[]), one_torch_thread():
        torch.manual_seed(seed)
        for layer in net.graph.layers:
            xs = [env[s] for s in layer.sources]
            if layer.kind == "conv":
                target = torch.from_numpy(floats[layer.name]).double()
                done = len(errors) * steps
                errors[layer.name] = _tune(net, layer, xs, target, steps,
                                           lambda i, note: bar.update(done + i, note))
            with torch.no_grad():
                env[layer.name] = net._layer(layer, xs)
    tuned = net.export()
    for new, old in zip(tuned.layers, qmodel.layers):
        new.stats = dict(old.stats)
        if new.name in errors:
            new.stats["fast_finetune_mse"] = errors[new.name]
    return tuned


def _tune(net: FakeQuantNet, layer, xs: list, target: torch.Tensor, steps: int, tick) -> tuple[float, float]:
    """Tune one conv's weight and bias in `net`; (MSE before, MSE after) on the whole set."""
    weight, bias = net.params[f"{layer.name}__weight"], net.params[f"{layer.name}__bias"]
    f_w = net.fix[f"{layer.name}__w"]().max()
    f_out = net.fix[layer.name]()
    optimizer = torch.optim.Adam([{"params": [weight], "lr": STEP * float(2.0 ** -f_w)},
                                  {"params": [bias], "lr": STEP * float(2.0 ** -f_out)}])
    (x, f_in), = xs

    def error(idx=slice(None)) -> torch.Tensor:
        acc, shift = net._conv(layer, x[idx] * 2.0 ** -f_in, x[idx], f_in)
        shift = shift[None, :, None, None] if shift.ndim else shift
        return F.mse_loss(activation(layer, acc * 2.0 ** -shift), target[idx])

    with torch.no_grad():
        before = float(error())
        start = weight.detach().clone(), bias.detach().clone()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    for step in range(steps):
        optimizer.zero_grad()
        loss = error(torch.randperm(len(target))[:BATCH])
        loss.backward()
        optimizer.step()
        schedule.step()
        tick(step + 1, f"{layer.name} mse {loss.item():.3g}")
    with torch.no_grad():
        after = float(error())
        if after >= before:   # minibatch noise can end worse than PTQ on the whole set
            weight.copy_(start[0])
            bias.copy_(start[1])
            after = before
    return before, after
