"""The model zoo: standard small-accelerator architectures as plain nn.Modules, with
seeded random weights and BatchNorm statistics of their own activations.

    hwq compile hwq.examples.mlperf_tiny:ResNet8 --input-shape 3x32x32 --calib x.npy -o r8.hwq

Every zoo model is a `ZooModel`: `input_shape` is the (C, H, W) it is compiled for, and
`pretrained()` builds it deterministically from a seed (there are no trained weights to
ship): the initializers' random weights, then BatchNorm running statistics measured on
the model's own activations over random normal inputs, as training leaves them (each
channel of a BatchNorm's input normalized), and random affine terms, so that folding a
BatchNorm changes every weight and bias. `models()` lists the zoo: the MLPerf Tiny
models (mlperf_tiny.py), torchvision's classics (classics.py) and a few more (extras.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# Random inputs whose activations give the BatchNorm statistics.
_STAT_SAMPLES = 16


class ZooModel(nn.Module):
    input_shape: tuple[int, int, int]

    @classmethod
    def pretrained(cls, seed: int = 0) -> "ZooModel":
        """The model with seeded random weights and non-trivial BatchNorm statistics (the
        caller's random state is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls()
            randomize_batchnorm(model, cls.input_shape)
        return model.eval()


def randomize_batchnorm(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """Each BatchNorm's running statistics from one training-mode pass over random normal
    inputs (momentum None: the running values become that batch's), then its scale drawn
    from U(0.5, 1.5) and its shift from U(-0.25, 0.25)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(_STAT_SAMPLES, *input_shape))
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
            if bn.affine:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.25, 0.25)
    model.eval()


def models() -> dict[str, type[ZooModel]]:
    """Every zoo model by name, MLPerf Tiny's first."""
    from hwq.examples import classics, extras, mlperf_tiny
    return {cls.__name__: cls for module in (mlperf_tiny, classics, extras) for cls in module.MODELS}
