"""The golden model: what the accelerator must compute, bit for bit.

Layer by layer over a QModel, on int8 activations held pixel-major (N, H, W, C) -- uint8
ones where the QModel stores a tensor unsigned (QLayer.unsigned): conv
(grouped too) is int8 x int8 products summed exactly, plus the int32 bias, then the
requantization rule (`Requantizer`, `requantize_fast`: tested equal to `requantize`; one
shift per channel with per-channel weights; LeakyReLU scales the negative accumulators by
its slope first).
avgpool sums its window and multiplies by the quantized reciprocal; add aligns its operands
to the finer fix position and sums; concat requantizes each input to the output's fix
position. max-pool, flatten and view (channels selected or reordered) move int8 values
unchanged.

Exact sums on fast kernels. |x| <= X (128 for int8 x, 255 for uint8), so every partial
sum of an output's dot product, in whatever order a kernel adds its terms, is an integer
of magnitude at most B = X * sum|w| over that output channel's weights. Two kernels compute the sums:

- a float GEMM (im2col, torch.mm): float32 holds every integer of magnitude <= 2**24, so
  with B <= 2**24 every product and every partial sum is exact; above that the GEMM runs
  in float64 (exact to 2**53). Tiny convs over narrow rows multiply kh input rows by a
  banded weight matrix instead (zeros off the window): each output's sum is still its
  window's products, plus zeros, so the same bound holds.
- oneDNN's int8 convolution (torch.ops.onednn, inductor's x86 kernel), on CPUs whose int8
  dot products (VNNI, AMX) sum u8 x s8 products into int32 without saturating, and which
  converts the int32 sum once to float32: exact while |sum| <= 2**24. Its activations are
  u8 with zero point 0 (a zero point is compensated in float32, after that conversion:
  not exact): x itself when it is uint8 or x >= 0, else max(x, 0) and max(-x, 0), two
  convolutions subtracted. With B <= 2**24 every sum fits; otherwise the outputs are
  checked, and a float64 GEMM recomputes them if any sum reaches 2**24. Where
  B + |bias| <= 2**24 the kernel adds the bias too (exact for the same reason): a scalar
  offset requantizes faster than a vector. oneDNN sums the wrong windows on some
  geometries, so the kernel runs a geometry only after matching the float GEMM on it
  once, on random operands.

The int8 kernel runs the big convs (it costs ~40 us a call; the float GEMM wins below
`_SMALL_MACS`). Requantization (a `Requantizer` per layer, its constants made once) runs
in int32 where B + |bias| + the rounding constant stays under 2**31, else in int64, in
row blocks that keep its temporaries in cache. A big conv's images are shared among as
many threads as torch uses, each running the kernel (torch set to one thread meanwhile)
and requantizing its own (NumPy and torch release the GIL): no OpenMP barriers, and no
OpenMP thread spinning beside NumPy.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache, partial, reduce

import numpy as np
import torch

from hwq.arch.requant import ALPHA_BITS, Requantizer, apply_slope, code_magnitude, requantize_fast
from hwq.compiler.ir import QLayer, QModel
from hwq.errors import HwqError

# Samples per pass: bounds the memory of the int8 kernel's float32 outputs.
_BATCH = 64
# float32 holds every integer of magnitude up to 2**24 exactly.
_F32_EXACT = 1 << 24
# A conv of fewer multiply-accumulates (its whole batch) runs on one thread and the float
# GEMM: the int8 kernel's call, and handing work to other threads, cost more.
_SMALL_MACS = 1 << 22
# Elements of the float GEMM's im2col matrix per block of images.
_IM2COL_ELEMENTS = 1 << 23
# Geometries (batch, input shape, weight shape, stride, padding, groups, with bias, torch
# threads) the int8 kernel was checked on, and whether it got them right.
_INT8_CHECKED: dict[tuple, bool] = {}
# A conv over narrow rows (padded width at most _BAND_WIDTH windows: the GEMM's work grows
# by that ratio) whose banded weight matrix has at most _BAND_ELEMENTS runs as one GEMM of
# kh input rows against that matrix: tiny layers' im2col GEMMs run far below the machine's
# speed, and rows copy whole.
_BAND_WIDTH = 4
_BAND_ELEMENTS = 1 << 16
# Accumulators per requantization step (its int64 temporaries stay in L2), and per row.
_REQUANT_BLOCK = 1 << 18
_REQUANT_ROW = 1 << 10


def _int8_kernel_available() -> bool:
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv_pointwise")
            and any(caps.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8")))


_INT8_KERNEL = _int8_kernel_available()


class GoldenModel:
    """A QModel prepared for golden runs, as torch.ao's convert prepares a model: weight
    bounds, float weight matrices and the int8 kernel's packed weights are made on first
    use and kept. Prepare it once the QModel is final; later changes to it are not seen."""

    def __init__(self, qmodel: QModel):
        self.qmodel = qmodel
        self._steps = [_Conv(layer, qmodel.unsigned(layer.input)) if layer.kind == "conv"
                       else partial(_LAYERS[layer.kind], layer) for layer in qmodel.layers]
        # the last layer that reads each tensor, to drop it early when only the output is kept
        self._last_use = {s: i for i, layer in enumerate(qmodel.layers) for s in layer.sources}

    def __call__(self, x_int8: np.ndarray, every_layer: bool = True) -> dict[str, np.ndarray]:
        """Every layer's int8 output (N, C, H, W), keyed by layer name, in execution order;
        the last entry is the model's output. every_layer=False keeps only that one."""
        qmodel = self.qmodel
        x = np.asarray(x_int8)
        if x.dtype != np.int8 or x.ndim != 4 or x.shape[1:] != tuple(qmodel.input_shape):
            raise HwqError(f"model {qmodel.name}: golden input is {x.dtype} {x.shape}; it must be "
                           f"int8 (N, {', '.join(map(str, qmodel.input_shape))}) (see QModel.quantize_input)")
        # torch runs on one thread meanwhile: the threads are the golden model's own, each
        # running its share of a big conv's images, kernel and requantization together
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            parts = [self._run(x[i:i + _BATCH], every_layer, threads)
                     for i in range(0, max(len(x), 1), _BATCH)]
        finally:
            torch.set_num_threads(threads)
        outs = parts[0] if len(parts) == 1 else \
            {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return {name: y.transpose(0, 3, 1, 2) for name, y in outs.items()}

    def _run(self, x: np.ndarray, every_layer: bool, threads: int) -> dict[str, np.ndarray]:
        # Layers pass pixel-major (N, H, W, C) arrays, channels last: the GEMM's natural
        # layout. The (N, C, H, W) results are transposed views of them.
        env = {"input": np.array(x.transpose(0, 2, 3, 1), order="C")}
        for i, (layer, step) in enumerate(zip(self.qmodel.layers, self._steps)):
            xs = [env[s] for s in layer.sources]
            env[layer.name] = step(xs, threads) if isinstance(step, _Conv) else step(xs)
            if not every_layer:
                for s in set(layer.sources):
                    if self._last_use[s] == i:
                        del env[s]
        if not every_layer:
            return {layer.name: env[layer.name]}
        del env["input"]
        return env


def run_golden(qmodel: QModel, x_int8: np.ndarray, every_layer: bool = True) -> dict[str, np.ndarray]:
    """Every layer's int8 output (N, C, H, W), keyed by layer name, in execution order;
    the last entry is the model's output. every_layer=False keeps only that one. For
    repeated runs of one model, prepare it once with GoldenModel."""
    return GoldenModel(qmodel)(x_int8, every_layer)


def _pad(x: np.ndarray, layer: QLayer) -> np.ndarray:
    """Pixel-major x with the zero padding the layer's windows read (QLayer.pads)."""
    top, bottom, left, right = layer.pads
    if not (top or bottom or left or right):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _out_size(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """(N, OH, OW, kh, kw, C) view of the windows of contiguous pixel-major x (no copy;
    read only it)."""
    (kh, kw), (s_h, s_w) = kernel, stride
    n, h, w, c = x.shape
    sn, sh, sw, sc = x.strides
    shape = (n, _out_size(h, kh, s_h), _out_size(w, kw, s_w), kh, kw, c)
    return np.ndarray(shape, x.dtype, x, 0, (sn, s_h * sh, s_w * sw, sh, sw, sc))


def _exact_int(acc: np.ndarray) -> np.ndarray:
    """Accumulators that hold integers as integers: float32 ones are exact (|acc| <= 2**24)
    and fit int32; float64 ones go to int64."""
    if acc.dtype == np.float32:
        return acc.astype(np.int32)
    if acc.dtype == np.float64:
        return acc.astype(np.int64)
    return acc


class _Conv:
    """A conv layer prepared for repeated runs: its weight bounds, and its weights as the
    float GEMM's matrices and as the int8 kernel's packed weights (per batch size)."""

    def __init__(self, layer: QLayer, unsigned_in: bool = False):
        self.layer, self.unsigned_in = layer, unsigned_in
        cout, cin_g, kh, kw = layer.weight.shape
        self.kh, self.kw, self.kk, self.g, self.cout = kh, kw, kh * kw * cin_g, layer.groups, cout
        self.macs = int(np.prod(layer.out_shape)) * self.kk          # per image
        mass = np.abs(layer.weight.reshape(cout, -1), dtype=np.int16).sum(axis=1, dtype=np.int64)
        # every partial sum is at most X * sum|w| in magnitude: X = 128 for int8 inputs,
        # 255 for uint8 ones
        x_max = code_magnitude(unsigned_in)
        self.bound = x_max * int(mass.max(initial=0))
        self.f32_exact = self.bound <= _F32_EXACT
        # and the int8 kernel's int32 sums never overflow
        self.int8_fits = _INT8_KERNEL and self.bound < 1 << 31
        # per-tensor weights: one shift, which requantizes faster than a vector of them
        self.shifts = layer.shift if layer.f_wc is None else layer.shifts
        self.bias = layer.bias.astype(np.int64)
        # and with the bias too (then the int8 kernel adds it)
        self.bias_in_f32 = bool(np.all(x_max * mass + np.abs(self.bias) <= _F32_EXACT))
        top, bottom, left, right = layer.pads
        self.pointwise = (kh, kw, top, bottom, left, right) == (1, 1, 0, 0, 0, 0) and layer.stride == (1, 1)
        wp = layer.in_shape[2] + left + right
        self.band = (not self.pointwise and wp <= _BAND_WIDTH * kw
                     and kh * wp * cin_g * self.g * layer.out_shape[2] * cout <= _BAND_ELEMENTS)
        self._weight = None
        self._packed, self._rows, self._requantizers = {}, {}, {}

    def __call__(self, xs, threads: int = 1) -> np.ndarray:
        """The layer's int8 output; a big conv's images are shared among `threads` threads."""
        x = xs[0]
        out = np.empty((len(x), *self.layer.out_shape[1:], self.cout), self.layer.dtype)
        big = len(x) * self.macs >= _SMALL_MACS
        if not big or threads == 1:
            self._share(x, out, big)
            return out
        cuts = [len(x) * t // threads for t in range(threads + 1)]
        shares = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        helpers = [_pool(threads - 1).submit(self._share, x[a:b], out[a:b], big) for a, b in shares[1:]]
        a, b = shares[0]
        self._share(x[a:b], out[a:b], big)
        for helper in helpers:
            helper.result()
        return out

    def _share(self, x: np.ndarray, out: np.ndarray, big: bool) -> None:
        acc, biased = self.accumulate(x, big)
        m = acc.size // self.cout
        if m not in self._rows:
            # NumPy's loops run along a row: t rows of few channels go as one row of t * C,
            # with the per-channel shifts and bias repeated t times
            t = math.gcd(m, max(1, _REQUANT_ROW // self.cout))
            self._rows[m] = (t * self.cout, *(np.tile(v, t) if np.ndim(v) else v
                                               for v in (self.shifts, self.bias)))
        width, shifts, bias = self._rows[m]
        acc, out = acc.reshape(-1, width), out.reshape(-1, width)
        if self.layer.act == "leaky_relu":
            _requantize_blocks(self.layer, acc, shifts, 0 if biased else bias, out)
            return
        key = (width, biased)
        if key not in self._requantizers:
            # its constants made once; int32 arithmetic where the accumulators' bound allows
            layer = self.layer
            self._requantizers[key] = Requantizer(
                shifts, layer.round_mode, layer.lo, layer.hi, 0 if biased else bias,
                self.bound + (int(np.abs(self.bias).max(initial=0)) if biased else 0))
        requantizer = self._requantizers[key]
        rows = max(1, _REQUANT_BLOCK // width)
        if rows >= len(acc):
            requantizer(acc, out)
            return
        for i in range(0, len(acc), rows):
            requantizer(acc[i:i + rows], out[i:i + rows])

    def accumulate(self, x: np.ndarray, big: bool | None = None) -> tuple[np.ndarray, bool]:
        """conv(x, weight) of pixel-major int8 x: (N, OH, OW, Cout) integers, int32 or held
        exactly in float32 or float64, and whether the bias is in them yet. The int8 kernel
        runs `big` convs (by default those of _SMALL_MACS or more)."""
        n, biased = len(x), self.bias_in_f32
        if big is None:
            big = n * self.macs >= _SMALL_MACS
        if self.int8_fits and big:
            # u8 operands: x itself when it is uint8 or has no negative values (after a
            # ReLU), else x = max(x, 0) - max(-x, 0), two convolutions (the bias in the first)
            signed = x.dtype == np.int8 and x.min(initial=0) < 0
            if self._int8_trusted(n, biased) and (not signed or self._int8_trusted(n, False)):
                ys = [self._int8(np.maximum(x, 0).view(np.uint8), biased),
                      self._int8(np.negative(np.minimum(x, 0).view(np.uint8)))] if signed else \
                    [self._int8(x.view(np.uint8), biased)]
                # exact if every |sum| <= 2**24; rounding to float32 is monotonic, so a
                # larger sum never comes out below 2**24
                if self.f32_exact or all(-_F32_EXACT < y.min() and y.max() < _F32_EXACT for y in ys):
                    if len(ys) == 1:
                        return ys[0], biased
                    if self.f32_exact:      # the difference, conv(x) (+ bias), is in bounds too
                        return np.subtract(ys[0], ys[1], out=ys[0]), biased
                    return ys[0].astype(np.int32) - ys[1].astype(np.int32), biased  # may not be
        return self._float(x), False

    def _int8_trusted(self, n: int, biased: bool) -> bool:
        """Whether the int8 kernel gets this layer's geometry right for a batch of n (adding
        the bias or not, on torch's thread count). oneDNN sums the wrong windows for some
        (the tests found a 3x3 stride-2 conv over an 11x3 image, at some channel counts and
        batch sizes), so each is checked once on random operands well within the float32
        bound: the first, a middle and the last image random, against the float GEMM, the
        others 0."""
        layer = self.layer
        key = (n, layer.in_shape, layer.weight.shape, layer.stride, layer.padding, layer.groups, biased,
               torch.get_num_threads())
        if key not in _INT8_CHECKED:
            top = min(127, (_F32_EXACT // 256) // self.kk)       # 128 * K * top <= 2**23
            rng = np.random.default_rng(0)
            probe = _Conv(replace(layer, weight=rng.integers(-top, top + 1, layer.weight.shape, np.int8),
                                  bias=rng.integers(-(1 << 22), 1 << 22, self.cout, np.int32)),
                          self.unsigned_in)
            x = np.zeros((n, *layer.in_shape[1:], layer.in_shape[0]), np.int8)
            some = sorted({0, n // 2, n - 1})
            x[some] = rng.integers(0, 128, x[some].shape, np.int8)
            want = np.zeros((n, *layer.out_shape[1:], self.cout))
            want[some] = probe._float(x[some])
            _INT8_CHECKED[key] = top > 0 and np.array_equal(probe._int8(x.view(np.uint8), biased),
                                                            want + probe.bias if biased else want)
        return _INT8_CHECKED[key]

    def _float(self, x: np.ndarray) -> np.ndarray:
        """conv(x, weight) by im2col and a float GEMM, in blocks of images that bound the
        im2col matrix."""
        _, oh, ow = self.layer.out_shape
        step = max(1, _IM2COL_ELEMENTS // max(1, oh * ow * self.kk * self.g))
        if step >= len(x):
            return self._float_block(x)
        return np.concatenate([self._float_block(x[i:i + step]) for i in range(0, len(x), step)])

    def _float_block(self, x: np.ndarray) -> np.ndarray:
        layer, kh, kw, g = self.layer, self.kh, self.kw, self.g
        dtype = np.float32 if self.f32_exact else np.float64
        n, h, w, c = x.shape
        _, oh, ow = layer.out_shape
        m = n * oh * ow
        # the im2col matrix of each group, (M, K) with columns in (ky, kx, c) order
        if self.pointwise:                              # pixel by pixel (a Linear): x itself
            a = x.astype(dtype).reshape(m, g, c // g).transpose(1, 0, 2)
        else:
            xp = _pad(x.astype(dtype), layer)
            if self.band:
                # each output row from the kh input rows it reads, (N * OH, kh * Wp * C), times
                # the banded weights: band[ky, ix, c, ox, o] = weight[o, c, ky, ix - ox * stride]
                # inside the window (and group), else 0. Each output's sum is its window's
                # products and zeros: the bound above holds as for the im2col GEMM.
                sn, sh, sw, sc = xp.strides
                rows = np.ndarray((n, oh, kh, xp.shape[2], c), dtype, xp, 0,
                                  (sn, layer.stride[0] * sh, sh, sw, sc)).reshape(n * oh, -1)
                if self._weight is None:
                    self._weight = torch.from_numpy(self._banded(dtype))
                return torch.mm(torch.from_numpy(rows), self._weight).numpy().reshape(n, oh, ow, self.cout)
            win = _windows(xp, (kh, kw), layer.stride).reshape(n, oh, ow, kh, kw, g, c // g)
            # copied along whichever runs longer, a window row (kw * c) or an output row (ow)
            if ow > kw * c:
                a = np.ascontiguousarray(win.transpose(5, 3, 4, 6, 0, 1, 2)).reshape(g, self.kk, m)
                a = a.transpose(0, 2, 1)
            else:
                a = np.ascontiguousarray(win.transpose(5, 0, 1, 2, 3, 4, 6)).reshape(g, m, self.kk)
        if self._weight is None:
            cout_g = self.cout // g
            self._weight = torch.from_numpy(np.ascontiguousarray(
                layer.weight.reshape(g, cout_g, c // g, kh, kw).transpose(0, 3, 4, 2, 1)
                .reshape(g, self.kk, cout_g).astype(dtype)))
        if g == 1:
            acc = torch.mm(torch.from_numpy(a[0]), self._weight[0]).numpy()
        else:                                           # (groups, M, Cout/groups)
            acc = torch.bmm(torch.from_numpy(a), self._weight).numpy().transpose(1, 0, 2)
        return acc.reshape(n, oh, ow, self.cout)

    def _banded(self, dtype) -> np.ndarray:
        """The (kh * Wp * C, OW * Cout) banded weight matrix of the `band` GEMM."""
        layer, kh, kw, g, s = self.layer, self.kh, self.kw, self.g, self.layer.stride[1]
        cout_g, cin_g = self.cout // g, layer.weight.shape[1]
        _, _, left, right = layer.pads
        wp, ow = layer.in_shape[2] + left + right, layer.out_shape[2]
        band = np.zeros((kh, wp, g * cin_g, ow, self.cout), dtype)
        for grp in range(g):
            ci, co = slice(grp * cin_g, (grp + 1) * cin_g), slice(grp * cout_g, (grp + 1) * cout_g)
            taps = layer.weight[co].transpose(2, 3, 1, 0)           # (ky, kx, c, o)
            for ox in range(ow):
                band[:, ox * s:ox * s + kw, ci, ox, co] = taps
        return band.reshape(kh * wp * g * cin_g, ow * self.cout)

    def _int8(self, u: np.ndarray, biased: bool = False) -> np.ndarray:
        """conv(u, weight) (+ bias) of pixel-major u8 u on the int8 kernel, as float32."""
        layer, n = self.layer, len(u)
        if n not in self._packed:
            self._ones, self._zeros = torch.ones(self.cout), torch.zeros(self.cout, dtype=torch.int64)
            self._bias = torch.from_numpy(self.bias.astype(np.float32))
            self._packed[n] = torch.ops.onednn.qconv_prepack(
                torch.from_numpy(layer.weight), self._ones, 1.0, 0, list(layer.stride),
                list(layer.padding), [1, 1], self.g, [n, *layer.in_shape])
        acc = torch.ops.onednn.qconv_pointwise(
            torch.from_numpy(u).permute(0, 3, 1, 2), 1.0, 0, self._packed[n], self._ones,
            self._zeros, self._bias if biased else None, list(layer.stride), list(layer.padding),
            [1, 1], self.g, 1.0, 0, torch.float32, "none", [], "")
        return np.ascontiguousarray(acc.permute(0, 2, 3, 1).numpy())


@lru_cache(maxsize=1)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="golden")


def _requantize_blocks(layer: QLayer, acc: np.ndarray, shifts, bias, out: np.ndarray) -> None:
    """_requantize 2-D accumulators (integers, maybe held in float) into `out`, in row
    blocks of about _REQUANT_BLOCK."""
    rows = max(1, _REQUANT_BLOCK // acc.shape[1])
    if rows >= len(acc):
        _requantize(layer, _exact_int(acc), shifts, bias, out)
        return
    for i in range(0, len(acc), rows):
        _requantize(layer, _exact_int(acc[i:i + rows]), shifts, bias, out[i:i + rows])


def conv_accumulators(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """conv(x, weight) + bias as int64 (N, Cout, OH, OW): the int32 accumulators of int8
    or uint8 x."""
    acc, biased = _Conv(layer, x.dtype == np.uint8).accumulate(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    acc = _exact_int(acc).astype(np.int64)
    return (acc if biased else acc + layer.bias.astype(np.int64)).transpose(0, 3, 1, 2)


def _requantize(layer: QLayer, acc: np.ndarray, shifts, bias=0, out=None) -> np.ndarray:
    """acc + bias (channels last) -> the layer's int8 or uint8 codes with its activation;
    `shifts` and `bias` are one per channel or one for all."""
    if out is None:
        out = np.empty(acc.shape, layer.dtype)
    if layer.act == "leaky_relu":
        acc, bias = apply_slope(np.add(acc, bias, dtype=np.int64), layer.alpha_q), 0
        shifts = shifts + ALPHA_BITS
        if np.any(shifts < 0):  # a left shift saturates; the clip keeps the int64 exact
            acc = np.where(shifts < 0, np.clip(acc, -(1 << 8), 1 << 8), acc)
    return requantize_fast(acc, shifts, layer.round_mode, layer.lo, layer.hi, bias, out)


def _maxpool(layer: QLayer, xs) -> np.ndarray:
    # zero padding, as the LOAD that feeds the MAXPOOL unit pads (the front end pads only
    # non-negative tensors, where zeros change no max); the window's max is the max over
    # its rows of the max along each row
    x, (kh, kw), (sh, sw) = _pad(xs[0], layer), layer.kernel, layer.stride
    _, oh, ow = layer.out_shape
    rows = reduce(np.maximum, (x[:, ky:ky + sh * (oh - 1) + 1:sh] for ky in range(kh)))
    out = reduce(np.maximum, (rows[:, :, kx:kx + sw * (ow - 1) + 1:sw] for kx in range(kw)))
    return np.ascontiguousarray(out)


def _avgpool(layer: QLayer, xs) -> np.ndarray:
    windows = _windows(_pad(xs[0].astype(np.int64), layer), layer.kernel, layer.stride)
    total = windows.sum(axis=(3, 4))
    return _requantize(layer, total * layer.multiplier, layer.shift)


def _add(layer: QLayer, xs) -> np.ndarray:
    top = max(layer.f_ins)
    total = sum(x.astype(np.int64) << (top - f) for x, f in zip(xs, layer.f_ins))
    return _requantize(layer, total, top - layer.f_out)


def _concat(layer: QLayer, xs) -> np.ndarray:
    return np.concatenate([_requantize(layer, x, f - layer.f_out) for x, f in zip(xs, layer.f_ins)],
                          axis=3)


def _view(layer: QLayer, xs) -> np.ndarray:
    return np.ascontiguousarray(xs[0][..., layer.channels])


def _flatten(layer: QLayer, xs) -> np.ndarray:
    # C-major, as torch.flatten: the vector is one pixel of C*H*W channels
    x = xs[0]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 1, 1, -1)


_LAYERS = {"maxpool": _maxpool, "avgpool": _avgpool, "add": _add,
           "concat": _concat, "flatten": _flatten, "view": _view}
