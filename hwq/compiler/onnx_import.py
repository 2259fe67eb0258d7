"""ONNX in: a float ONNX model -> a torch.fx GraphModule the front end traces as it is.

Each ONNX node becomes the torch module or function that computes the same thing
(Conv -> nn.Conv2d, Gemm -> nn.Linear, BatchNormalization -> nn.BatchNorm2d, Add ->
operator.add, ...), so an ONNX model meets the same front end, the same coverage and
the same refusals as the nn.Module it was exported from: an op the front end does not
support is refused there, named by its ONNX node. Each node runs once as it is made,
on a zero input of the shape the user names at batch 1, so every tensor's shape is
known: what only computes shapes (Shape, Gather, Concat of sizes, ...) is folded into
constants, and a reshape keeps the batch dimension first and free. The importer needs only the `onnx` package (`pip install 'hwq[onnx]'`),
not onnx2torch, whose torchvision import fails beside a CPU torch.
"""
from __future__ import annotations

import math
import operator
import re
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from hwq.errors import HwqError

# ONNX ops that become one torch callable on their data inputs, attributes aside.
_UNARY = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "HardSwish": F.hardswish}
_BINARY = {"Add": operator.add, "Sum": operator.add, "Mul": operator.mul, "Sub": operator.sub,
           "Div": operator.truediv}
SUPPORTED = ("Conv, Gemm, MatMul (+ Add of a bias), BatchNormalization, Relu, Clip, LeakyRelu, "
             "MaxPool, AveragePool, GlobalAveragePool, Add, Sum, Mul, Concat, Flatten, Reshape, "
             "Transpose, Squeeze, Unsqueeze, Split, Slice, Identity, Dropout, HardSigmoid, HardSwish, "
             "Sigmoid, Tanh, and shape arithmetic (Shape, Gather, Constant, ...) on constants")


def load_onnx(path: str | Path, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """The ONNX model at `path`, for inputs of shape (N, *input_shape), as a GraphModule
    in eval mode whose nodes carry `hwq_source` (the ONNX node each comes from)."""
    onnx = _onnx()
    path = Path(path)
    name = path.stem
    if not path.is_file():
        raise HwqError(f"model file {path} not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:   # protobuf's errors for bytes that are not a model, any type
        raise HwqError(f"model {path}: not an ONNX model ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'})") from None
    return _Importer(onnx, model, name, tuple(input_shape)).module()


def _onnx():
    try:
        import onnx
        import onnx.reference     # noqa: F401 (the constant folder)
    except ImportError:
        raise HwqError("reading ONNX models needs the onnx package: pip install 'hwq[onnx]'") from None
    return onnx


class _Importer:
    def __init__(self, onnx, model, name: str, input_shape: tuple[int, ...]):
        self.onnx, self.name = onnx, name
        graph = self.onnx_graph = model.graph
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise HwqError(f"model {name}: hwq compiles models with one input tensor; the ONNX "
                           f"graph takes {len(inputs)} ({', '.join(i.name for i in inputs)})")
        if len(graph.output) != 1:
            raise HwqError(f"model {name}: hwq compiles models with one output; the ONNX graph "
                           f"gives {len(graph.output)}")
        self.input = inputs[0]
        self._check_input_shape(input_shape)
        self.input_shape = (1, *input_shape)
        self.root, self.graph = nn.Module(), fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.bias_free: dict[str, nn.Linear] = {}     # MatMul outputs: Linear without bias yet
        self.used = self._readers(graph)

    def _check_input_shape(self, input_shape):
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in self.input.type.tensor_type.shape.dim]
        fixed = [(i, d) for i, d in enumerate(dims[1:]) if d is not None]
        if len(dims) != 1 + len(input_shape) or any(input_shape[i] != d for i, d in fixed):
            declared = "x".join(str(d) if d is not None else "?" for d in dims[1:])
            raise HwqError(f"model {self.name}: its ONNX input '{self.input.name}' is "
                           f"{declared or 'a scalar'} (batch aside), not the input shape "
                           f"{'x'.join(map(str, input_shape))} given; give --input-shape {declared}")

    @staticmethod
    def _readers(graph) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in graph.node:
            for i in node.input:
                counts[i] = counts.get(i, 0) + 1
        return counts

    def module(self) -> fx.GraphModule:
        g = self.graph
        x = self.env[self.input.name] = g.placeholder("x")
        x.meta["hwq_value"] = torch.zeros(self.input_shape)
        for i, node in enumerate(self.onnx_graph.node):
            self._node(node, i)
        out = self.onnx_graph.output[0].name
        if out not in self.env:
            raise HwqError(f"model {self.name}: its ONNX output '{out}' is a constant, not "
                           "computed from the input")
        g.output(self.env[out])
        gm = fx.GraphModule(self.root, g, self.name)
        return gm.eval()

    # -- one node ---------------------------------------------------------------------

    def _node(self, node, index: int) -> None:
        op = node.op_type
        data = [i for i in node.input if i and i not in self.consts]
        if op == "Constant":
            self.consts[node.output[0]] = self._constant(node)
        elif op == "Shape":
            self.consts[node.output[0]] = self._shape(node)
        elif not data and op not in ("Conv", "Gemm"):
            self._fold(node)
        else:
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise HwqError(f"model {self.name}: ONNX op {op} (node '{node.name or index}') "
                               f"is not supported; supported: {SUPPORTED}")
            handler(node, self._id(node, index))

    def _constant(self, node):
        a = node.attribute[0]
        helper = self.onnx.helper
        value = helper.get_attribute_value(a)
        if a.name == "value":
            return self.onnx.numpy_helper.to_array(value)
        return np.asarray(value)

    def _dims(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name` at batch 1."""
        if name in self.consts:
            return tuple(np.shape(self.consts[name]))
        return tuple(self.env[name].meta["hwq_value"].shape)

    def _shape(self, node):
        dims = self._dims(node.input[0])
        start, end = self._attr(node, "start", 0), self._attr(node, "end", None)
        return np.array(dims[start:end], np.int64)

    def _fold(self, node) -> None:
        """A node of constants only: evaluated once, here."""
        from onnx.reference import ReferenceEvaluator
        feeds = {i: self.consts[i] for i in node.input if i}
        try:
            outputs = ReferenceEvaluator(node).run(None, feeds)
        except Exception as e:   # the reference runtime's errors, any type
            raise HwqError(f"model {self.name}: node '{node.name}' ({node.op_type}) on "
                           f"constants cannot be evaluated: {type(e).__name__}: {e}") from None
        self.consts.update(zip(node.output, outputs))

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _attr(node, key, default):
        from onnx import helper
        for a in node.attribute:
            if a.name == key:
                return helper.get_attribute_value(a)
        return default

    def _id(self, node, index: int) -> str:
        """A Python identifier for the node, from its ONNX name."""
        text = re.sub(r"\W+", "_", node.name or f"{node.op_type}_{index}").strip("_").lower()
        return text if text and not text[0].isdigit() else f"n_{text}"

    def _where(self, node) -> str:
        return f"ONNX node '{node.name}' ({node.op_type})" if node.name else f"ONNX {node.op_type}"

    def _refuse(self, node, why: str):
        raise HwqError(f"model {self.name}: {self._where(node)} {why}")

    def _x(self, node, k: int = 0) -> fx.Node:
        name = node.input[k]
        if name in self.consts:
            self._refuse(node, f"reads the constant '{name}' where hwq needs a layer's output")
        return self.env[name]

    def _const(self, node, k: int, what: str) -> np.ndarray:
        name = node.input[k] if k < len(node.input) else ""
        if name and name not in self.consts:
            self._refuse(node, f"computes its {what} from the input; hwq needs a constant")
        return self.consts.get(name) if name else None

    def _emit(self, node, ident: str, kind: str, target, args, kwargs=None, output: int | None = 0):
        """A node of the fx graph, run once at batch 1 as it is made: every tensor's shape
        is known from its value, what Shape reads and a reshape keeps."""
        made = self.graph.create_node(kind, target, tuple(args), kwargs or {}, name=ident)
        made.meta["hwq_source"] = self._where(node)
        args, kwargs = fx.node.map_arg((made.args, made.kwargs), lambda n: n.meta["hwq_value"])
        fn = (self.root.get_submodule(target) if kind == "call_module" else
              target if kind == "call_function" else getattr(args[0], target))
        try:
            with torch.no_grad():
                made.meta["hwq_value"] = fn(*(args[1:] if kind == "call_method" else args), **kwargs)
        except Exception as e:   # torch's shape errors, any type
            self._refuse(node, f"fails on its inputs' shapes: {type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]}")
        if output is not None:
            self.env[node.output[output]] = made
        return made

    def _module(self, node, ident: str, module: nn.Module, x: fx.Node):
        name = ident
        while hasattr(self.root, name):
            name += "_"
        self.root.add_module(name, module)
        return self._emit(node, name, "call_module", name, [x])

    def _pads(self, node, rank: int = 2) -> tuple[int, ...]:
        if self._attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            self._refuse(node, "uses auto_pad; export it with explicit pads")
        pads = list(self._attr(node, "pads", [0] * 2 * rank))
        begin, end = pads[:rank], pads[rank:]
        if begin != end:
            self._refuse(node, f"pads {pads} differ before and after; hwq pads each axis "
                         "alike on both sides")
        return tuple(begin)

    def _window(self, node, what: str, kernel=()):
        kernel = tuple(self._attr(node, "kernel_shape", kernel))
        if len(kernel) != 2:
            self._refuse(node, f"is a {len(kernel)}-d {what}; hwq runs 2-d ones on (N, C, H, W)")
        strides = tuple(self._attr(node, "strides", [1, 1]))
        if tuple(self._attr(node, "dilations", [1, 1])) != (1, 1):
            self._refuse(node, "is dilated; hwq runs dilation 1")
        return kernel, strides, self._pads(node)

    # -- the ops ----------------------------------------------------------------------

    def _op_Conv(self, node, ident):
        w = self._const(node, 1, "weights")
        b = self._const(node, 2, "bias")
        kernel, strides, pads = self._window(node, "convolution", w.shape[2:])
        groups = self._attr(node, "group", 1)
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], kernel, strides, pads, groups=groups,
                         bias=b is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
            if b is not None:
                conv.bias.copy_(torch.from_numpy(np.array(b, np.float32)))
        self._module(node, ident, conv, self._x(node))

    def _linear(self, weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
        fc = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            fc.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
            if bias is not None:
                fc.bias.copy_(torch.from_numpy(np.broadcast_to(bias, weight.shape[:1]).astype(np.float32)))
        return fc

    def _op_Gemm(self, node, ident):
        if self._attr(node, "transA", 0):
            self._refuse(node, "transposes its input (transA=1)")
        alpha, beta = self._attr(node, "alpha", 1.0), self._attr(node, "beta", 1.0)
        w = self._const(node, 1, "weights") * alpha
        w = w if self._attr(node, "transB", 0) else w.T
        c = self._const(node, 2, "bias")
        self._module(node, ident, self._linear(w, None if c is None else c * beta), self._x(node))

    def _op_MatMul(self, node, ident):
        w = self._const(node, 1, "weights")
        if w.ndim != 2:
            self._refuse(node, f"multiplies by a {w.ndim}-d tensor; hwq runs a 2-d weight matrix")
        fc = self._linear(w.T, None)
        self._module(node, ident, fc, self._x(node))
        self.bias_free[node.output[0]] = fc

    def _op_BatchNormalization(self, node, ident):
        scale, bias, mean, var = (self._const(node, k, what) for k, what in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
        rank = len(self._dims(node.input[0]))
        bn = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(len(scale), eps=self._attr(node, "epsilon", 1e-5))
        with torch.no_grad():
            for p, v in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
                p.copy_(torch.from_numpy(np.array(v, np.float32)))
        self._module(node, ident, bn.eval(), self._x(node))

    def _op_Relu(self, node, ident):
        self._module(node, ident, nn.ReLU(), self._x(node))

    def _op_LeakyRelu(self, node, ident):
        self._module(node, ident, nn.LeakyReLU(self._attr(node, "alpha", 0.01)), self._x(node))

    def _op_Clip(self, node, ident):
        lo = self._const(node, 1, "minimum") if len(node.input) > 1 else self._attr(node, "min", None)
        hi = self._const(node, 2, "maximum") if len(node.input) > 2 else self._attr(node, "max", None)
        lo = -math.inf if lo is None else float(lo)
        hi = math.inf if hi is None else float(hi)
        if (lo, hi) == (0.0, 6.0):
            self._module(node, ident, nn.ReLU6(), self._x(node))
        elif (lo, hi) == (0.0, math.inf):
            self._module(node, ident, nn.ReLU(), self._x(node))
        else:
            self._emit(node, ident, "call_function", torch.clamp, [self._x(node), lo, hi])

    def _op_HardSigmoid(self, node, ident):
        alpha, beta = self._attr(node, "alpha", 0.2), self._attr(node, "beta", 0.5)
        if not (math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5):
            self._refuse(node, f"has alpha={alpha:g}, beta={beta:g}; torch's Hardsigmoid is "
                         "alpha=1/6, beta=0.5")
        self._module(node, ident, nn.Hardsigmoid(), self._x(node))

    def _unary(self, node, ident):
        self._emit(node, ident, "call_function", _UNARY[node.op_type], [self._x(node)])

    _op_Sigmoid = _op_Tanh = _op_HardSwish = _unary

    def _binary(self, node, ident):
        a, b = node.input[:2]
        if node.op_type == "Add" and (a in self.bias_free or b in self.bias_free):
            product, bias = (a, b) if a in self.bias_free else (b, a)
            fc = self.bias_free.pop(product)
            if bias in self.consts and self.used.get(product) == 1 and \
                    np.size(self.consts[bias]) in (1, fc.out_features):
                fc.bias = nn.Parameter(torch.from_numpy(np.broadcast_to(
                    np.asarray(self.consts[bias], np.float32).reshape(-1), (fc.out_features,)).copy()))
                self.env[node.output[0]] = self.env[product]
                return
        if a in self.consts or b in self.consts:
            self._refuse(node, f"{node.op_type.lower()}s a constant tensor; hwq runs this op on "
                         "two layer outputs only")
        self._emit(node, ident, "call_function", _BINARY[node.op_type], [self.env[a], self.env[b]])

    _op_Add = _op_Sum = _op_Mul = _op_Sub = _op_Div = _binary

    def _pool(self, node, ident, cls):
        kernel, strides, pads = self._window(node, "pool")
        kwargs = {"ceil_mode": bool(self._attr(node, "ceil_mode", 0))}
        if cls is nn.AvgPool2d:
            kwargs["count_include_pad"] = bool(self._attr(node, "count_include_pad", 0))
        self._module(node, ident, cls(kernel, strides, pads, **kwargs), self._x(node))

    def _op_MaxPool(self, node, ident):
        if len(node.output) > 1 and node.output[1]:
            self._refuse(node, "returns indices; hwq's max pool gives the values only")
        self._pool(node, ident, nn.MaxPool2d)

    def _op_AveragePool(self, node, ident):
        self._pool(node, ident, nn.AvgPool2d)

    def _op_GlobalAveragePool(self, node, ident):
        self._module(node, ident, nn.AdaptiveAvgPool2d(1), self._x(node))

    def _op_Concat(self, node, ident):
        axis = self._attr(node, "axis", 1)
        xs = [self._x(node, k) for k in range(len(node.input))]
        self._emit(node, ident, "call_function", torch.cat, [xs, axis])

    def _op_Flatten(self, node, ident):
        axis = self._attr(node, "axis", 1)
        if axis == 1:
            self._emit(node, ident, "call_function", torch.flatten, [self._x(node), 1])
        else:
            self._reshape(node, ident)

    def _reshape(self, node, ident):
        """To the node's output shape at batch 1, the batch dimension left free."""
        if node.op_type == "Reshape":
            out = [int(d) for d in self._const(node, 1, "shape")]
            if -1 in out[1:] or 0 in out:
                whole = int(np.prod(self._dims(node.input[0])))
                known = [d if d != 0 else self._dims(node.input[0])[i] for i, d in enumerate(out)]
                rest = whole // max(1, -int(np.prod(known)))
                out = [d if d != -1 else rest for d in known]
        elif node.op_type == "Flatten":
            dims, axis = self._dims(node.input[0]), self._attr(node, "axis", 1)
            out = [int(np.prod(dims[:axis])), int(np.prod(dims[axis:]))]
        else:
            out = list(self._squeezed(node))
        if not out or out[0] != 1:
            self._refuse(node, f"gives shape {tuple(out)} at batch 1; hwq keeps the batch "
                         "dimension first and free")
        self._emit(node, ident, "call_method", "reshape", [self._x(node), -1, *out[1:]])

    def _squeezed(self, node):
        dims = list(self._dims(node.input[0]))
        axes = self._const(node, 1, "axes") if len(node.input) > 1 else self._attr(node, "axes", None)
        if node.op_type == "Squeeze":
            axes = [i for i, d in enumerate(dims) if d == 1] if axes is None else \
                [int(a) % len(dims) for a in axes]
            return [d for i, d in enumerate(dims) if i not in axes]
        rank = len(dims) + len(axes)
        for a in sorted(int(a) % rank for a in axes):
            dims.insert(a, 1)
        return dims

    _op_Reshape = _op_Squeeze = _op_Unsqueeze = _reshape

    def _op_Transpose(self, node, ident):
        rank = len(self._dims(node.input[0]))
        perm = list(self._attr(node, "perm", list(range(rank))[::-1]))
        self._emit(node, ident, "call_method", "permute", [self._x(node), *perm])

    def _op_Split(self, node, ident):
        axis = self._attr(node, "axis", 0)
        sizes = self._const(node, 1, "split sizes") if len(node.input) > 1 else None
        sizes = self._attr(node, "split", None) if sizes is None else sizes
        if sizes is None:
            sizes = [self._dims(node.input[0])[axis] // len(node.output)] * len(node.output)
        whole = self._emit(node, ident, "call_function", torch.split,
                           [self._x(node), [int(s) for s in sizes], axis], output=None)
        for k in range(len(node.output)):
            self._emit(node, f"{ident}_{k}", "call_function", operator.getitem, [whole, k], output=k)

    def _op_Slice(self, node, ident):
        starts, ends = self._const(node, 1, "starts"), self._const(node, 2, "ends")
        dims = self._dims(node.input[0])
        axes = self._const(node, 3, "axes")
        axes = range(len(starts)) if axes is None else [int(a) % len(dims) for a in axes]
        steps = self._const(node, 4, "steps")
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * (max(axes) + 1)
        for a, b, e, k in zip(axes, starts, ends, steps):
            # ONNX ends past the axis (INT64_MAX for "to the end") clamp as Python's do
            index[a] = slice(int(b), int(min(e, dims[a])) if e >= 0 else int(e), int(k))
        self._emit(node, ident, "call_function", operator.getitem, [self._x(node), tuple(index)])

    def _op_Identity(self, node, ident):
        self.env[node.output[0]] = self._x(node)

    _op_Dropout = _op_Identity
