"""Front end: a PyTorch nn.Module -> the float Graph IR.

torch.fx traces the forward into nodes; each node becomes an `Op`; a short list of
graph passes (hls4ml-style `match` / `transform`) folds BatchNorm into its conv, fuses
activations into their conv/linear and drops inference no-ops, until only Graph layers
are left. Anything the accelerator cannot run is refused here, once, with the node and
the forward line that introduced it.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from hwq.compiler.ir import Graph, Layer
from hwq.errors import HwqError

SUPPORTED = "Conv2d, Linear, BatchNorm2d, ReLU, ReLU6, MaxPool2d, flatten, Dropout, Identity"

# Op kinds before the passes: the Graph's layer kinds plus those the passes absorb.
_MODULE_KINDS = {
    nn.Conv2d: "conv", nn.Linear: "conv", nn.MaxPool2d: "maxpool", nn.Flatten: "flatten",
    nn.BatchNorm2d: "batchnorm", nn.ReLU: "relu", nn.ReLU6: "relu6",
    nn.Dropout: "noop", nn.Identity: "noop",
}
_FUNCTION_KINDS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6",
                   torch.flatten: "flatten", F.max_pool2d: "maxpool"}
_METHOD_KINDS = {"relu": "relu", "view": "flatten", "reshape": "flatten", "flatten": "flatten",
                 "size": "shape", "dim": "shape"}

_OPERATORS = {f for f in vars(operator).values() if callable(f)}

_TORCH_DIR = os.path.dirname(torch.__file__)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')

# The batch used for shape propagation; 2, not 1, so a reshape that folds the batch
# dimension into the features is caught.
_PROBE_BATCH = 2


@dataclass
class Op:
    """One traced op on its way to becoming (or being absorbed into) a Layer."""

    kind: str
    name: str
    source: str
    layer: Layer | None = None          # for the Graph's layer kinds
    module: nn.Module | None = None     # for batchnorm


def trace(module: nn.Module, input_shape: tuple[int, int, int], name: str) -> Graph:
    """Trace `module` (put in eval mode: hwq compiles inference) for inputs of shape
    (N, *input_shape) into a straight-line float Graph."""
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise HwqError(f"model {name}: input shape {tuple(input_shape)} must be three positive "
                       "ints (C, H, W)")
    module.eval()
    gm = _symbolic_trace(module, name)
    _propagate_shapes(gm, input_shape, name)
    ops = _ops_of(gm, name)
    run_passes(ops)
    if not ops:
        raise HwqError(f"model {name}: forward has no layer to compile")
    layers = [op.layer for op in ops]
    for prev, layer in zip([None] + layers, layers):
        layer.input = prev.name if prev else "input"
    return Graph(name=name, input_shape=tuple(input_shape), layers=layers, module=module)


# --- graph passes -------------------------------------------------------------------

def _producer(ops: list[Op], op: Op) -> Op | None:
    i = ops.index(op)
    return ops[i - 1] if i else None


class RemoveNoOps:
    """Dropout and Identity do nothing at inference."""

    def match(self, op: Op) -> bool:
        return op.kind == "noop"

    def transform(self, ops: list[Op], op: Op) -> None:
        ops.remove(op)


class FoldBatchNorm:
    """conv -> BatchNorm2d is one conv: BN at inference is a per-channel affine map."""

    def match(self, op: Op) -> bool:
        return op.kind == "batchnorm"

    def transform(self, ops: list[Op], op: Op) -> None:
        conv = _producer(ops, op)
        if conv is None or conv.kind != "conv" or conv.layer.act != "none":
            raise HwqError(f"BatchNorm2d at {_where(op)} must directly follow a Conv2d to be "
                           "folded into it; move it after the conv")
        bn, layer = op.module, conv.layer

        def f64(t):
            return t.detach().double().numpy()

        gamma, beta = (f64(bn.weight), f64(bn.bias)) if bn.affine else (1.0, 0.0)
        scale = gamma / np.sqrt(f64(bn.running_var) + bn.eps)
        bias = layer.bias.astype(np.float64) if layer.bias is not None else 0.0
        layer.weight = (layer.weight * scale[:, None, None, None]).astype(np.float32)
        layer.bias = ((bias - f64(bn.running_mean)) * scale + beta).astype(np.float32)
        ops.remove(op)


class FuseActivation:
    """ReLU / ReLU6 become the clamp of the conv (or linear) that feeds them."""

    def match(self, op: Op) -> bool:
        return op.kind in ("relu", "relu6")

    def transform(self, ops: list[Op], op: Op) -> None:
        conv = _producer(ops, op)
        what = "ReLU" if op.kind == "relu" else "ReLU6"
        if conv is None or conv.kind != "conv" or conv.layer.act != "none":
            raise HwqError(f"{what} at {_where(op)} must directly follow a Conv2d or Linear "
                           "(without an activation already) to be fused into it")
        conv.layer.act = op.kind
        ops.remove(op)


PASSES = (RemoveNoOps(), FoldBatchNorm(), FuseActivation())


def run_passes(ops: list[Op], passes=PASSES) -> None:
    """Apply each pass, in order, to every op it matches."""
    for p in passes:
        for op in [op for op in ops if p.match(op)]:
            p.transform(ops, op)


# --- tracing ------------------------------------------------------------------------

def _symbolic_trace(module: nn.Module, name: str) -> fx.GraphModule:
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(module)
    except Exception as e:  # fx raises many types; all mean "cannot trace this forward"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HwqError(f"model {name}: torch.fx cannot trace its forward: {reason} "
                       "(hwq needs a forward without data-dependent control flow)") from None
    return fx.GraphModule(tracer.root, graph, name)


class _ShapeProbe(fx.Interpreter):
    """Runs the traced module once, recording every tensor's shape on its node."""

    def run_node(self, node):
        try:
            result = super().run_node(node)
        except Exception as e:
            raise _ProbeFailed(node, e) from None
        if isinstance(result, torch.Tensor):
            node.meta["hwq_shape"] = tuple(result.shape)
        return result


class _ProbeFailed(Exception):
    def __init__(self, node, error):
        self.node, self.error = node, error


def _propagate_shapes(gm: fx.GraphModule, input_shape, name: str) -> None:
    try:
        with torch.no_grad():
            _ShapeProbe(gm).run(torch.zeros((_PROBE_BATCH, *input_shape)))
    except _ProbeFailed as failed:
        reason = (str(failed.error).strip().splitlines() or [type(failed.error).__name__])[0]
        src = _source(failed.node)
        raise HwqError(f"model {name}: node '{failed.node.name}'" + (f" ({src})" if src else "")
                       + f" fails on an input of shape {tuple(input_shape)}: {reason}; check "
                       "the input shape") from None


def _shape(node: fx.Node) -> tuple[int, ...]:
    return node.meta["hwq_shape"]


def _source(node: fx.Node) -> str:
    """'forward line N' of the innermost user frame that created `node`, or ''."""
    stack = node.stack_trace or node.meta.get("stack_trace") or ""
    frames = [m for m in _FRAME.finditer(stack) if not m.group(1).startswith(_TORCH_DIR)]
    if not frames:
        return ""
    return f"{frames[-1].group(3)} line {frames[-1].group(2)}"


def _where(op: Op) -> str:
    return f"node '{op.name}'" + (f" ({op.source})" if op.source else "")


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", str(node.target))


def _kind(node: fx.Node, gm: fx.GraphModule, shape_nodes: set) -> str | None:
    """The op kind of a call node, 'shape' for a shape query, None if unsupported."""
    if node.op == "call_module":
        return _MODULE_KINDS.get(type(gm.get_submodule(node.target)))
    if node.op == "call_method":
        return _METHOD_KINDS.get(node.target)
    if node.target is getattr and node.args[1] == "shape":
        return "shape"
    inputs = node.all_input_nodes
    if node.target in _OPERATORS and inputs and all(n in shape_nodes for n in inputs):
        return "shape"  # arithmetic on sizes, e.g. x.size(1) * x.size(2)
    return _FUNCTION_KINDS.get(node.target)


def _ops_of(gm: fx.GraphModule, name: str) -> list[Op]:
    """Check the traced graph is a supported straight line and turn it into Ops."""
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise HwqError(f"model {name}: forward must take exactly one tensor; it takes {len(inputs)}")
    shape_nodes, data_nodes = set(), []
    for node in nodes:
        if not node.op.startswith("call_"):
            continue
        kind = _kind(node, gm, shape_nodes)
        if kind is None:
            src = _source(node)
            raise HwqError(f"unsupported op {_op_name(node, gm)} at node '{node.name}'"
                           + (f" ({src})" if src else "") + f"; supported: {SUPPORTED}")
        if kind == "shape":
            shape_nodes.add(node)
        else:
            data_nodes.append((node, kind))

    def data_users(node):
        return [u for u in node.users if u not in shape_nodes]

    prev, ops = inputs[0], []
    for node, kind in data_nodes:
        op = Op(kind=kind, name=node.name, source=_source(node))
        if not node.args or node.args[0] is not prev:
            raise HwqError(f"{_where(op)} does not consume the output of '{prev.name}'; hwq "
                           "compiles straight-line models only (each layer feeds the next)")
        extra = [n for n in node.all_input_nodes if n is not prev and n not in shape_nodes]
        users = data_users(prev)
        if extra or len(users) != 1:
            raise HwqError(f"{_where(op)}: the output of '{prev.name}' is used by "
                           f"{', '.join(repr(u.name) for u in users + extra)}; hwq compiles "
                           "straight-line models only (each tensor is used once)")
        _build(op, node, gm, prev)
        ops.append(op)
        prev = node
    output = next(n for n in nodes if n.op == "output")
    if output.args[0] is not prev or data_users(prev) != [output]:
        raise HwqError(f"model {name}: forward must return the last layer's output as one "
                       f"tensor (the output of '{prev.name}')")
    return ops


# --- one op's parameters ------------------------------------------------------------

def _chw(node: fx.Node, op: Op) -> tuple[int, int, int]:
    if "hwq_shape" not in node.meta:
        raise HwqError(f"{_where(op)}: '{node.name}' does not produce one tensor")
    shape = _shape(node)[1:]
    if len(shape) == 3:
        return shape
    if len(shape) == 1:
        return (shape[0], 1, 1)
    raise HwqError(f"{_where(op)}: tensors must be (N, C, H, W) or flattened (N, F); "
                   f"this one is (N, {', '.join(map(str, shape))})")


def _square(value, what: str, op: Op) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise HwqError(f"{_where(op)}: {what}={tuple(value)} is not square; hwq supports "
                       f"equal {what} in both dimensions only")
    return int(value[0])


def _need(cond: bool, op: Op, what: str) -> None:
    if not cond:
        raise HwqError(f"{_where(op)}: {what}")


def _build(op: Op, node: fx.Node, gm: fx.GraphModule, prev: fx.Node) -> None:
    """Fill `op` with its layer (or module), refusing parameters the hardware lacks."""
    if op.kind in ("relu", "relu6", "noop"):
        return
    in_shape, out_shape = _chw(prev, op), _chw(node, op)
    if op.kind == "batchnorm":
        op.module = gm.get_submodule(node.target)
        _need(op.module.running_mean is not None, op,
              "BatchNorm2d without running stats cannot be folded; use track_running_stats=True")
        return
    layer = Layer(name=op.name, kind=op.kind, input="", in_shape=in_shape, out_shape=out_shape,
                  source=op.source)
    op.layer = layer
    if op.kind == "flatten":
        in_dims = len(_shape(prev))
        out_dims = _shape(node)
        _need(in_dims == 4 and out_dims == (_PROBE_BATCH, int(np.prod(in_shape))), op,
              f"{_op_name(node, gm)} must flatten (N, C, H, W) to (N, C*H*W); it makes "
              f"(N, {', '.join(map(str, out_dims[1:]))}) from {in_dims}-D input")
        return
    if op.kind == "maxpool":
        pool = gm.get_submodule(node.target) if node.op == "call_module" \
            else nn.MaxPool2d(*node.args[1:], **node.kwargs)
        _need(_square(pool.padding, "padding", op) == 0, op,
              f"MaxPool2d padding={pool.padding} is not supported (use padding=0)")
        _need(_square(pool.dilation, "dilation", op) == 1, op,
              f"MaxPool2d dilation={pool.dilation} is not supported (use dilation=1)")
        _need(not pool.ceil_mode, op, "MaxPool2d ceil_mode=True is not supported")
        _need(not pool.return_indices, op, "MaxPool2d return_indices=True is not supported")
        layer.kernel = _square(pool.kernel_size, "kernel_size", op)
        layer.stride = _square(pool.stride, "stride", op)
        return
    mod = gm.get_submodule(node.target)
    layer.bias = mod.bias.detach().numpy().astype(np.float32).copy() if mod.bias is not None else None
    if isinstance(mod, nn.Linear):
        _need(len(_shape(prev)) == 2, op,
              "Linear needs a flattened (N, features) input; add torch.flatten(x, 1) before it")
        layer.weight = mod.weight.detach().numpy().astype(np.float32)[:, :, None, None].copy()
        return
    _need(mod.groups == 1, op, f"Conv2d groups={mod.groups} is not supported (use groups=1)")
    _need(_square(mod.dilation, "dilation", op) == 1, op,
          f"Conv2d dilation={mod.dilation} is not supported (use dilation=1)")
    _need(mod.padding_mode == "zeros", op,
          f"Conv2d padding_mode='{mod.padding_mode}' is not supported (use 'zeros')")
    kernel = _square(mod.kernel_size, "kernel_size", op)
    layer.weight = mod.weight.detach().numpy().astype(np.float32).copy()
    layer.stride = _square(mod.stride, "stride", op)
    if mod.padding == "valid":
        layer.padding = 0
    elif mod.padding == "same":
        _need(kernel % 2 == 1, op, f"Conv2d padding='same' with even kernel_size={kernel} pads "
              "unevenly; give padding as an int")
        layer.padding = kernel // 2
    else:
        layer.padding = _square(mod.padding, "padding", op)
