"""hwq's two model IRs.

Graph IR (float): what the front end makes of a torch.fx trace, after the graph passes
(BatchNorm folded, activations fused, no-ops removed). Quantized IR: the same layers with
int8 weights, int32 biases and power-of-two fix positions; it is what the golden model
runs and what the back end lowers onto the array.

Activations are (C, H, W) per sample; a flattened vector is (N, 1, 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LAYER_KINDS = ("conv", "maxpool", "flatten")
ACTIVATIONS = ("none", "relu", "relu6")


@dataclass
class Layer:
    """One float layer. `conv` also carries Linear (as a 1x1 conv over a 1x1 image, after
    a `flatten`). Weights are (Cout, Cin, KH, KW) float32; bias is (Cout,)."""

    name: str
    kind: str
    input: str                      # name of the producing layer, or "input"
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    source: str = ""                # "forward line N" of the traced module, for errors
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    kernel: int = 1                 # maxpool window (conv takes it from the weight)
    act: str = "none"               # fused activation after conv


@dataclass
class Graph:
    """A straight-line float model: layers in execution order; the last is the output."""

    name: str
    input_shape: tuple[int, int, int]
    layers: list[Layer]
    module: object = None           # the float nn.Module, kept for float-reference runs


@dataclass
class QLayer:
    """One quantized layer.

    conv: y = requantize(conv(x, weight) + bias, shift, round_mode, lo, hi) with
    shift = f_in + f_w - f_out; weight int8 (Cout, Cin, KH, KW); bias int32 at
    fix f_in + f_w. maxpool and flatten keep the fix position of their input.
    """

    name: str
    kind: str
    input: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    f_in: int
    f_out: int
    source: str = ""
    weight: np.ndarray | None = None   # int8
    bias: np.ndarray | None = None     # int32
    f_w: int = 0
    stride: int = 1
    padding: int = 0
    kernel: int = 1
    act: str = "none"
    round_mode: str = "half_up"        # activations' rounding (the POST instruction's)
    lo: int = -128
    hi: int = 127
    stats: dict = field(default_factory=dict)  # calibration record, for reports only

    @property
    def shift(self) -> int:
        return self.f_in + self.f_w - self.f_out


@dataclass
class QModel:
    name: str
    input_shape: tuple[int, int, int]
    f_input: int
    layers: list[QLayer]
    quant_config: dict = field(default_factory=dict)

    @property
    def f_output(self) -> int:
        return self.layers[-1].f_out

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.layers[-1].out_shape
