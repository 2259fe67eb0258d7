"""hwq's two model IRs.

Graph IR (float): what the front end makes of a torch.fx trace, after the graph passes
(BatchNorm folded, activations fused, no-ops removed). Quantized IR: the same layers with
int8 weights, int32 biases and power-of-two fix positions; it is what the golden model
runs and what the back end lowers onto the array.

Activations are (C, H, W) per sample; a flattened vector is (N, 1, 1). Kernels, strides
and paddings are (height, width) pairs. Windows (a conv's kernel, a pool's) read the
input zero padded by `padding` on both sides, as torch pads, and below and right further
where the last window reaches beyond that (a max pool's ceil_mode): `pads`.
"""
from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field

import numpy as np

from hwq.arch.requant import INT8_MAX, INT8_MIN, quantize_float

# Layers that requantize their result and so can carry a fused activation.
REQUANTIZING = ("conv", "add")
# Layers that move int8 values, requantizing none: their fix position is their input's.
MOVES = ("maxpool", "flatten", "view")
# Activations whose output is never negative, and so may be stored as uint8.
NON_NEGATIVE = ("relu", "relu6")


def unsigned_outputs(layers, signedness: str) -> dict[str, bool]:
    """Which tensors are stored as uint8 (codes 0..255 at the same fix position: twice
    the resolution of an int8 one that is never negative), by the quantization config's
    `activation_signedness`: with "auto", the outputs of a ReLU or ReLU6, and what moves,
    pools, adds or concatenates only such tensors (with no activation of its own); with
    "signed", none. The model's input is always int8. `layers` are Layers or QLayers, in
    execution order."""
    unsigned = {"input": False}
    for layer in layers:
        ins = all(unsigned[s] for s in layer.sources)
        if signedness == "signed":
            unsigned[layer.name] = False
        elif layer.kind in MOVES:
            unsigned[layer.name] = ins
        else:
            unsigned[layer.name] = layer.act in NON_NEGATIVE or (
                layer.kind != "conv" and layer.act == "none" and ins)
    return unsigned


def pair(value) -> tuple[int, int]:
    """(height, width) of a kernel, stride or padding given as one int or two."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


class _Windows:
    """What Layer and QLayer share: their windows' geometry."""

    def __post_init__(self):
        self.stride, self.padding = pair(self.stride), pair(self.padding)
        self.kernel = pair(self.kernel)

    @property
    def window(self) -> tuple[int, int]:
        """(kh, kw): a conv's kernel, a pool's window."""
        return tuple(self.weight.shape[2:]) if self.kind == "conv" else self.kernel

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """Zero padding (top, bottom, left, right): `padding` on both sides, below and
        right as far as the last window reaches if that is further."""
        (kh, kw), (sh, sw), (ph, pw) = self.window, self.stride, self.padding
        (_, h, w), (_, oh, ow) = self.in_shape, self.out_shape
        return ph, max(ph, (oh - 1) * sh + kh - h - ph), pw, max(pw, (ow - 1) * sw + kw - w - pw)


@dataclass
class Layer(_Windows):
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
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)   # top, left (`pads`); an int means both
    kernel: tuple[int, int] = (1, 1)    # pool window (conv takes it from the weight)
    act: str = "none"               # fused activation after conv or add
    # Added with the DAG front end; defaults keep single-input hand-built layers valid.
    inputs: list[str] = field(default_factory=list)  # every input, `input` first (add, concat)
    groups: int = 1                 # conv: grouped / depthwise when > 1
    alpha: float = 0.0              # leaky_relu slope
    op: str = ""                    # the torch op it came from (Conv2d, Linear, add, ...)
    bn: dict | None = None          # conv: the unfolded conv + BatchNorm, for QAT
    channels: list[int] = field(default_factory=list)   # view: output channel i is input's channels[i]

    @property
    def sources(self) -> list[str]:
        return self.inputs or [self.input]


@dataclass
class Graph:
    """A float model as a DAG: layers in a topological (execution) order; each reads the
    model input or earlier layers; the last is the output."""

    name: str
    input_shape: tuple[int, int, int]
    layers: list[Layer]
    module: object = None           # the float nn.Module, kept for float-reference runs


@dataclass
class QLayer(_Windows):
    """One quantized layer.

    conv: y = requantize(conv(x, weight) + bias, shift, round_mode, lo, hi) with
    shift = f_in + f_w - f_out; weight int8 (Cout, Cin/groups, KH, KW); bias int32 at
    fix f_in + f_w. With per-channel weights `f_wc` holds one f_w per output channel
    and the shift is a vector. maxpool, flatten and view (the input's `channels`, in
    their order) keep the fix position of their input.
    avgpool: window sum x `multiplier` (the reciprocal of the window at fix f_w), then
    requantize. add: inputs aligned to the finest of `f_ins`, summed, requantized.
    concat: each input requantized from its `f_ins` entry to f_out. An `unsigned`
    output is uint8: [lo, hi] within 0..255.
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
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    kernel: tuple[int, int] = (1, 1)
    act: str = "none"
    round_mode: str = "half_up"        # activations' rounding (the POST instruction's)
    lo: int = -128
    hi: int = 127
    stats: dict = field(default_factory=dict)  # calibration record, for reports only
    inputs: list[str] = field(default_factory=list)
    f_ins: list[int] = field(default_factory=list)   # fix position of every input
    groups: int = 1
    f_wc: np.ndarray | None = None     # per-channel weight fix positions (Cout,)
    alpha_q: int = 0                   # leaky_relu slope, over 2**ALPHA_BITS
    multiplier: int = 1                # avgpool reciprocal at fix f_w
    channels: list[int] = field(default_factory=list)   # view: output channel i is input's channels[i]
    unsigned: bool = False             # the output is stored as uint8 (unsigned_outputs)

    @property
    def dtype(self):
        """The type of the output's codes: uint8 or int8."""
        return np.uint8 if self.unsigned else np.int8

    @property
    def shift(self) -> int:
        return self.f_in + self.f_w - self.f_out

    @property
    def shifts(self) -> np.ndarray:
        """The shift of every output channel (Cout,), per-channel weights or not."""
        f_w = self.f_wc if self.f_wc is not None else np.full(self.out_shape[0], self.f_w)
        return self.f_in + np.asarray(f_w, np.int64) - self.f_out

    @property
    def sources(self) -> list[str]:
        return self.inputs or [self.input]


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

    def unsigned(self, name: str) -> bool:
        """Whether tensor `name` (a layer's output, or "input") is stored as uint8."""
        return name != "input" and next(l for l in self.layers if l.name == name).unsigned

    def quantize_input(self, x_float: np.ndarray) -> np.ndarray:
        """Float input (N, C, H, W) -> int8 at the model's input fix position, rounded as
        its quantization config says for inputs (a hand-built QModel without one: the
        default config's)."""
        from hwq.compiler.quant.config import load_quant_config
        config = self.quant_config or load_quant_config().as_dict()
        tensor = config["tensor_quantize_config"]["input"]
        lo = -127 if tensor["narrow_range"] else INT8_MIN
        return quantize_float(x_float, self.f_input, tensor["round_mode"], lo, INT8_MAX)

    def dequantize_output(self, y_int8: np.ndarray) -> np.ndarray:
        """The model's int8 (or uint8) output as float32 values."""
        return np.ldexp(np.asarray(y_int8, dtype=np.float32), -self.f_output).astype(np.float32)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.layers[-1].out_shape


_ARRAYS = ("weight", "bias", "f_wc")          # the QLayer fields that are arrays


def _plain(value):
    """A value as JSON holds it: arrays and NumPy scalars as lists and Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def qmodel_to_npz(qmodel: QModel) -> bytes:
    """The QModel as an .npz: every layer's arrays under `<index>/<field>`, everything else
    as JSON under `meta` (no pickles: np.load with allow_pickle=False reads it)."""
    arrays, layers = {}, []
    for i, layer in enumerate(qmodel.layers):
        fields = {}
        for f in dataclasses.fields(layer):
            value = getattr(layer, f.name)
            if f.name in _ARRAYS:
                if value is not None:
                    arrays[f"{i}/{f.name}"] = np.asarray(value)
            else:
                fields[f.name] = _plain(value)
        layers.append(fields)
    meta = {"name": qmodel.name, "input_shape": list(qmodel.input_shape),
            "f_input": qmodel.f_input, "quant_config": _plain(qmodel.quant_config),
            "layers": layers}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def qmodel_from_npz(blob: bytes) -> QModel:
    """Inverse of qmodel_to_npz."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        layers = []
        for i, fields in enumerate(meta["layers"]):
            arrays = {name: z[f"{i}/{name}"] for name in _ARRAYS if f"{i}/{name}" in z.files}
            layers.append(QLayer(**{**fields, "in_shape": tuple(fields["in_shape"]),
                                    "out_shape": tuple(fields["out_shape"]), **arrays}))
    return QModel(meta["name"], tuple(meta["input_shape"]), meta["f_input"], layers,
                  meta["quant_config"])
