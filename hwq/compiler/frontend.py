"""Front end: a PyTorch nn.Module -> the float Graph IR.

torch.fx traces the forward into nodes; each node becomes an `Op` naming the ops it reads;
a short list of graph passes (hls4ml-style `match` / `transform`) composes chains of
views (view, reshape, transpose, permute, flatten, chunk, split, slicing, concatenations
of pieces of one tensor) and keeps those that only select or reorder channels, or
flatten, drops inference no-ops, folds BatchNorm into its conv and fuses activations into
the conv, linear or add that feeds them, until only Graph layers are left. The model may
branch and join (residual adds, channel concatenation); anything the accelerator cannot
run is refused here, once, with the node and the forward line that introduced it.
"""
from __future__ import annotations

import operator
import os
import re
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from hwq.compiler.ir import REQUANTIZING, Graph, Layer, pair
from hwq.errors import HwqError, raise_interrupt

SUPPORTED = ("Conv2d, Linear, BatchNorm2d, BatchNorm1d, ReLU, ReLU6, LeakyReLU, MaxPool2d, "
             "AvgPool2d, AdaptiveAvgPool2d, mean, add, cat, flatten, channel views (view, reshape, "
             "transpose, permute, contiguous, chunk, split, slicing), Dropout, Identity")

# Op kinds before the passes: the Graph's layer kinds plus those the passes absorb.
_MODULE_KINDS = {
    nn.Conv2d: "conv", nn.Linear: "conv", nn.MaxPool2d: "maxpool", nn.Flatten: "view",
    nn.AvgPool2d: "avgpool", nn.AdaptiveAvgPool2d: "avgpool",
    nn.BatchNorm2d: "batchnorm", nn.BatchNorm1d: "batchnorm",
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu",
    nn.Dropout: "noop", nn.Identity: "noop",
}
# In-place spellings (torch.relu_, F.leaky_relu_, x.relu_()) are the same ops: an in-place
# activation whose input is read elsewhere too is refused when it is fused (FuseActivation).
_FUNCTION_KINDS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
                   F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
                   torch.flatten: "view", torch.reshape: "view", torch.transpose: "view",
                   torch.permute: "view", torch.squeeze: "view", torch.unsqueeze: "view",
                   operator.getitem: "view", torch.chunk: "tuple", torch.split: "tuple",
                   F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool",
                   F.adaptive_avg_pool2d: "avgpool", torch.mean: "avgpool", torch.add: "add",
                   operator.add: "add", operator.iadd: "add", torch.cat: "concat",
                   torch.concat: "concat"}
_METHOD_KINDS = {"relu": "relu", "relu_": "relu", "view": "view", "reshape": "view", "flatten": "view",
                 "transpose": "view", "permute": "view", "contiguous": "view", "squeeze": "view",
                 "unsqueeze": "view", "chunk": "tuple", "split": "tuple",
                 "add": "add", "mean": "avgpool", "size": "shape", "dim": "shape"}
_ACTIVATIONS = ("relu", "relu6", "leaky_relu")

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
    inputs: list[str] = field(default_factory=list)  # producing ops' names, or "input"
    layer: Layer | None = None          # for the Graph's layer kinds
    module: nn.Module | None = None     # for batchnorm
    alpha: float = 0.0                  # for leaky_relu
    # a view: where each element of a sample's output comes from in its input (flat
    # indices), and the two tensors' shapes without the batch
    gather: np.ndarray | None = None
    view_in: tuple[int, ...] = ()
    view_out: tuple[int, ...] = ()


@dataclass
class Net:
    """The ops of a traced forward and the name of the one it returns."""

    ops: list[Op]
    output: str

    def op(self, name: str) -> Op | None:
        return next((o for o in self.ops if o.name == name), None)

    def consumers(self, name: str) -> list[str]:
        users = [o.name for o in self.ops if name in o.inputs]
        return users + (["output"] if self.output == name else [])

    def bypass(self, op: Op, by: str) -> None:
        """Remove `op`; whatever read it reads `by` instead."""
        for o in self.ops:
            o.inputs = [by if i == op.name else i for i in o.inputs]
        if self.output == op.name:
            self.output = by
        self.ops.remove(op)


def trace(module: nn.Module, input_shape: tuple[int, int, int], name: str) -> Graph:
    """Trace `module` (put in eval mode: hwq compiles inference) for inputs of shape
    (N, *input_shape) into a float Graph."""
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise HwqError(f"model {name}: input shape {tuple(input_shape)} must be three positive "
                       "ints (C, H, W)")
    module.eval()
    gm = _symbolic_trace(module, name)
    inputs = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise HwqError(f"model {name}: hwq compiles models with one input tensor; its forward "
                       f"takes {len(inputs)}" + (f" ({', '.join(inputs)})" if inputs else ""))
    _propagate_shapes(gm, input_shape, name)
    net = _net_of(gm, name)
    run_passes(net)
    if not net.ops:
        raise HwqError(f"model {name}: forward has no layer to compile")
    layers = []
    for op in net.ops:
        op.layer.inputs = list(op.inputs)
        op.layer.input = op.inputs[0]
        layers.append(op.layer)
    return Graph(name=name, input_shape=tuple(input_shape), layers=layers, module=module)


# --- graph passes -------------------------------------------------------------------

def _absorbing_producer(net: Net, op: Op, kinds, what: str, needs: str) -> Op:
    """The op that `op` is folded into: of one of `kinds`, with no activation yet, and
    read by `op` alone (else the unfolded value is still needed)."""
    producer = net.op(op.inputs[0])
    if producer is None or producer.kind not in kinds or producer.layer.act != "none":
        raise HwqError(f"{what} at {_where(op)} must directly follow {needs}")
    others = [u for u in net.consumers(producer.name) if u != op.name]
    if others:
        raise HwqError(f"{what} at {_where(op)}: the output of '{producer.name}' it would be "
                       f"folded into is also used by {', '.join(map(repr, others))}; apply "
                       f"{what} to one tensor that only it reads")
    return producer


class ComposeViews:
    """A view of a view is one view of the first one's input: the gathers compose; so is
    a concatenation of views of one tensor that repeats none of its elements. A view
    that only other views read is gone once they are composed."""

    def match(self, op: Op) -> bool:
        return op.kind in ("view", "concat")

    def transform(self, net: Net, op: Op) -> None:
        if op.kind == "concat":
            pieces = [net.op(name) for name in op.inputs]
            if not all(p is not None and p.kind == "view" for p in pieces) \
                    or len({p.inputs[0] for p in pieces}) != 1:
                return
            gather = np.concatenate([p.gather for p in pieces])
            if np.unique(gather).size < gather.size:
                return
            op.view_in, op.view_out = pieces[0].view_in, op.layer.out_shape
            op.kind, op.layer, op.gather, op.inputs = "view", None, gather, list(pieces[0].inputs)
            for piece in pieces:
                if not net.consumers(piece.name):
                    net.ops.remove(piece)
            return
        producer = net.op(op.inputs[0])
        if producer is None or producer.kind != "view":
            return
        op.gather, op.view_in = producer.gather[op.gather], producer.view_in
        op.inputs = list(producer.inputs)
        if not net.consumers(producer.name):
            net.ops.remove(producer)


class ChannelViews:
    """A composed view that selects or reorders channels (chunk, split, a channel
    shuffle) is a `view` layer over the channels it keeps; one that flattens them too is
    that view and a `flatten`; one that changes nothing (a flatten of 1x1 pixels, a
    contiguous) is dropped. Any other moves pixels, and is refused."""

    def match(self, op: Op) -> bool:
        return op.kind == "view"

    def transform(self, net: Net, op: Op) -> None:
        channels, flat = self._channels(op)
        _need(channels is not None, op, f"the views ending here make "
              f"(N, {', '.join(map(str, op.view_out))}) of (N, {', '.join(map(str, op.view_in))}) "
              "moving pixels; hwq runs views that only select or reorder channels, and flattens")
        c, h, w = _as_chw(op.view_in)
        layer = Layer(name=op.name, kind="view", input="", in_shape=(c, h, w),
                      out_shape=(len(channels), h, w), source=op.source, op="view",
                      channels=channels.tolist())
        identity = np.array_equal(channels, np.arange(c))
        if flat:
            if not identity:
                layer.name = f"{op.name}_channels"
                view = Op("view", layer.name, op.source, list(op.inputs), layer)
                net.ops.insert(net.ops.index(op), view)
                op.inputs = [layer.name]
            op.kind = "flatten"
            op.layer = Layer(name=op.name, kind="flatten", input="", in_shape=layer.out_shape,
                             out_shape=(len(channels) * h * w, 1, 1), source=op.source, op="flatten")
        elif identity:
            net.bypass(op, op.inputs[0])
        else:
            op.layer = layer

    @staticmethod
    def _channels(op: Op) -> tuple[np.ndarray | None, bool]:
        """(the input channels the view keeps, in their new order, and whether it also
        flattens the pixels), or (None, False) when it moves pixels."""
        if len(op.view_in) not in (1, 3) or len(op.view_out) not in (1, 3):
            return None, False
        (_, h, w), out = _as_chw(op.view_in), _as_chw(op.view_out)
        flat = (h, w) != (1, 1) and out[1:] == (1, 1)
        if not flat and out[1:] != (h, w) or op.gather.size % (h * w):
            return None, False
        channels = op.gather[::h * w] // (h * w)
        moved = not np.array_equal(op.gather, (channels[:, None] * h * w + np.arange(h * w)).ravel())
        return (None, False) if moved else (channels, flat)


def _as_chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A sample's shape as (C, H, W): a vector of F features is F channels of 1x1."""
    return tuple(shape) if len(shape) == 3 else (shape[0], 1, 1)


class RemoveNoOps:
    """Dropout and Identity do nothing at inference."""

    def match(self, op: Op) -> bool:
        return op.kind == "noop"

    def transform(self, net: Net, op: Op) -> None:
        net.bypass(op, op.inputs[0])


class FoldBatchNorm:
    """conv -> BatchNorm2d and Linear -> BatchNorm1d are one conv: BN at inference is a
    per-channel affine map. The unfolded parameters stay on the layer for QAT, which
    trains through the BN."""

    def match(self, op: Op) -> bool:
        return op.kind == "batchnorm"

    def transform(self, net: Net, op: Op) -> None:
        bn = op.module
        conv = _absorbing_producer(net, op, ("conv",), type(bn).__name__, "a Conv2d or Linear "
                                   "to be folded into it; move it after the conv or linear")
        layer = conv.layer

        def f64(t):
            return t.detach().double().numpy()

        cout = layer.weight.shape[0]
        gamma, beta = (f64(bn.weight), f64(bn.bias)) if bn.affine else (np.ones(cout), np.zeros(cout))
        scale = gamma / np.sqrt(f64(bn.running_var) + bn.eps)
        bias = layer.bias.astype(np.float64) if layer.bias is not None else np.zeros(cout)
        layer.bn = {"weight": layer.weight.copy(), "bias": bias.astype(np.float32),
                    "gamma": gamma.astype(np.float32), "beta": beta.astype(np.float32),
                    "mean": f64(bn.running_mean).astype(np.float32),
                    "var": f64(bn.running_var).astype(np.float32), "eps": float(bn.eps)}
        layer.weight = (layer.weight * scale[:, None, None, None]).astype(np.float32)
        layer.bias = ((bias - f64(bn.running_mean)) * scale + beta).astype(np.float32)
        net.bypass(op, conv.name)


class FuseActivation:
    """ReLU / ReLU6 / LeakyReLU become the clamp (or slope) of the conv, linear or add
    that feeds them: the hardware applies them while requantizing."""

    _NAMES = {"relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU"}

    def match(self, op: Op) -> bool:
        return op.kind in _ACTIVATIONS

    def transform(self, net: Net, op: Op) -> None:
        producer = _absorbing_producer(net, op, REQUANTIZING, self._NAMES[op.kind],
                                       "a Conv2d, Linear or add (without an activation "
                                       "already) to be fused into it")
        producer.layer.act = op.kind
        producer.layer.alpha = op.alpha
        net.bypass(op, producer.name)


def _non_negative(net: Net, name: str) -> bool:
    """Whether tensor `name` is >= 0 whatever the model's input: a ReLU or ReLU6 makes it,
    or a max pool, average pool, view, flatten, concatenation or add (without an
    activation) of such tensors (requantizing a non-negative value gives one)."""
    op = net.op(name)
    if op is None:                      # the model's input
        return False
    if op.layer.act in ("relu", "relu6"):
        return True
    moves = op.kind in ("maxpool", "avgpool", "flatten", "view", "concat") or \
        op.kind == "add" and op.layer.act == "none"
    return moves and all(_non_negative(net, s) for s in op.inputs)


class ZeroPadMaxPool:
    """A max pool's padding, and ceil_mode's partial windows, read zeros (the LOAD that
    feeds the MAXPOOL unit pads with zeros): torch's max, which pads with -inf, only where
    the input is non-negative. Refused elsewhere."""

    def match(self, op: Op) -> bool:
        return op.kind == "maxpool" and any(op.layer.pads)

    def transform(self, net: Net, op: Op) -> None:
        src = op.inputs[0]
        _need(_non_negative(net, src), op, f"MaxPool2d padding={op.layer.padding} (or ceil_mode's "
              f"partial windows) pads with zeros, which is torch's max only on a non-negative "
              f"input; '{src}' is not one (no ReLU or ReLU6 before it): drop the padding (a "
              "later vector unit pads with -128)")


PASSES = (ComposeViews(), ChannelViews(), RemoveNoOps(), FoldBatchNorm(), FuseActivation(),
          ZeroPadMaxPool())


def run_passes(net: Net, passes=PASSES) -> None:
    """Apply each pass, in order, to every op it matches."""
    for p in passes:
        for op in [op for op in net.ops if p.match(op)]:
            p.transform(net, op)


# --- tracing ------------------------------------------------------------------------

def _symbolic_trace(module: nn.Module, name: str) -> fx.GraphModule:
    if isinstance(module, fx.GraphModule):
        return module          # traced already (an ONNX import, a user's fx transform)
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(module)
    except Exception as e:  # the forward's own errors and fx's refusals, of any type
        raise_interrupt(e)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        at = _raised_at(e)
        at = f" at {at}" if at else ""
        if isinstance(e, fx.proxy.TraceError):   # a tensor's value steered the forward
            raise HwqError(f"model {name}: torch.fx cannot trace its forward: {reason}{at} "
                           "(hwq needs a forward without data-dependent control flow)") from None
        raise HwqError(f"model {name}: the model's forward raised {type(e).__name__}: "
                       f"{reason}{at}") from None
    return fx.GraphModule(tracer.root, graph, name)


def _raised_at(error: BaseException) -> str:
    """'file:line' of the innermost frame outside torch and this file where `error` was
    raised (the user's forward), or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and f.filename != __file__]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


class _ShapeProbe(fx.Interpreter):
    """Runs the traced module once, recording every tensor's shape on its node, and every
    size (x.size(), x.shape[1], sums of them) as its value."""

    def run_node(self, node):
        try:
            result = super().run_node(node)
        except Exception as e:
            raise_interrupt(e)
            raise _ProbeFailed(node, e) from None
        if isinstance(result, torch.Tensor):
            node.meta["hwq_shape"] = tuple(result.shape)
        elif isinstance(result, int) or isinstance(result, (tuple, list)) \
                and all(isinstance(v, int) for v in result):
            node.meta["hwq_value"] = result
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
    """'forward line N' of the innermost user frame that created `node`, what an importer
    recorded (`hwq_source`: the ONNX node), or ''."""
    if "hwq_source" in node.meta:
        return node.meta["hwq_source"]
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


def _data_args(node: fx.Node, kind: str, op: Op) -> list[fx.Node]:
    """The tensors `node` reads, in order. add reads two, concat a list, the rest one
    (their other arguments are parameters or sizes)."""
    if kind == "concat":
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        _need(isinstance(tensors, (list, tuple)), op, "cat must concatenate a list of tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        rank = len(_shape(tensors[0])) if tensors and "hwq_shape" in tensors[0].meta else 4
        _need(dim in (1, 1 - rank), op, f"cat along dim={dim} is not supported; hwq "
              "concatenates channels only (dim=1)")
        return list(tensors)
    if kind == "add":
        args = list(node.args[:2])
        _need(len(args) == 2 and all(isinstance(a, fx.Node) for a in args)
              and not node.kwargs.get("alpha", 1) != 1, op,
              "add must sum two tensors (no scalar operand, no alpha)")
        return args
    return [node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else []


def _net_of(gm: fx.GraphModule, name: str) -> Net:
    """Check the traced graph uses supported ops only and turn it into a Net of Ops."""
    nodes = list(gm.graph.nodes)
    shape_nodes, data = set(), {next(n for n in nodes if n.op == "placeholder"): "input"}
    tuples = {}             # chunk / split node -> the tensor it splits
    ops = []
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
            continue
        op = Op(kind=kind, name=node.name, source=_source(node))
        args = _data_args(node, kind, op)
        if args and args[0] in tuples:      # a piece of a chunk or split: a view of its tensor
            args = [tuples[args[0]]]
        extra = [n for n in node.all_input_nodes
                 if n not in args and n not in shape_nodes and n not in tuples]
        _need(args and not extra and all(a in data for a in args), op,
              f"{_op_name(node, gm)} must read the model input or layer outputs as its tensor "
              "argument(s) only")
        if kind == "tuple":                 # its pieces are views (getitem); itself no op
            tuples[node] = args[0]
            continue
        op.inputs = [data[a] for a in args]
        if kind == "view":
            _build_view(op, node, gm, args[0], tuples)
        else:
            _build(op, node, gm, args)
        data[node] = op.name
        ops.append(op)
    output = next(n for n in nodes if n.op == "output")
    if not isinstance(output.args[0], fx.Node) or output.args[0] not in data:
        raise HwqError(f"model {name}: forward must return one tensor computed by its layers")
    net = Net(ops, data[output.args[0]])
    for op in reversed(ops):
        if not net.consumers(op.name):
            if op.kind != "view":
                raise HwqError(f"{_where(op)}: its output is never used; remove it from the "
                               "forward (hwq compiles what reaches the output only)")
            net.ops.remove(op)      # a piece of a chunk nobody reads: it computes nothing
    return net


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


def _need(cond: bool, op: Op, what: str) -> None:
    if not cond:
        raise HwqError(f"{_where(op)}: {what}")


def _module(node: fx.Node, gm: fx.GraphModule, cls):
    """The nn.Module of a call_module node, or the equivalent one for a functional call."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    return cls(*node.args[1:], **node.kwargs)


def _build_view(op: Op, node: fx.Node, gm: fx.GraphModule, tensor: fx.Node, tuples: dict) -> None:
    """The view's gather: the node (through the chunk or split it takes a piece of) run on
    the indices of its input's elements, with the sizes the shape probe recorded."""
    shape = _shape(tensor)
    index = torch.arange(int(np.prod(shape))).reshape(shape)

    def run(n: fx.Node):
        def value(a: fx.Node):
            return index if a is tensor else run(a) if a in tuples else a.meta["hwq_value"]
        args, kwargs = fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "call_module":
            return gm.get_submodule(n.target)(*args, **kwargs)
        return n.target(*args, **kwargs)

    out = run(node)
    per = index[0].numel()
    _need(isinstance(out, torch.Tensor) and out.dim() > 0 and len(out) == _PROBE_BATCH
          and torch.equal(out[1], out[0] + per), op, f"{_op_name(node, gm)} mixes the batch "
          "dimension with the others; hwq keeps N first and apart")
    op.gather = out[0].flatten().numpy()
    op.view_in, op.view_out = tuple(shape[1:]), tuple(out.shape[1:])


def _build(op: Op, node: fx.Node, gm: fx.GraphModule, args: list[fx.Node]) -> None:
    """Fill `op` with its layer (or module), refusing parameters the hardware lacks."""
    if op.kind == "leaky_relu":
        op.alpha = float(_module(node, gm, nn.LeakyReLU).negative_slope)
    if op.kind in ("relu", "relu6", "leaky_relu", "noop"):
        return
    in_shape, out_shape = _chw(args[0], op), _chw(node, op)
    if op.kind == "batchnorm":
        op.module = gm.get_submodule(node.target)
        _need(op.module.running_mean is not None, op, f"{type(op.module).__name__} without "
              "running stats cannot be folded; use track_running_stats=True")
        return
    layer = Layer(name=op.name, kind=op.kind, input="", in_shape=in_shape, out_shape=out_shape,
                  source=op.source, op=_op_name(node, gm))
    op.layer = layer
    if op.kind == "add":
        _need(_chw(args[1], op) == in_shape == out_shape, op,
              f"add of shapes {in_shape} and {_chw(args[1], op)} broadcasts; hwq adds "
              "tensors of equal shape only")
        return
    if op.kind == "concat":
        _need(len({_chw(a, op)[1:] for a in args}) == 1, op, "cat inputs differ in height or width")
        return
    if op.kind == "maxpool":
        _build_maxpool(op, _module(node, gm, nn.MaxPool2d))
        return
    if op.kind == "avgpool":
        name = _op_name(node, gm)
        if name in ("adaptive_avg_pool2d", "AdaptiveAvgPool2d"):
            _build_adaptive_pool(op, _module(node, gm, nn.AdaptiveAvgPool2d))
        elif name == "mean":
            _build_mean(op, node, len(_shape(args[0])))
        else:
            _build_avgpool(op, _module(node, gm, nn.AvgPool2d))
        return
    mod = gm.get_submodule(node.target)
    layer.bias = mod.bias.detach().numpy().astype(np.float32).copy() if mod.bias is not None else None
    if isinstance(mod, nn.Linear):
        _need(len(_shape(args[0])) == 2, op,
              "Linear needs a flattened (N, features) input; add torch.flatten(x, 1) before it")
        layer.weight = mod.weight.detach().numpy().astype(np.float32)[:, :, None, None].copy()
        return
    _build_conv(op, mod)


def _floor_out(layer: Layer) -> tuple[int, int]:
    """The output size without ceil_mode's partial windows."""
    (_, h, w), (kh, kw) = layer.in_shape, layer.kernel
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _build_maxpool(op: Op, pool: nn.MaxPool2d) -> None:
    _need(pair(pool.dilation) == (1, 1), op,
          f"MaxPool2d dilation={pool.dilation} is not supported (use dilation=1)")
    _need(not pool.return_indices, op, "MaxPool2d return_indices=True is not supported")
    op.layer.kernel, op.layer.stride = pair(pool.kernel_size), pair(pool.stride)
    op.layer.padding = pair(pool.padding)      # ceil_mode: out_shape holds the partial windows


def _build_avgpool(op: Op, pool: nn.AvgPool2d) -> None:
    _need(pool.divisor_override is None, op, "AvgPool2d divisor_override is not supported")
    layer = op.layer
    layer.kernel, layer.stride = pair(pool.kernel_size), pair(pool.stride)
    layer.padding = pair(pool.padding)
    _need(layer.padding == (0, 0) or pool.count_include_pad, op,
          "AvgPool2d count_include_pad=False with padding is not supported (the divisor "
          "must be the window size)")
    _need(layer.out_shape[1:] == _floor_out(layer), op, "AvgPool2d ceil_mode=True makes partial "
          "windows here, which are not supported (the divisor must be the window size)")


def _build_adaptive_pool(op: Op, pool: nn.AdaptiveAvgPool2d) -> None:
    """Windows of in / out pixels per axis, where out divides in; 1: global pooling."""
    (_, h, w), (_, oh, ow) = op.layer.in_shape, op.layer.out_shape
    _need(h % oh == 0 and w % ow == 0, op, f"AdaptiveAvgPool2d output_size={pool.output_size} "
          f"on a {h}x{w} map pools windows of unequal sizes; hwq needs an output size that "
          "divides the input's")
    op.layer.kernel = op.layer.stride = (h // oh, w // ow)


def _build_mean(op: Op, node: fx.Node, rank: int) -> None:
    """mean over the spatial dimensions: global average pooling."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or ())
    _need(rank == 4 and sorted(d % 4 for d in dims) == [2, 3] and "dtype" not in node.kwargs, op,
          f"mean over dims {tuple(dims)} is not supported; hwq averages over height and width "
          "of (N, C, H, W) tensors only (global average pooling)")
    op.layer.kernel = op.layer.stride = op.layer.in_shape[1:]


def _build_conv(op: Op, mod: nn.Conv2d) -> None:
    layer = op.layer
    _need(pair(mod.dilation) == (1, 1), op,
          f"Conv2d dilation={mod.dilation} is not supported (use dilation=1)")
    _need(mod.padding_mode == "zeros", op,
          f"Conv2d padding_mode='{mod.padding_mode}' is not supported (use 'zeros')")
    layer.weight = mod.weight.detach().numpy().astype(np.float32).copy()
    layer.groups = mod.groups
    layer.stride = pair(mod.stride)
    kernel = pair(mod.kernel_size)
    if mod.padding == "valid":
        layer.padding = (0, 0)
    elif mod.padding == "same":
        _need(all(k % 2 for k in kernel), op, f"Conv2d padding='same' with kernel_size="
              f"{mod.kernel_size} pads an even kernel unevenly; give padding as ints")
        layer.padding = (kernel[0] // 2, kernel[1] // 2)
    else:
        layer.padding = pair(mod.padding)
