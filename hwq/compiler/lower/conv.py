"""A conv onto the array (a Linear is a 1x1 conv over one pixel; a grouped conv is a
dense one whose tiles across groups are zero, which neither DRAM holds nor any GEMM
streams): its weights and biases go into the DRAM image in the order the buffers take
them, each step of the plan gets its buffer slots and queues the loads that fill them,
then the GEMMs, POSTs and STOREs are emitted with the loads among them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.arch.requant import ROUND_MODES, SLOPE_ONE
from hwq.compiler.ir import QLayer
from hwq.compiler.layout import TensorLayout
from hwq.compiler.lower.emit import Emitter, Image, require
from hwq.compiler.lower.plan import Geometry, band_parts, band_rows_read, conv_plan, weight_key
from hwq.compiler.lower.schedule import BEFORE, BEFORE_POST, STREAMING, Prefetch, Slots, Stores


def _runs(buf: int, sram: int, dram: int, entries: int, entry_words: int):
    """LOAD fields for `entries` consecutive entries, in as many instructions as x_size needs."""
    most = isa.BY_NAME["LOAD"].field("x_size").hi
    for first in range(0, entries, most):
        yield dict(buf=buf, sram=sram + first, dram=dram + first * entry_words, y_size=1,
                   x_size=min(most, entries - first), y_stride=0, x_stride=entry_words,
                   pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)


def _stored_tiles(tiles: np.ndarray, live: np.ndarray, cfg: HwConfig):
    """What of the weight tiles (n_co, taps, rows, cols) goes into DRAM: the live ones,
    each block's in tap order, so that any run of them loads as one block -- or, where
    the live tiles repeat a few that wbuf holds at once (an average pool's, an add's, a
    concat's), each of those once, loaded once for every block. -> (the tiles stored,
    the place of tile (co, t) among its block's stored tiles, where each block's start,
    the number of shared tiles or 0)."""
    co, t = np.nonzero(live)
    kept = tiles[co, t]
    distinct, which = np.unique(kept.reshape(len(kept), -1), axis=0, return_inverse=True)
    slot = np.zeros(live.shape, np.int64)
    if len(distinct) < len(kept) and len(distinct) * cfg.rows <= cfg.wbuf_depth:
        slot[co, t] = which.ravel()
        starts = np.zeros(len(live), np.int64)
        return distinct.reshape(-1, *tiles.shape[2:]), slot, starts, len(distinct)
    counts = live.sum(axis=1)
    slot[co, t] = np.arange(len(kept)) - np.repeat(np.cumsum(counts) - counts, counts)
    return kept, slot, np.cumsum(counts) - counts, 0


@dataclass
class _Step:
    """The GEMMs of output rows r0..r0+rows-1 of the batch's image `image`, output block
    co, over the non-zero weight tiles among t0..t1-1 (tiles run over (input block, ky,
    kx)): those of input blocks
    ci0..ci1-1, which ibuf holds, with wbuf holding the block's stored tiles w0..w1-1
    (_stored_tiles)."""
    image: int
    r0: int
    rows: int
    co: int
    ci0: int
    ci1: int
    w0: int
    w1: int
    t0: int
    t1: int
    first: bool        # the block's first step: its first GEMM resets the accumulators
    last: bool         # the block's last step: POST and STORE follow
    run: int           # the run of output blocks it belongs to (numbered from 0 in each band)
    inp: int = 0       # ibuf entry of input block ci0
    wgt: int = 0       # wbuf entry of tile w0
    acc: int = 0       # abuf entry of the block's accumulators
    bias: int = 0      # bbuf entry of the block's bias


def _dense_weight(layer: QLayer) -> np.ndarray:
    """(Cout, Cin, kh, kw) int8: a grouped conv's weight with zeros across groups."""
    g = layer.groups
    if g == 1:
        return layer.weight
    cout, cin_g, kh, kw = layer.weight.shape
    dense = np.zeros((cout, cin_g * g, kh, kw), np.int8)
    group = np.arange(cout) // (cout // g)
    dense[np.arange(cout)[:, None], group[:, None] * cin_g + np.arange(cin_g)[None, :]] = layer.weight
    return dense


def _post_slope(layer: QLayer, cfg: HwConfig) -> int:
    """POST's slope field: the layer's LeakyReLU slope over 2**ALPHA_BITS, else none."""
    if layer.act != "leaky_relu":
        return SLOPE_ONE
    require(cfg.leaky_relu, layer, f"LeakyReLU needs POST's slope multipliers, which hardware "
            f"config '{cfg.name}' leaves out (leaky_relu: false); use ReLU or another board")
    field = isa.BY_NAME["POST"].field("slope")
    require(field.lo <= layer.alpha_q <= field.hi, layer,
            f"LeakyReLU slope {layer.alpha_q}/{SLOPE_ONE} is outside POST's {field.lo}..{field.hi}; "
            f"the negative slope must be in [0, {(field.hi + 0.5) / SLOPE_ONE:.3f})")
    return layer.alpha_q


def lower_conv(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
               image: Image, emit: Emitter, co0: int = 0, tag: str = "") -> int:
    """Lower conv `layer` (grouped: with zero tiles across groups, which no GEMM streams)
    reading the concatenation of the channels of `srcs` (one input block after the
    other; all of one size), writing output blocks co0.. of `dst`. `tag` names this
    part's weights when a layer lowers to several convs. The images of a batch are bands
    after bands: weights that stay on chip load once for all of them. The real MACs."""
    r, c, bus = cfg.rows, cfg.cols, cfg.bus_bytes
    cout, cin_g, kh, kw = layer.weight.shape
    pads = layer.pads
    require(max(pads) <= 7, layer, f"padding {max(pads)} exceeds the DMA's 7")
    src, images = srcs[0], dst.batch
    assert all((t.h, t.w, t.batch) == (src.h, src.w, images) for t in srcs)
    inputs_of = [[t.image(n, cfg) for t in srcs] for n in range(images)]
    outputs_of = [dst.image(n, cfg) for n in range(images)]
    firsts = np.cumsum([0] + [t.stored_channels for t in srcs])     # stored channel offsets
    n_ci, n_co = int(firsts[-1]) // r, -(-cout // cfg.channel_block) * cfg.channel_block // c
    g = Geometry(kh, kw, *layer.stride, *pads, n_ci, n_co, src.h, src.w, dst.h, dst.w)
    out_h, out_w, wp = dst.h, dst.w, g.wp
    block_src = np.repeat(np.arange(len(srcs)), [t.stored_channels // r for t in srcs])

    # Weights in stored-channel order, as tiles (co, ci, ky, kx) of `rows` wbuf entries.
    w = np.zeros((n_co * c, firsts[-1], kh, kw), np.int8)
    index = np.concatenate([t.channel_index + f for t, f in zip(srcs, firsts)])
    w[np.arange(cout)[:, None], index[None, :]] = _dense_weight(layer)
    tiles = w.reshape(n_co, c, n_ci, r, kh, kw).transpose(0, 2, 4, 5, 3, 1).reshape(n_co, -1, r, c)
    # GEMMs run only over non-zero tiles (grouped convs are block-diagonal); a block
    # without any keeps its first (zero) tile, which clears the accumulators for the bias
    live = tiles.any(axis=(2, 3))
    live[~live.any(axis=1), 0] = True
    store, slot, starts, shared = _stored_tiles(tiles, live, cfg)
    w_region = image.put(f"{layer.name}{tag}.weight", "weights", store)
    plan = conv_plan(layer, g, cfg, live, shared)
    # bbuf entries per output block: the bias, and with per-channel weights the lanes'
    # shift offsets over the block's least shift (POST lane_shifts)
    per = plan.bias_entries
    bias = np.zeros((n_co, per, c), np.int32)
    flat = np.zeros(n_co * c, np.int32)
    flat[:cout] = layer.bias
    bias[:, 0] = flat.reshape(n_co, c)
    shift = np.full(n_co, layer.shift)
    if per == 2:
        shifts = layer.shifts
        lo_s, hi_s = isa.BY_NAME["POST"].field("shift").lo, isa.BY_NAME["POST"].field("shift").hi
        require(lo_s <= shifts.min() and shifts.max() <= hi_s, layer,
                f"per-channel shifts {shifts.min()}..{shifts.max()} exceed POST's {lo_s}..{hi_s}")
        blocked = np.full(n_co * c, shifts.max(), np.int64)
        blocked[:cout] = shifts
        shift = blocked.reshape(n_co, c).min(axis=1)
        offsets = np.zeros(n_co * c, np.int64)
        offsets[:cout] = shifts - np.repeat(shift, c)[:cout]
        bias[:, 1] = offsets.reshape(n_co, c)
    b_region = image.put(f"{layer.name}{tag}.bias", "bias", bias)
    ew = c // bus  # words per wbuf entry, and per output block of a pixel
    pout = dst.pixel_words(cfg)

    def input_block(st: _Step, ci: int) -> dict:
        """LOAD fields of input block ci for the band of `st`, zero padding included."""
        t = inputs_of[st.image][block_src[ci]]
        pin, local = t.pixel_words(cfg), ci - firsts[block_src[ci]] // r
        y0, y1, pad_top, pad_bottom = band_rows_read(st.r0, st.rows, g)
        return dict(buf=0, sram=st.inp + (ci - st.ci0) * g.in_rows(st.rows) * wp,
                    dram=t.region.word + y0 * src.w * pin + local * (r // bus),
                    y_size=y1 - y0, x_size=src.w, y_stride=src.w * pin, x_stride=pin,
                    pad_top=pad_top, pad_bottom=pad_bottom, pad_left=g.left, pad_right=g.right)

    # Pass 1: give every step its slots, and queue the loads that fill them.
    heights = {}
    steps = []
    for n in range(images):
        for r0 in range(0, out_h, plan.band):
            rows = min(plan.band, out_h - r0)
            if rows not in heights:
                heights[rows] = band_parts(plan, g.kk, live)
            steps += [_Step(n, r0, rows, *part) for part in heights[rows]]
    prefetch = Prefetch(emit, cfg)
    stores = Stores(emit, cfg, prefetch)
    inputs = Slots(cfg.ibuf_depth // plan.inputs, plan.inputs)
    weights = Slots(plan.chunk * r, plan.weights)
    biases = Slots(plan.bias_run * per, plan.biases)
    accs = Slots(cfg.abuf_depth // plan.accs, plan.accs)
    for i, st in enumerate(steps):
        rows = f"{_image(st, images)}rows {st.r0}..{st.r0 + st.rows - 1}"
        st.inp, ready = inputs.use((st.image, st.r0, st.ci0), i)
        if ready:
            prefetch.add(ready, (i, BEFORE), f"{rows} input blocks {st.ci0}..{st.ci1 - 1}",
                         [input_block(st, ci) for ci in range(st.ci0, st.ci1)])
        st.wgt, ready = weights.use(weight_key(plan, st.co, st.w0), i)
        if ready:
            note = "weights" if plan.shared else f"output block {st.co} weights {st.w0}..{st.w1 - 1}"
            prefetch.add(ready, (i, BEFORE), note,
                         _runs(1, st.wgt, w_region.word + (starts[st.co] + st.w0) * r * ew,
                               (st.w1 - st.w0) * r, ew))
        st.acc = accs.use((st.image, st.r0, st.run), i)[0] + (st.co - st.run * plan.blocks) * st.rows * out_w
        if st.last:
            first = st.co - st.co % plan.bias_run     # the slot holds blocks first.. biases
            base, ready = biases.use(first, i)
            st.bias = base + (st.co - first) * per
            if ready:
                note = f"output block {st.co} bias" if plan.bias_run == 1 else "biases"
                prefetch.add(ready, (i, BEFORE_POST), note, _runs(
                    2, base, b_region.word + first * per * 4 * ew, plan.bias_run * per, 4 * ew))

    # Pass 2: the instructions, the loads among the GEMMs.
    out_slot = cfg.obuf_depth // plan.outputs
    blocks = 0
    for i, st in enumerate(steps):
        tile = f"{_image(st, images)}rows {st.r0}..{st.r0 + st.rows - 1} output block {co0 + st.co}"
        span = g.in_rows(st.rows) * wp
        prefetch.due((i, BEFORE))
        for t in np.flatnonzero(live[st.co, st.t0:st.t1]) + st.t0:
            ci, tap = divmod(int(t), g.kk)
            ky, kx = divmod(tap, kw)
            emit("GEMM", f"{tile} tap ({ky},{kx}) input block {ci}",
                 wgt=st.wgt + (slot[st.co, t] - st.w0) * r,
                 inp=st.inp + (ci - st.ci0) * span + ky * wp + kx,
                 acc=st.acc, reset=int(st.first), n_outer=st.rows, n_inner=out_w, inp_so=g.sh * wp,
                 inp_si=g.sw, acc_so=out_w, acc_si=1, inp_unsigned=int(srcs[block_src[ci]].unsigned))
            st.first = False
            gemm = emit.program[-1]
            prefetch.stream((i, STREAMING), gemm)
            stores.gemm(gemm)
        if st.last:
            prefetch.due((i, BEFORE_POST))
            out = blocks % plan.outputs * out_slot
            stores.post(tile, dict(acc=st.acc, out=out, bias=st.bias, n=st.rows * out_w,
                                    shift=int(shift[st.co]), round=ROUND_MODES[layer.round_mode],
                                    lo=layer.lo, hi=layer.hi, lane_shifts=int(per == 2),
                                    slope=_post_slope(layer, cfg)),
                         dict(sram=out, dram=outputs_of[st.image].region.word + st.r0 * out_w * pout
                              + (co0 + st.co) * ew,
                              y_size=st.rows, x_size=out_w, y_stride=out_w * pout, x_stride=pout))
            blocks += 1
    stores.flush()
    return images * out_h * out_w * cout * cin_g * g.kk


def _image(st: _Step, images: int) -> str:
    """A note's prefix naming the step's image, in a batch."""
    return f"image {st.image} " if images > 1 else ""
