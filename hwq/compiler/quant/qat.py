"""Quantization-aware training: the Graph as a torch module that computes in the integer
domain the golden model defines, with straight-through gradients.

`FakeQuantNet` holds float weights (and, for convs that had a BatchNorm, the unfolded conv
and BN, which train with batch statistics until `freeze_bn_step` and with frozen running
ones after) and power-of-two fix positions: re-derived every training step from the
tensors' ranges ("derive": weights max-min, activations an EMA of the batch max),
learned as log2 thresholds ("learn") or kept as the QModel's ("keep"). The weights start
from the float model's ("float") or from the QModel's integer ones ("qmodel", BatchNorm
folded), so QAT can continue from a fast-finetuned QModel. Every tensor is carried as an
integer-valued float64 times 2**-f, and every rounding is `ROUNDERS` -- proven equal to
requant.py's rule by tests -- so in eval mode the net equals the golden model of
`export(net)` bit for bit. `export` makes the QModel with the same `make_qlayer` as
post-training calibration.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwq.arch.requant import ALPHA_BITS, INT8_MAX, code_max
from hwq.compiler.ir import MOVES, Graph, Layer, QModel, unsigned_outputs
from hwq.compiler.quant.calibrate import check_accumulator_bounds, make_qlayer
from hwq.compiler.quant.float_model import pad, run_float
from hwq.compiler.quant.config import QuantConfig
from hwq.compiler.quant.rewrite import prepare

FIX_MODES = ("derive", "learn", "keep")
INITS = ("float", "qmodel")
EMA = 0.9          # activation range average, per training step
BN_MOMENTUM = 0.1  # as nn.BatchNorm2d's default

# The rounding modes on exact integer-valued float64 tensors: v = acc / 2**shift.
ROUNDERS = {
    "half_up": lambda v: torch.floor(v + 0.5),
    "half_down": lambda v: torch.ceil(v - 0.5),
    "half_even": torch.round,
    "std_round": lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5),
}


def ste(v: torch.Tensor, fn) -> torch.Tensor:
    """fn(v) forward, identity gradient (the straight-through estimator)."""
    return v + (fn(v) - v).detach()


def round_clamp(v: torch.Tensor, mode: str, lo, hi) -> torch.Tensor:
    """requantize's rounding and saturation on v = acc * 2**-shift; gradients pass
    straight through the rounding and stop where the clamp saturates."""
    return torch.clamp(ste(v, ROUNDERS[mode]), lo, hi)


def _fix(absmax: torch.Tensor, hi: int = INT8_MAX) -> torch.Tensor:
    """methods.fix_position on a tensor of ranges (0 -> 7, the zero-range convention)."""
    a = absmax.double().clamp(min=1e-30)
    f = torch.floor(math.log2(hi) - torch.log2(a))
    f = f + (a * 2.0 ** (f + 1) <= hi).double() - (a * 2.0 ** f > hi).double()
    return torch.where(absmax > 0, f, torch.full_like(f, 7.0))


class _Fix(nn.Module):
    """A tensor's fix position, for codes up to `hi`: derived from a range, learned as a
    log2 threshold, or kept as the QModel's ("keep")."""

    def __init__(self, f: float | np.ndarray, mode: str, hi: int = INT8_MAX):
        super().__init__()
        self.mode, self.hi = mode, hi
        value = torch.as_tensor(np.asarray(f, np.float64))
        if mode == "learn":
            self.log2_t = nn.Parameter(math.log2(hi) - value)
        else:
            self.register_buffer("f", value.clone())
        self.register_buffer("ema", hi * 2.0 ** -value.clone())

    def __call__(self, absmax: torch.Tensor | None = None, average: bool = False) -> torch.Tensor:
        if self.mode == "learn":
            return ste(math.log2(self.hi) - self.log2_t, torch.floor)
        if absmax is not None and self.training and self.mode == "derive":
            absmax = absmax.detach().double()
            if average:
                self.ema.mul_(EMA).add_((1 - EMA) * absmax)
                absmax = self.ema
            self.f.copy_(_fix(absmax, self.hi))
        return self.f

    def value(self) -> np.ndarray:
        return np.asarray(self().detach().numpy(), np.int64)


class FakeQuantNet(nn.Module):
    def __init__(self, graph: Graph, qmodel: QModel, config: QuantConfig, fix_mode: str = "derive",
                 freeze_bn_step: int = 200, init: str = "float"):
        super().__init__()
        if fix_mode not in FIX_MODES or init not in INITS:
            raise ValueError(f"fix_mode {fix_mode!r} (one of {FIX_MODES}), init {init!r} (one of {INITS})")
        graph = prepare(graph, config)   # the float graph the QModel was made from
        if init == "qmodel":   # the QModel's folded integer weights: no BatchNorm to unfold
            graph = dataclasses.replace(graph, layers=[dataclasses.replace(l, bn=None) for l in graph.layers])
        self.graph, self.config, self.freeze_bn_step = graph, config, freeze_bn_step
        self.tensors = {l.name: config.for_layer(l) for l in graph.layers}
        # which outputs are uint8, as the QModel's (the same rule on the same graph)
        self.unsigned = unsigned_outputs(graph.layers, config.activation_signedness)
        q = {l.name: l for l in qmodel.layers}
        self.fix = nn.ModuleDict({"input": _Fix(qmodel.f_input, fix_mode)})
        self.params = nn.ParameterDict()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        for layer in graph.layers:
            self.fix[layer.name] = _Fix(q[layer.name].f_out, fix_mode, code_max(self.unsigned[layer.name]))
            if layer.kind != "conv":
                continue
            f_w = q[layer.name].f_wc if q[layer.name].f_wc is not None else q[layer.name].f_w
            self.fix[f"{layer.name}__w"] = _Fix(f_w, fix_mode)
            # the QModel's bias, which bias correction may have moved from the float one
            acc_fix = q[layer.name].f_in + np.broadcast_to(np.asarray(f_w), (len(layer.weight),))
            bias = np.ldexp(q[layer.name].bias.astype(np.float64), -acc_fix)
            weight = layer.weight
            if init == "qmodel":   # exactly the QModel's integer weights, as floats
                f_wc = np.broadcast_to(np.asarray(f_w), (len(layer.weight),))
                weight = np.ldexp(q[layer.name].weight.astype(np.float64), -f_wc[:, None, None, None])
            source = dict(layer.bn or {"weight": weight, "bias": bias})
            if layer.bn:
                source["beta"] = source["beta"] + (bias - layer.bias)   # folded bias -> QModel's
                self.register_buffer(_bn(layer.name, "mean"), torch.from_numpy(layer.bn["mean"].astype(np.float64)))
                self.register_buffer(_bn(layer.name, "var"), torch.from_numpy(layer.bn["var"].astype(np.float64)))
            for k in ("weight", "bias", "gamma", "beta"):
                if source.get(k) is not None:
                    self.params[f"{layer.name}__{k}"] = nn.Parameter(torch.from_numpy(np.asarray(source[k], np.float64)))

    # --- float weights -----------------------------------------------------------

    def folded(self, layer: Layer, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv's weight and bias with its BatchNorm folded in: with the batch's
        statistics of x while training before the freeze step, else the running ones."""
        w = self.params[f"{layer.name}__weight"]
        key = f"{layer.name}__bias"
        b = self.params[key] if key in self.params else torch.zeros(len(w), dtype=w.dtype)
        if not layer.bn:
            return w, b
        mean, var = getattr(self, _bn(layer.name, "mean")), getattr(self, _bn(layer.name, "var"))
        if x is not None and self.training and int(self.step) < self.freeze_bn_step:
            y = F.conv2d(x, w, None, layer.stride, layer.padding, 1, layer.groups)
            mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = y.numel() / y.shape[1]
                running_mean, running_var = getattr(self, _bn(layer.name, "mean")), getattr(self, _bn(layer.name, "var"))
                running_mean.lerp_(mean.detach(), BN_MOMENTUM)
                running_var.lerp_(var.detach() * n / max(n - 1, 1), BN_MOMENTUM)
        scale = self.params[f"{layer.name}__gamma"] / torch.sqrt(var + layer.bn["eps"])
        return w * scale[:, None, None, None], self.params[f"{layer.name}__beta"] + (b - mean) * scale

    # --- the integer-domain forward ------------------------------------------------

    def forward(self, x: torch.Tensor, round_output: bool = True) -> torch.Tensor:
        """Float input -> the output as floats at its fix position (as QModel.dequantize_output).
        round_output False: the last layer's output before its rounding (still saturated),
        the value a distillation loss sees, as fast finetune's does: that rounding is noise
        of a fixed size the weights cannot remove, and only adds noise to the gradient."""
        input_q = self.config.input
        f = self.fix["input"](x.abs().max(), average=True)
        lo = -INT8_MAX if input_q.narrow_range else -INT8_MAX - 1
        env = {"input": (round_clamp(x.double() * 2.0 ** f, input_q.round_mode, lo, INT8_MAX), f)}
        last = self.graph.layers[-1]
        for layer in self.graph.layers:
            env[layer.name] = self._layer(layer, [env[s] for s in layer.sources],
                                          round_output or layer is not last)
        if self.training:
            self.step += 1
        v, f = env[self.graph.layers[-1].name]
        return v * 2.0 ** -f

    def _layer(self, layer: Layer, xs: list, rounded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        (x, f_in) = xs[0]
        if layer.kind == "maxpool":
            return F.max_pool2d(pad(x, layer), layer.kernel, layer.stride), f_in
        if layer.kind == "flatten":
            return x.reshape(len(x), -1, 1, 1), f_in
        if layer.kind == "view":
            return x[:, layer.channels], f_in
        act = self.tensors[layer.name]["activation"]
        if layer.kind == "conv":
            acc, shift = self._conv(layer, x * 2.0 ** -f_in, x, f_in)
        elif layer.kind == "add":
            top = torch.maximum(xs[0][1], xs[1][1])
            acc, shift = sum(v * 2.0 ** (top - f) for v, f in xs), top
        elif layer.kind == "avgpool":
            window = layer.kernel[0] * layer.kernel[1]
            f_w = _fix(torch.tensor(1.0 / window))
            mult = ROUNDERS["half_up"](torch.tensor(1.0 / window, dtype=torch.float64) * 2.0 ** f_w)
            total = F.avg_pool2d(pad(x, layer), layer.kernel, layer.stride, divisor_override=1)
            acc, shift = total * mult, f_in + f_w
        else:  # concat: each input requantized to the output's fix position on its own
            acc, shift = None, None
        real = self._real_output(layer, xs, acc, shift)
        f_out = self.fix[layer.name](real.abs().max(), average=True)
        lo, hi = _clamp(layer.act, f_out, act.narrow_range, self.unsigned[layer.name])
        if layer.kind == "concat":
            return torch.cat([round_clamp(v * 2.0 ** (f_out - f), act.round_mode, lo, hi)
                              for v, f in xs], dim=1), f_out
        if layer.act == "leaky_relu":
            acc = torch.where(acc < 0, acc * round(layer.alpha * 2 ** ALPHA_BITS), acc * 2 ** ALPHA_BITS)
            shift = shift + ALPHA_BITS
        shift = shift - f_out
        shift = shift[None, :, None, None] if shift.ndim else shift
        v = acc * 2.0 ** -shift
        return (round_clamp(v, act.round_mode, lo, hi) if rounded else torch.clamp(v, lo, hi)), f_out

    def _real_output(self, layer, xs, acc, shift) -> torch.Tensor:
        """The layer's output before its requantization, in real units (sets f_out)."""
        if layer.kind == "concat":
            return torch.cat([v * 2.0 ** -f for v, f in xs], dim=1)
        s = shift[None, :, None, None] if shift.ndim else shift
        y = acc.detach() * 2.0 ** -s
        if layer.act == "relu":
            return y.clamp(min=0)
        if layer.act == "relu6":
            return y.clamp(0, 6)
        return torch.where(y < 0, y * layer.alpha, y) if layer.act == "leaky_relu" else y

    def _conv(self, layer: Layer, x_real: torch.Tensor, x: torch.Tensor, f_in: torch.Tensor):
        wq, bq = self.tensors[layer.name]["weights"], self.tensors[layer.name]["bias"]
        # through float32, as export stores them, so eval rounds the very same values
        w, b = (t.float().double() for t in self.folded(layer, x_real))
        absmax = w.detach().abs().reshape(len(w), -1).max(dim=1).values
        f_w = self.fix[f"{layer.name}__w"](absmax if wq.per_channel else absmax.max())
        f_wc = f_w if f_w.ndim else f_w.expand(len(w))
        lo = -INT8_MAX if wq.narrow_range else -INT8_MAX - 1
        w_int = round_clamp(w * 2.0 ** f_wc[:, None, None, None], wq.round_mode, lo, INT8_MAX)
        b_int = round_clamp(b * 2.0 ** (f_in + f_wc), bq.round_mode, -2.0 ** 31, 2.0 ** 31 - 1)
        acc = F.conv2d(x, w_int, b_int, layer.stride, layer.padding, 1, layer.groups)
        return acc, f_in + f_wc

    # --- export ------------------------------------------------------------------

    def export(self) -> QModel:
        """The QModel of the trained net: folded float weights at the learned fix positions,
        made integer exactly as post-training quantization makes them."""
        self.eval()
        fixes = {"input": int(self.fix["input"].value())}
        layers = []
        with torch.no_grad():
            for layer in self.graph.layers:
                tensors = self.tensors[layer.name]
                f_ins = [fixes[s] for s in layer.sources]
                f_out = f_ins[0] if layer.kind in MOVES else int(self.fix[layer.name].value())
                f_w, float_layer = None, layer
                if layer.kind == "conv":
                    w, b = self.folded(layer)
                    f_w = self.fix[f"{layer.name}__w"].value()
                    f_w = f_w if tensors["weights"].per_channel else int(f_w)
                    float_layer = dataclasses.replace(layer, weight=w.numpy().astype(np.float32),
                                                      bias=b.numpy().astype(np.float32))
                layers.append(make_qlayer(float_layer, f_ins, f_out, f_w, tensors,
                                          unsigned=self.unsigned[layer.name]))
                fixes[layer.name] = f_out
        qmodel = QModel(self.graph.name, tuple(self.graph.input_shape), fixes["input"], layers,
                        self.config.as_dict())
        check_accumulator_bounds(qmodel)
        return qmodel


def _bn(name: str, stat: str) -> str:
    return f"bn_{stat}_{name.replace('.', '_')}"


def _clamp(act: str, f_out: torch.Tensor, narrow: bool, unsigned: bool):
    """requant.relu_clamp with a tensor fix position (it may be learned)."""
    top = code_max(unsigned)
    lo = 0 if unsigned else -INT8_MAX if narrow else -INT8_MAX - 1
    if act in ("relu", "relu6"):
        hi = torch.clamp(6 * 2.0 ** f_out, max=top) if act == "relu6" else top
        return 0, torch.floor(torch.as_tensor(hi, dtype=torch.float64))
    return lo, top


def train_qat(graph: Graph, qmodel: QModel, config: QuantConfig, x: np.ndarray, y: np.ndarray | None,
              epochs: int = 3, lr: float = 1e-4, batch: int = 64, fix_mode: str = "derive",
              freeze_bn_step: int = 100, seed: int = 0, init: str = "float",
              schedule: str = "constant") -> FakeQuantNet:
    """Fine-tune a post-training-quantized model with quantization in the loop: by
    cross-entropy on labels y, or, with y None, by distillation (squared error against
    the float model's outputs). Returns the net; export() gives its QModel.

    fix_mode: "derive" (re-derived from the ranges every step), "learn" (log2 thresholds
    trained with the weights) or "keep" (the QModel's, unchanged). init: "float" starts
    from the float weights (BatchNorm unfolded, frozen at freeze_bn_step), "qmodel" from
    `qmodel`'s integer weights and biases (BatchNorm folded throughout: freeze_bn_step is
    moot) -- with fix_mode "keep", step 0 is then `qmodel` exactly, so a better-than-PTQ
    start (e.g. after fast finetune) is not thrown away; and if the trained net's loss on
    the whole of x (as exported) is not below the start's, the start is returned. schedule: "constant" lr, or
    "cosine" decay to 0 over the run. The defaults are the original behaviour (from the
    float weights, derived fix positions, constant lr), except that distillation now
    compares the last layer's output before its rounding (forward's round_output).

    For fidelity to the float model (logits SQNR), continuing from fast finetune works
    best: train_qat(graph, ff_qmodel, config, x, None, epochs=10, lr=1e-3, init="qmodel",
    fix_mode="keep", schedule="cosine") -- see bench/quant_accuracy.py."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule {schedule!r}: 'constant' or 'cosine'")
    net = FakeQuantNet(graph, qmodel, config, fix_mode, freeze_bn_step, init)
    xt = torch.from_numpy(np.asarray(x, np.float32))
    if y is None:
        target = torch.from_numpy(run_float(graph, x)[graph.layers[-1].name]).double()
        loss_of = lambda out, idx: F.mse_loss(out.reshape(target[idx].shape), target[idx])  # noqa: E731
    else:
        yt = torch.from_numpy(np.asarray(y, np.int64))
        loss_of = lambda out, idx: F.cross_entropy(out.reshape(len(idx), -1), yt[idx])  # noqa: E731
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    total = epochs * math.ceil(len(xt) / batch)
    decay = (lambda i: 0.5 * (1 + math.cos(math.pi * i / total))) if schedule == "cosine" else (lambda i: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    # thousands of small ops: torch's thread pool only adds barriers (as in fast finetune)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            if init == "qmodel":
                start, before = copy.deepcopy(net.state_dict()), _loss(net, xt, loss_of)
            net.train()
            for _ in range(epochs):
                for idx in torch.randperm(len(xt)).split(batch):
                    optimizer.zero_grad()
                    loss_of(net(xt[idx], round_output=y is not None), idx).backward()
                    optimizer.step()
                    scheduler.step()
            if init == "qmodel" and _loss(net, xt, loss_of) >= before:
                net.load_state_dict(start)   # minibatch noise ended worse than the start
        finally:
            torch.set_num_threads(threads)
    return net.eval()


def _loss(net: FakeQuantNet, xt: torch.Tensor, loss_of) -> float:
    """The loss of the net as exported (eval mode, output rounded) on the whole set."""
    net.eval()
    with torch.no_grad():
        return float(loss_of(net(xt), torch.arange(len(xt))))

