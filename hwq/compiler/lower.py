"""Back end: lower each quantized layer onto the array and emit the whole network as one
program plus the DRAM image it runs over.

Every layer reads its input from DRAM and writes its output to DRAM; the host only
writes the input slot and reads the output slot. A conv (Linear is a 1x1 conv over one
pixel) is cut into bands of output rows that fit the buffers; for each band the input
rows are loaded once per input-channel block with the zero padding made by the DMA, and
for each output-channel block the weight-stationary array streams the band once per
(ky, kx, input block) tile, accumulating in abuf, before POST requantizes and STORE
writes the block back.

The accelerator overlaps its units but starts instructions in program order (isa.py), so
the schedule decides what overlaps: a conv splits obuf into two slots (POST of the next
block beside STORE of this one) and, where weights stream, wbuf (the next chunk loads
while this one's GEMMs run), and ibuf and bbuf where that costs no band height; each
LOAD is placed after the first GEMM that no longer needs the slot it fills, spaced so
that it never waits for the LOAD unit in the way of the GEMMs behind it. Max-pool gains
nothing from slots: its LOAD, MAXPOOL and STORE share obuf ports or the DRAM port.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from hwq.compiler import isa
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.layout import MemoryMap, Region, TensorLayout
from hwq.compiler.quant.requant import ROUND_MODES
from hwq.config import HwConfig
from hwq.errors import HwqError
from hwq.sim import cycles


@dataclass
class Compiled:
    cfg: HwConfig
    program: list[isa.Instr]
    notes: dict[int, str]                 # instruction index -> "layer / tile"
    layer_of: list[str]                   # instruction index -> layer name
    image: bytes                          # DRAM from word 0: data, then the program
    memmap: MemoryMap
    layouts: dict[str, TensorLayout]      # "input" and every layer's output
    start_pc: int
    layer_macs: dict[str, int]            # real MACs of one inference (no padding lanes)

    @property
    def useful_macs(self) -> int:
        return sum(self.layer_macs.values())

    @property
    def program_bytes(self) -> bytes:
        return isa.to_bytes(self.program)


@dataclass
class _Emitter:
    cfg: HwConfig
    program: list[isa.Instr] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    layer_of: list[str] = field(default_factory=list)
    layer: str = ""

    def __call__(self, op: str, note: str = "", **fields: int) -> None:
        try:
            instr = isa.Instr.make(op, **fields)
        except isa.IsaError as e:
            raise HwqError(f"layer '{self.layer}' does not fit the ISA: {e}; "
                           "use smaller tiles or a larger hardware config") from None
        if note:
            self.notes[len(self.program)] = f"{self.layer}: {note}"
        self.layer_of.append(self.layer)
        self.program.append(instr)


def _need(cond: bool, layer: QLayer, what: str) -> None:
    if not cond:
        raise HwqError(f"layer '{layer.name}' does not fit the hardware: {what}")


class _Image:
    """The DRAM bytes of the constant regions (weights, biases)."""

    def __init__(self, memmap: MemoryMap):
        self.memmap, self.chunks = memmap, []

    def put(self, name: str, kind: str, data: np.ndarray) -> Region:
        region = self.memmap.allocate(name, kind, data.nbytes)
        self.chunks.append((region, data.tobytes()))
        return region

    def assemble(self, total_words: int) -> bytearray:
        bus = self.memmap.cfg.bus_bytes
        out = bytearray(total_words * bus)
        for region, blob in self.chunks:
            out[region.word * bus: region.word * bus + len(blob)] = blob
        return out


def _runs(buf: int, sram: int, dram: int, entries: int, entry_words: int):
    """LOAD fields for `entries` consecutive entries, in as many instructions as x_size needs."""
    most = isa.BY_NAME["LOAD"].field("x_size").hi
    for first in range(0, entries, most):
        yield dict(buf=buf, sram=sram + first, dram=dram + first * entry_words, y_size=1,
                   x_size=min(most, entries - first), y_stride=0, x_stride=entry_words,
                   pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)


def _band_rows(layer: QLayer, out_h: int, fits) -> int:
    """Largest number of output rows per band for which `fits(rows)` holds."""
    best = 0
    for rows in range(1, out_h + 1):
        if not fits(rows):
            break
        best = rows
    _need(best > 0, layer, "one output row does not fit the on-chip buffers; "
          "use a hardware config with deeper buffers")
    return best


# Points of a conv's instruction stream, in program order: (step, phase).
BEFORE, STREAMING, BEFORE_POST = 0, 1, 2   # before a step's GEMMs, after its first, before POST


class _Slots:
    """A buffer cut into `count` slots of `size` entries, filled round-robin each time the
    data the steps read changes (a new key). With one slot, new data may load only after
    the last step reading the old data; with two or more, already after the first GEMM
    of the step that moved to the current slot -- every step before it read other slots
    -- so the LOAD runs while the array streams from the current slot."""

    def __init__(self, size: int, count: int):
        self.size, self.count = size, count
        self.held = [None] * count      # the key each slot holds
        self.turn = count - 1           # the current key's slot
        self.since = None               # the step that moved to it

    def use(self, key, step: int):
        """-> (first entry of key's slot, the point from which its LOAD may be emitted,
        or None when the slot holds key already)."""
        if self.held[self.turn] == key:
            return self.turn * self.size, None
        previous, self.since = self.since, step
        self.turn = (self.turn + 1) % self.count
        base = self.turn * self.size
        if self.held[self.turn] == key:
            return base, None
        self.held[self.turn] = key
        if self.count > 1 and previous is not None:
            return base, (previous, STREAMING)
        return base, (step, BEFORE)


class _Prefetch:
    """LOADs placed among a conv's GEMMs: each may go from its `ready` point, must go
    before its `need` point, and goes as early as the LOAD unit allows, the most urgent
    first. The accelerator starts instructions in order and its LOAD unit takes one at a
    time, so a LOAD that finds the unit busy holds back every instruction behind it: the
    next LOAD is emitted only once the GEMMs since the last one take as long as that one
    moves words (hwq/sim/cycles.py's estimates, the DRAM port assumed free)."""

    def __init__(self, emit: _Emitter, cfg: HwConfig):
        self.emit, self.cfg = emit, cfg
        self.waiting: list = []         # heap of (ready, order, need, note, fields)
        self.eligible: list = []        # heap of (need, order, note, fields)
        self.order = itertools.count()  # ties go in the order the loads were added
        self.busy = 0                   # cycles the LOAD unit still runs

    def add(self, ready, need, note: str, runs) -> None:
        for fields in runs:
            heapq.heappush(self.waiting, (ready, next(self.order), need, note, fields))

    def _load(self) -> None:
        _, _, note, fields = heapq.heappop(self.eligible)
        self.emit("LOAD", note, **fields)
        self.busy = max(self.busy, 0) + cycles.dram_items(self.emit.program[-1], self.cfg)

    def _release(self, now) -> None:
        while self.waiting and self.waiting[0][0] <= now:
            _, order, need, note, fields = heapq.heappop(self.waiting)
            heapq.heappush(self.eligible, (need, order, note, fields))

    def due(self, now) -> None:
        """Emit every LOAD the instruction at `now` needs; it waits for them, so the
        unit is free once it starts."""
        self._release(now)
        if self.eligible and self.eligible[0][0] <= now:
            while self.eligible and self.eligible[0][0] <= now:
                self._load()
            self.busy = 0

    def stream(self, now, gemm: isa.Instr) -> None:
        """`gemm` was emitted at `now`: emit what may load while it runs."""
        self.busy -= max(cycles.gemm_occupancy(gemm, self.cfg),
                         cycles.front_end_cycles(self.cfg) + 1)   # at least its own fetch
        self._release(now)
        while self.eligible and self.busy <= 0:
            self._load()


@dataclass(frozen=True)
class _ConvPlan:
    """How a conv is cut to fit the buffers, and into how many slots each buffer is split
    so that loads and stores overlap the array."""
    band: int          # output rows per band
    group: int         # input blocks in one ibuf slot (all: each band's input loads once)
    inputs: int        # ibuf slots: 2 loads the next band's input while the array streams
    outputs: int       # obuf slots: 2 lets POST write a block while STORE reads the last
    chunk: int         # weight tiles per wbuf slot (all of an output block's when resident)
    weights: int       # wbuf slots: one per output block when all weights stay on chip
    bias_run: int      # biases per bbuf slot (every block's when they fit)
    biases: int        # bbuf slots


def _conv_plan(layer: QLayer, src: TensorLayout, dst: TensorLayout, cfg: HwConfig) -> _ConvPlan:
    r, k, s, p = cfg.rows, layer.weight.shape[2], layer.stride, layer.padding
    n_ci, n_co = src.stored_channels // r, dst.stored_channels // cfg.cols
    taps, wp = n_ci * k * k, src.w + 2 * p

    def in_rows(rows: int) -> int:
        return (rows - 1) * s + k

    # Input blocks held in ibuf at once: all of them when one output row allows it (each
    # band's input is then loaded once), else as many as fit, reloaded per output block.
    group = max((g for g in range(1, n_ci + 1) if g * in_rows(1) * wp <= cfg.ibuf_depth), default=0)
    _need(group > 0, layer, f"one input row of {wp} pixels does not fit ibuf_depth={cfg.ibuf_depth}")
    band = _band_rows(layer, dst.h, lambda rows: group * in_rows(rows) * wp <= cfg.ibuf_depth
                      and rows * dst.w <= min(cfg.abuf_depth, cfg.obuf_depth)
                      and rows <= 1023)
    # Two slots only where they cost nothing else: a band cut shorter to fit half a buffer
    # streams fewer vectors per weight tile and reloads the weights more often, which
    # costs more than the one stall per band that double-buffering would hide.
    inputs = 2 if group * in_rows(band) * wp <= cfg.ibuf_depth // 2 else 1
    outputs = 2 if band * dst.w <= cfg.obuf_depth // 2 else 1
    _need(r <= cfg.wbuf_depth, layer, f"a weight tile needs {r} wbuf entries, wbuf_depth={cfg.wbuf_depth}")
    if n_co * taps * r <= cfg.wbuf_depth:
        chunk, weights = taps, n_co
    else:
        weights = 2 if 2 * r <= cfg.wbuf_depth else 1
        chunk = cfg.wbuf_depth // weights // r
    bias_run = n_co if n_co <= cfg.bbuf_depth else 1
    biases = 1 if bias_run == n_co else min(2, cfg.bbuf_depth)
    return _ConvPlan(band, group, inputs, outputs, chunk, weights, bias_run, biases)


@dataclass
class _Step:
    """The GEMMs of output rows r0..r0+rows-1, output block co, over weight tiles t0..t1-1
    (tiles run over (input block, ky, kx)): those of input blocks ci0..ci1-1, which ibuf
    holds, in the weight chunk from tile w0, which wbuf holds."""
    r0: int
    rows: int
    co: int
    ci0: int
    ci1: int
    w0: int
    t0: int
    t1: int
    last: bool         # the block's last step: POST and STORE follow
    inp: int = 0       # ibuf entry of input block ci0
    wgt: int = 0       # wbuf entry of tile w0
    bias: int = 0      # bbuf entry of the block's bias


def _conv_steps(plan: _ConvPlan, out_h: int, n_co: int, n_ci: int, kk: int):
    taps = n_ci * kk
    for r0 in range(0, out_h, plan.band):
        rows = min(plan.band, out_h - r0)
        for co in range(n_co):
            for ci0 in range(0, n_ci, plan.group):
                ci1 = min(ci0 + plan.group, n_ci)
                lo, hi = ci0 * kk, ci1 * kk
                for w0 in range(lo - lo % plan.chunk, hi, plan.chunk):
                    t1 = min(hi, w0 + plan.chunk)
                    yield _Step(r0, rows, co, ci0, ci1, w0, max(lo, w0), t1, t1 == taps)


def lower_conv(layer: QLayer, src: TensorLayout, dst: TensorLayout, cfg: HwConfig,
               image: _Image, emit: _Emitter) -> int:
    r, c, bus = cfg.rows, cfg.cols, cfg.bus_bytes
    cout, cin, k, _ = layer.weight.shape
    s, p = layer.stride, layer.padding
    _need(p <= 7, layer, f"padding {p} exceeds the DMA's 7")
    n_ci, n_co = src.stored_channels // r, dst.stored_channels // c
    out_h, out_w = dst.h, dst.w
    wp = src.w + 2 * p
    plan = _conv_plan(layer, src, dst, cfg)

    # Weights in stored-channel order; tile (co, ci, ky, kx) is `rows` wbuf entries, so
    # the taps of any run of input blocks are contiguous in DRAM.
    w = np.zeros((n_co * c, src.stored_channels, k, k), np.int8)
    w[np.arange(cout)[:, None], src.channel_index[None, :]] = layer.weight
    tiles = w.reshape(n_co, c, n_ci, r, k, k).transpose(0, 2, 4, 5, 3, 1)  # co ci ky kx r c
    taps = n_ci * k * k                       # weight tiles per output block
    w_region = image.put(f"{layer.name}.weight", "weights", np.ascontiguousarray(tiles))
    bias = np.zeros(n_co * c, np.int32)
    bias[:cout] = layer.bias
    b_region = image.put(f"{layer.name}.bias", "bias", bias)
    ew = c // bus  # words per wbuf entry, and per output block of a pixel
    pin, pout = src.pixel_words(cfg), dst.pixel_words(cfg)

    def in_rows(rows: int) -> int:
        return (rows - 1) * s + k

    def input_block(st: _Step, ci: int) -> dict:
        """LOAD fields of input block ci for the band of `st`, zero padding included."""
        top = st.r0 * s - p                   # first input row the band reads (may be < 0)
        n = in_rows(st.rows)
        y0, y1 = max(top, 0), min(top + n, src.h)
        if y1 <= y0:                          # the band reads padding only (k <= padding)
            y0 = y1 = 0
            pad_top, pad_bottom = n, 0
        else:
            pad_top, pad_bottom = y0 - top, top + n - y1
        return dict(buf=0, sram=st.inp + (ci - st.ci0) * n * wp,
                    dram=src.region.word + y0 * src.w * pin + ci * (r // bus),
                    y_size=y1 - y0, x_size=src.w, y_stride=src.w * pin, x_stride=pin,
                    pad_top=pad_top, pad_bottom=pad_bottom, pad_left=p, pad_right=p)

    # Pass 1: give every step its slots, and queue the loads that fill them.
    steps = list(_conv_steps(plan, out_h, n_co, n_ci, k * k))
    prefetch = _Prefetch(emit, cfg)
    inputs = _Slots(cfg.ibuf_depth // plan.inputs, plan.inputs)
    weights = _Slots(plan.chunk * r, plan.weights)
    biases = _Slots(plan.bias_run, plan.biases)
    for i, st in enumerate(steps):
        rows = f"rows {st.r0}..{st.r0 + st.rows - 1}"
        st.inp, ready = inputs.use((st.r0, st.ci0), i)
        if ready:
            prefetch.add(ready, (i, BEFORE), f"{rows} input blocks {st.ci0}..{st.ci1 - 1}",
                         [input_block(st, ci) for ci in range(st.ci0, st.ci1)])
        st.wgt, ready = weights.use((st.co, st.w0), i)
        if ready:
            w1 = min(st.w0 + plan.chunk, taps)
            prefetch.add(ready, (i, BEFORE), f"output block {st.co} weights {st.w0}..{w1 - 1}",
                         _runs(1, st.wgt, w_region.word + (st.co * taps + st.w0) * r * ew,
                               (w1 - st.w0) * r, ew))
        if st.last:
            first = st.co - st.co % plan.bias_run     # the slot holds blocks first.. biases
            base, ready = biases.use(first, i)
            st.bias = base + st.co - first
            if ready:
                note = f"output block {st.co} bias" if plan.bias_run == 1 else "biases"
                prefetch.add(ready, (i, BEFORE_POST), note, _runs(
                    2, base, b_region.word + first * 4 * ew, plan.bias_run, 4 * ew))

    # Pass 2: the instructions, the loads among the GEMMs.
    out_slot = cfg.obuf_depth // plan.outputs
    blocks = 0
    for i, st in enumerate(steps):
        tile = f"rows {st.r0}..{st.r0 + st.rows - 1} output block {st.co}"
        span = in_rows(st.rows) * wp
        prefetch.due((i, BEFORE))
        for t in range(st.t0, st.t1):
            ci, tap = divmod(t, k * k)
            ky, kx = divmod(tap, k)
            emit("GEMM", f"{tile} tap ({ky},{kx}) input block {ci}",
                 wgt=st.wgt + (t - st.w0) * r, inp=st.inp + (ci - st.ci0) * span + ky * wp + kx,
                 acc=0, reset=int(t == 0), n_outer=st.rows, n_inner=out_w, inp_so=s * wp,
                 inp_si=s, acc_so=out_w, acc_si=1)
            prefetch.stream((i, STREAMING), emit.program[-1])
        if st.last:
            prefetch.due((i, BEFORE_POST))
            out = blocks % plan.outputs * out_slot
            emit("POST", tile, acc=0, out=out, bias=st.bias, n=st.rows * out_w, shift=layer.shift,
                 round=ROUND_MODES[layer.round_mode], lo=layer.lo, hi=layer.hi)
            emit("STORE", tile, sram=out, dram=dst.region.word + st.r0 * out_w * pout + st.co * ew,
                 y_size=st.rows, x_size=out_w, y_stride=out_w * pout, x_stride=pout)
            blocks += 1
    return out_h * out_w * cout * cin * k * k


def lower_maxpool(layer: QLayer, src: TensorLayout, dst: TensorLayout, cfg: HwConfig,
                  image: _Image, emit: _Emitter) -> int:
    k, s, c, bus = layer.kernel, layer.stride, cfg.cols, cfg.bus_bytes
    out_h, out_w = dst.h, dst.w

    def in_rows(rows: int) -> int:
        return (rows - 1) * s + k

    band = _band_rows(layer, out_h, lambda rows: in_rows(rows) * src.w + rows * out_w
                      <= cfg.obuf_depth and rows <= 255)
    pix = src.pixel_words(cfg)
    for cb in range(src.stored_channels // c):
        for r0 in range(0, out_h, band):
            rows = min(band, out_h - r0)
            tile = f"rows {r0}..{r0 + rows - 1} channel block {cb}"
            emit("LOAD", tile, buf=3, sram=0, dram=src.region.word + r0 * s * src.w * pix + cb * (c // bus),
                 y_size=in_rows(rows), x_size=src.w, y_stride=src.w * pix, x_stride=pix,
                 pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)
            emit("MAXPOOL", tile, src=0, dst=in_rows(rows) * src.w, out_h=rows, out_w=out_w,
                 in_w=src.w, k_h=k, k_w=k, stride=s)
            emit("STORE", tile, sram=in_rows(rows) * src.w,
                 dram=dst.region.word + r0 * out_w * pix + cb * (c // bus),
                 y_size=rows, x_size=out_w, y_stride=out_w * pix, x_stride=pix)
    return 0


LOWERINGS = {"conv": lower_conv, "maxpool": lower_maxpool}


def _flatten_view(src: TensorLayout) -> TensorLayout:
    """Flatten moves no data: the pixel-major bytes are read as one long pixel, and
    torch's channel-major order (c, y, x) is mapped onto them."""
    c = src.channel_index.size
    yx = np.arange(src.h * src.w)
    index = (yx[None, :] * src.stored_channels + src.channel_index[:, None]).ravel()
    assert index.size == c * src.h * src.w
    return TensorLayout(src.region, 1, 1, src.h * src.w * src.stored_channels, index)


def compile_model(qmodel: QModel, cfg: HwConfig) -> Compiled:
    memmap = MemoryMap(cfg)
    image = _Image(memmap)
    emit = _Emitter(cfg)
    layouts = {"input": memmap.activation("input", "input", qmodel.input_shape)}
    macs = {}
    last = qmodel.layers[-1].name
    for layer in qmodel.layers:
        emit.layer = layer.name
        src = layouts[layer.input]
        if layer.kind == "flatten":
            layouts[layer.name] = _flatten_view(src)
            continue
        if layer.kind not in LOWERINGS:
            raise HwqError(f"layer '{layer.name}': no lowering for kind '{layer.kind}'")
        dst = memmap.activation(layer.name, "output" if layer.name == last else "activation",
                                layer.out_shape)
        layouts[layer.name] = dst
        macs[layer.name] = LOWERINGS[layer.kind](layer, src, dst, cfg, image, emit)
    emit.layer = "end"
    emit("END")
    program = isa.to_bytes(emit.program)
    code = memmap.allocate("program", "program", len(program))
    data = image.assemble(memmap.next_word)
    data[code.word * cfg.bus_bytes:] = program
    return Compiled(cfg, emit.program, emit.notes, emit.layer_of, bytes(data), memmap, layouts,
                    code.word, macs)
