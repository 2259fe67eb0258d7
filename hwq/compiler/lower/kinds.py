"""Lowerings by layer kind, the table compile_model looks them up in (LOWERINGS): a conv
as it is, max pool on the MAXPOOL unit, and average pool, add and concat as convs whose
weights make the sums the golden model computes; flatten and channel views move no data,
their outputs are views of their inputs' bytes (flatten_view, channel_view)."""
from __future__ import annotations

import dataclasses

import numpy as np

from hwq.arch.config import HwConfig
from hwq.compiler.ir import QLayer
from hwq.compiler.layout import TensorLayout, padded_channels
from hwq.compiler.lower.conv import lower_conv
from hwq.compiler.lower.emit import Emitter, Image, require
from hwq.compiler.lower.plan import Geometry, band_rows, band_rows_read
from hwq.errors import HwqError


def lower_maxpool(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
                  image: Image, emit: Emitter) -> int:
    """Max pool, per image of the batch, channel block and band of output rows: LOAD the
    band's input rows into obuf with the zero padding the windows read, MAXPOOL them into
    the entries after them, STORE those. No slots: the three share obuf's ports or the
    DRAM port, so none runs beside another."""
    for n in range(dst.batch):
        _maxpool_image(layer, srcs[0].image(n, cfg), dst.image(n, cfg), cfg, emit,
                       f"image {n} " if dst.batch > 1 else "")
    return 0


def _maxpool_image(layer: QLayer, src: TensorLayout, dst: TensorLayout, cfg: HwConfig,
                   emit: Emitter, where: str) -> None:
    (kh, kw), (sh, sw), pads = layer.kernel, layer.stride, layer.pads
    require(sh == sw, layer, f"max pool stride {layer.stride} is not square; the MAXPOOL "
            "unit steps its windows alike in both directions")
    require(max(pads) <= 7, layer, f"padding {max(pads)} exceeds the DMA's 7")
    c, bus = cfg.cols, cfg.bus_bytes
    g = Geometry(kh, kw, sh, sw, *pads, 0, 0, src.h, src.w, dst.h, dst.w)
    out_h, out_w, wp = dst.h, dst.w, g.wp
    band = band_rows(layer, out_h, lambda rows: g.in_rows(rows) * wp + rows * out_w
                     <= cfg.obuf_depth and rows <= 255)
    pix = src.pixel_words(cfg)
    for cb in range(src.stored_channels // c):
        for r0 in range(0, out_h, band):
            rows = min(band, out_h - r0)
            tile = f"{where}rows {r0}..{r0 + rows - 1} channel block {cb}"
            y0, y1, pad_top, pad_bottom = band_rows_read(r0, rows, g)
            out = g.in_rows(rows) * wp
            emit("LOAD", tile, buf=3, sram=0, dram=src.region.word + y0 * src.w * pix + cb * (c // bus),
                 y_size=y1 - y0, x_size=src.w, y_stride=src.w * pix, x_stride=pix,
                 pad_top=pad_top, pad_bottom=pad_bottom, pad_left=g.left, pad_right=g.right)
            emit("MAXPOOL", tile, src=0, dst=out, out_h=rows, out_w=out_w, in_w=wp, k_h=kh, k_w=kw,
                 stride=sh, unsigned=int(src.unsigned))
            emit("STORE", tile, sram=out, dram=dst.region.word + r0 * out_w * pix + cb * (c // bus),
                 y_size=rows, x_size=out_w, y_stride=out_w * pix, x_stride=pix)


def _conv_like(layer: QLayer, weight: np.ndarray, **changes) -> QLayer:
    """`layer` as a conv with `weight` (bias 0), the requantization otherwise its own."""
    return dataclasses.replace(layer, kind="conv", weight=weight, groups=changes.pop("groups", 1),
                               bias=np.zeros(len(weight), np.int32), f_wc=None, **changes)


def _lower_conv_layer(layer, srcs, dst, cfg, image, emit) -> int:
    return lower_conv(layer, srcs[:1], dst, cfg, image, emit)


def lower_avgpool(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
                  image: Image, emit: Emitter) -> int:
    """Average pool = depthwise conv whose every weight is the reciprocal multiplier: the
    window sum times it, requantized by the layer's shift, as the golden model does."""
    (kh, kw), m, c = layer.kernel, layer.multiplier, layer.in_shape[0]
    if not -128 <= m <= 127:
        raise HwqError(f"layer '{layer.name}': average pool multiplier {m} (1/{kh * kw} at fix "
                       f"position {layer.f_w}) does not fit an int8 weight")
    conv = _conv_like(layer, np.full((c, 1, kh, kw), m, np.int8), groups=c)
    return lower_conv(conv, srcs[:1], dst, cfg, image, emit)


def lower_add(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
              image: Image, emit: Emitter) -> int:
    """Add = 1x1 conv over the inputs' channels side by side, weights
    [diag(2^(top - f_1)); diag(2^(top - f_2)); ...]: each input aligned to the finest fix
    position `top`, summed, requantized by top - f_out, as the golden model does."""
    c, top = layer.out_shape[0], max(layer.f_ins)
    if max(layer.f_ins) - min(layer.f_ins) > 6:
        raise HwqError(f"layer '{layer.name}': adding inputs at fix positions {layer.f_ins} scales "
                       f"one by 2**{top - min(layer.f_ins)}, beyond an int8 weight (at most 2**6); "
                       "their ranges differ too much")
    weight = np.zeros((c, c * len(srcs), 1, 1), np.int8)
    for i, f in enumerate(layer.f_ins):
        weight[np.arange(c), i * c + np.arange(c)] = 1 << (top - f)
    conv = _conv_like(layer, weight, f_in=top, f_w=0, stride=1, padding=0)
    lower_conv(conv, srcs, dst, cfg, image, emit)
    return dst.batch * dst.h * dst.w * c * len(srcs)     # one product per input element


def lower_concat(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
                 image: Image, emit: Emitter) -> int:
    """Concat = per input a 1x1 identity conv (POST shift f_i - f_out, the layer's rounding
    and clamp, as the golden model requantizes each input) into the output blocks of its
    part of the output (MemoryMap.concatenation)."""
    co0, macs = 0, 0
    for i, (src, f) in enumerate(zip(srcs, layer.f_ins)):
        c = src.channel_index.size
        conv = _conv_like(layer, np.eye(c, dtype=np.int8)[:, :, None, None], f_in=f, f_w=0,
                          stride=1, padding=0, out_shape=(c, dst.h, dst.w))
        lower_conv(conv, [src], dst, cfg, image, emit, co0=co0, tag=f".{i}")
        co0 += padded_channels(c, cfg) // cfg.cols
        macs += dst.batch * dst.h * dst.w * c               # one product per input element
    return macs


LOWERINGS = {"conv": _lower_conv_layer, "maxpool": lower_maxpool, "avgpool": lower_avgpool,
             "add": lower_add, "concat": lower_concat}


def channel_view(src: TensorLayout, channels: list[int]) -> TensorLayout:
    """A view of some of the input's channels, in any order (chunk, split, a channel
    shuffle) moves no data: its channels are where the input's are, and whatever reads
    it takes them from there (a conv's weights are permuted to match)."""
    return TensorLayout(src.region, src.h, src.w, src.stored_channels, src.channel_index[channels],
                        src.unsigned, src.batch)


def flatten_view(src: TensorLayout) -> TensorLayout:
    """Flatten moves no data: the pixel-major bytes are read as one long pixel, and
    torch's channel-major order (c, y, x) is mapped onto them."""
    c = src.channel_index.size
    yx = np.arange(src.h * src.w)
    index = (yx[None, :] * src.stored_channels + src.channel_index[:, None]).ravel()
    assert index.size == c * src.h * src.w
    return TensorLayout(src.region, 1, 1, src.h * src.w * src.stored_channels, index, src.unsigned,
                        src.batch)
