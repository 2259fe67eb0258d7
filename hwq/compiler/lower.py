"""Back end: lower each quantized layer onto the array and emit the whole network as one
program plus the DRAM image it runs over.

Every layer reads its input from DRAM and writes its output to DRAM; the host only
writes the input slot and reads the output slot. A conv (Linear is a 1x1 conv over one
pixel) is cut into bands of output rows; a band's input is loaded with the zero padding
made by the DMA, all its input-channel blocks at once or in groups, and the weight-
stationary array streams the band once per (input block, ky, kx) tile of each output
block, accumulating in abuf, before POST requantizes and STORE writes the block back.
Output blocks go in runs that accumulate side by side, so that each input group is
loaded once per run; tiles whose weights are all zero (across the groups of a grouped
conv) are skipped. The cut -- band height, input groups, run length -- is the cheapest
of a few candidates by an estimate on the cycle model's numbers (`_conv_cost`).

The accelerator overlaps its units but starts instructions in program order (isa.py), so
the schedule decides what overlaps: a conv splits obuf into two slots (POST of the next
block beside STORE of this one), abuf into two where the runs allow, and, where weights
stream, wbuf (the next chunk loads while this one's GEMMs run), and ibuf (the next input
group loads while the array streams this one); each LOAD is placed after the first GEMM
that no longer needs the slot it fills, spaced so that it never waits for the DRAM port
in the way of the GEMMs behind it, and each STORE among the next block's GEMMs once its
POST is done. Max-pool gains nothing from slots: its LOAD, MAXPOOL and STORE share obuf
ports or the DRAM port.
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from hwq.arch import isa
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.layout import MemoryMap, Region, TensorLayout, padded_channels
from hwq.arch.requant import ROUND_MODES, SLOPE_ONE
from hwq.arch.config import HwConfig
from hwq.errors import HwqError
from hwq.arch import timing


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
    moves words (hwq/arch/timing.py's estimates, the DRAM port assumed free)."""

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
        self.busy = max(self.busy, 0) + timing.dram_items(self.emit.program[-1], self.cfg)

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
        self.busy -= max(timing.gemm_occupancy(gemm, self.cfg),
                         timing.front_end_cycles(self.cfg) + 1)   # at least its own fetch
        self._release(now)
        while self.eligible and self.busy <= 0:
            self._load()


class _Stores:
    """STOREs of finished output blocks, emitted among the next block's GEMMs once POST
    has written obuf: the front end starts instructions in order, so a STORE right behind
    its POST would hold the next GEMMs back until POST is done. (POST itself cannot run
    beside the array: both use abuf's read port.) A STORE goes before any POST that
    overwrites its obuf entries, and before the conv ends. Times are the array's
    (hwq/arch/timing.py), counted from GEMM to GEMM."""

    def __init__(self, emit: _Emitter, cfg: HwConfig, prefetch: _Prefetch):
        self.emit, self.cfg, self.prefetch = emit, cfg, prefetch
        self.issue = timing.front_end_cycles(cfg) + 1
        self.queue: collections.deque = collections.deque()   # (due, note, fields)
        self.clock = 0                  # start of the next GEMM

    def post(self, note: str, post: dict, store: dict) -> None:
        """Emit POST, and queue its block's STORE."""
        self.flush(post["out"], post["out"] + post["n"] - 1)
        self.emit("POST", note, **post)
        # POST waits for the array to drain, and the next GEMM for POST
        self.clock += post["n"] + self.cfg.rows + self.cfg.cols + 5
        self.queue.append((self.clock, note, store))

    def gemm(self, instr: isa.Instr) -> None:
        """`instr`, a GEMM, was emitted (and the LOADs that go beside it): emit the STOREs
        due once it has started, if no LOAD is expected to hold the DRAM port then."""
        start = self.clock
        self.clock += max(timing.gemm_occupancy(instr, self.cfg), self.issue)
        while self.queue and self.queue[0][0] <= start and self.prefetch.busy <= 0:
            self._store()

    def flush(self, first: int = 0, last: int | None = None) -> None:
        """Emit the STOREs up to the last that reads obuf entries first..last (all of
        them without a range)."""
        upto = len(self.queue) if last is None else max(
            (k + 1 for k, (_, _, f) in enumerate(self.queue)
             if f["sram"] <= last and first <= f["sram"] + f["y_size"] * f["x_size"] - 1), default=0)
        for _ in range(upto):
            self._store()

    def _store(self) -> None:
        _, note, fields = self.queue.popleft()
        self.emit("STORE", note, **fields)
        # the next LOAD waits for the DRAM port: space it as after a LOAD
        self.prefetch.busy = max(self.prefetch.busy, 0) + timing.dram_items(self.emit.program[-1], self.cfg)


@dataclass(frozen=True)
class _ConvPlan:
    """How a conv is cut to fit the buffers, and into how many slots each buffer is split
    so that loads and stores overlap the array."""
    band: int          # output rows per band
    group: int         # input blocks in one ibuf slot (all: each band's input loads once)
    inputs: int        # ibuf slots: 2 loads the next group while the array streams this one
    blocks: int        # output blocks accumulated at once (each input group serves them all)
    accs: int          # abuf slots of `blocks` blocks, used run after run in turn
    outputs: int       # obuf slots: 2 lets POST write a block while STORE reads the last
    chunk: int         # weight tiles per wbuf slot (all of an output block's when resident)
    weights: int       # wbuf slots: one per output block when all weights stay on chip
    bias_run: int      # blocks' biases per bbuf slot (every block's when they fit)
    biases: int        # bbuf slots
    bias_entries: int  # bbuf entries per block: 1, or 2 with per-lane shift offsets

    @property
    def resident(self) -> bool:
        return self.chunk == 0


@dataclass(frozen=True)
class _Geometry:
    """A conv's shape in the array's units: kernel, stride, padding, input and output
    blocks, input and output image sizes."""
    k: int
    s: int
    p: int
    n_ci: int
    n_co: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int

    @property
    def wp(self) -> int:
        return self.in_w + 2 * self.p

    def in_rows(self, rows: int) -> int:
        return (rows - 1) * self.s + self.k


def _conv_plan(layer: QLayer, g: _Geometry, cfg: HwConfig, tiles: np.ndarray) -> _ConvPlan:
    """The cheapest cut by `_conv_cost` among the balanced band heights, each either with
    all input blocks in ibuf (each band's input loads once; tall inputs make the bands
    short, and every weight tile then streams few vectors) or with input groups, reloaded
    per run of `blocks` output blocks that accumulate side by side in abuf, the next group
    loading beside the array (taller bands). `tiles` (n_co, taps) marks the weight tiles
    the GEMMs stream."""
    r, taps = cfg.rows, tiles.shape[1]
    _need(g.in_rows(1) * g.wp <= cfg.ibuf_depth, layer,
          f"one input row of {g.wp} pixels does not fit ibuf_depth={cfg.ibuf_depth}")
    _need(r <= cfg.wbuf_depth, layer, f"a weight tile needs {r} wbuf entries, wbuf_depth={cfg.wbuf_depth}")
    tallest = _band_rows(layer, g.out_h, lambda rows: g.in_rows(rows) * g.wp <= cfg.ibuf_depth
                         and rows * g.out_w <= min(cfg.abuf_depth, cfg.obuf_depth) and rows <= 1023)
    if g.n_co * taps * r <= cfg.wbuf_depth:
        chunk, weights = 0, g.n_co           # every block's weights stay in a slot of its own
    else:
        weights = 2 if 2 * r <= cfg.wbuf_depth else 1
        chunk = cfg.wbuf_depth // weights // r
    per = 1 if layer.f_wc is None else 2      # per-channel: bias, then the shift offsets
    _need(per <= cfg.bbuf_depth, layer, f"per-channel weights need {per} bbuf entries per "
          f"output block, bbuf_depth={cfg.bbuf_depth}")
    bias_run = g.n_co if g.n_co * per <= cfg.bbuf_depth else 1
    biases = 1 if bias_run == g.n_co else min(2, cfg.bbuf_depth // per)
    best = None
    # balanced heights: the fewest bands of at most b rows, as even as they go
    for band in sorted({-(-g.out_h // -(-g.out_h // b)) for b in range(1, tallest + 1)}, reverse=True):
        v = band * g.out_w
        outputs = 2 if v <= cfg.obuf_depth // 2 else 1
        for inputs in (1, 2):
            group = min(g.n_ci, cfg.ibuf_depth // inputs // (g.in_rows(band) * g.wp))
            if group == 0:
                continue
            runs = {1} if group == g.n_ci else \
                {1, min(g.n_co, cfg.abuf_depth // (2 * v)) or 1, min(g.n_co, cfg.abuf_depth // v)}
            for blocks in sorted(runs):
                accs = 2 if 2 * blocks * v <= cfg.abuf_depth else 1
                plan = _ConvPlan(band, group, inputs, blocks, accs, outputs, chunk, weights,
                                 bias_run, biases, per)
                cost = _conv_cost(plan, g, cfg, tiles)
                if best is None or cost < best[0]:
                    best = (cost, plan)
    return best[1]


def _band_parts(plan: _ConvPlan, kk: int, tiles: np.ndarray) -> list[list]:
    """The steps of one band, as [co, ci0, ci1, w0, w1, t0, t1, first, last, run]: output
    blocks go in runs of `plan.blocks`; a run goes through the input groups (in
    alternating order from one run to the next, so that the group loaded last serves the
    next run first) and, per group, through its blocks and their weight chunks (wbuf
    holds tiles w0..w1-1; streamed chunks start and end at non-zero tiles, so that a
    block-diagonal weight loads little besides its blocks), the GEMMs running over the
    non-zero tiles among t0..t1-1. `first` and `last` mark each block's first and last
    step."""
    n_co, taps = tiles.shape
    n_ci = taps // kk
    live = tiles.reshape(n_co, n_ci, kk).any(axis=2)
    used = [np.flatnonzero(row) for row in tiles]
    order = [(a, min(a + plan.group, n_ci)) for a in range(0, n_ci, plan.group)]
    parts = []
    for run, c0 in enumerate(range(0, n_co, plan.blocks)):
        mine = []
        for ci0, ci1 in (order if run % 2 == 0 else order[::-1]):
            lo, hi = ci0 * kk, ci1 * kk
            for co in range(c0, min(c0 + plan.blocks, n_co)):
                if not live[co, ci0:ci1].any():
                    continue
                if plan.resident:
                    mine.append([co, ci0, ci1, 0, taps, lo, hi, False, False, run])
                    continue
                # chunks from one non-zero tile to the last within reach
                nz = used[co][np.searchsorted(used[co], lo):np.searchsorted(used[co], hi)]
                while len(nz):
                    w0 = int(nz[0])
                    within = nz[nz < w0 + plan.chunk]
                    w1 = int(within[-1]) + 1
                    mine.append([co, ci0, ci1, w0, w1, w0, w1, False, False, run])
                    nz = nz[len(within):]
        firsts, lasts = {}, {}
        for k, part in enumerate(mine):
            firsts.setdefault(part[0], k)
            lasts[part[0]] = k
        for k in firsts.values():
            mine[k][7] = True
        for k in lasts.values():
            mine[k][8] = True
        parts += mine
    return parts


def _conv_cost(plan: _ConvPlan, g: _Geometry, cfg: HwConfig, tiles: np.ndarray) -> float:
    """Estimated cycles of a conv cut by `plan`, from hwq/arch/timing.py's numbers: the
    steps in order on a model of the array and the DRAM port. A GEMM holds the array for
    its occupancy (at least the front end's instruction interval); a LOAD starts at its
    point in the program (_Slots) once the port is free, and runs slower by the
    instruction words fetched meanwhile; a step starts once its loads are done; POST
    waits for the array to drain and holds it while it runs; a STORE follows its POST.
    LOAD and STORE instructions use up the front end's spare time between GEMMs first,
    then delay the array."""
    r, c, kk = cfg.rows, cfg.cols, g.k * g.k
    issue, iw = timing.front_end_cycles(cfg) + 1, cfg.instr_words
    ew_i, ew_w, ew_o = (cfg.entry_words(b) for b in ("ibuf", "wbuf", "obuf"))
    sums = np.concatenate([np.zeros((len(tiles), 1), np.int64), np.cumsum(tiles, axis=1)], axis=1)
    inputs, weights = _Slots(0, plan.inputs), _Slots(0, plan.weights)
    # pass 1: the steps and, per point of the program, the loads placed there; bands
    # after the third full one repeat its time (`more`)
    full, rest = divmod(g.out_h, plan.band)
    heights = [plan.band] * min(full, 3) + ([rest] if rest else [])
    more = max(0, full - 3)
    steps, loads, parts, ends = [], {}, {}, []
    for band, rows in enumerate(heights):
        if rows not in parts:
            parts[rows] = _band_parts(plan, kk, tiles)
        n = g.in_rows(rows)
        inside = min(g.in_h, n) * g.in_w
        block = inside * ew_i + n * g.wp - inside
        for co, ci0, ci1, w0, w1, t0, t1, first, last, run in parts[rows]:
            i = len(steps)
            for slots, key, items in ((inputs, (band, ci0), (ci1 - ci0) * block),
                                      (weights, (co, w0), (w1 - w0) * r * ew_w)):
                ready = slots.use(key, i)[1]
                if ready is not None:
                    loads.setdefault(ready, []).append((items, i))
            steps.append((rows, int(sums[co, t1] - sums[co, t0]), last))
        ends.append(len(steps))
    # pass 2: the times
    t = dram = spare = 0.0
    done = [0.0] * len(steps)                   # when each step's loads are done

    def load(at: float, items: int, need: int) -> float:
        nonlocal dram, spare
        dram = max(dram, at) + items * slow
        done[need] = max(done[need], dram)
        late, spare = max(0.0, issue - spare), max(0.0, spare - issue)
        return late                               # the front end's delay to the array

    for i, (rows, gemms, last) in enumerate(steps):
        v = rows * g.out_w
        o = max(v + 1, r, c, issue)
        slow = o / (o - iw) if o > iw else 2.0
        for items, need in loads.get((i, BEFORE), ()):
            t += load(t, items, need)
        start = max(t, done[i])
        t, spare = start + gemms * o, spare + gemms * (o - issue)
        for items, need in loads.get((i, STREAMING), ()):     # beside this step's GEMMs
            t += load(start, items, need)
        if last:
            # POST waits for the array to drain and holds it (abuf's read port); the
            # STORE goes among the next GEMMs
            t = t - o + 2 * v + r + c + 6
            dram = max(dram, t) + v * ew_o
            t, spare = t + max(0.0, issue - spare), max(0.0, spare - issue)
        if i + 1 in ends:
            ends[ends.index(i + 1)] = max(t, dram)          # the time each band is done
    return max(t, dram) + more * (ends[2] - ends[1] if more else 0.0)


@dataclass
class _Step:
    """The GEMMs of output rows r0..r0+rows-1, output block co, over the non-zero weight
    tiles among t0..t1-1 (tiles run over (input block, ky, kx)): those of input blocks
    ci0..ci1-1, which ibuf holds, with wbuf holding tiles w0..w1-1."""
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
    """(Cout, Cin, k, k) int8: a grouped conv's weight with zeros across groups."""
    g = layer.groups
    if g == 1:
        return layer.weight
    cout, cin_g, k, _ = layer.weight.shape
    dense = np.zeros((cout, cin_g * g, k, k), np.int8)
    group = np.arange(cout) // (cout // g)
    dense[np.arange(cout)[:, None], group[:, None] * cin_g + np.arange(cin_g)[None, :]] = layer.weight
    return dense


def lower_conv(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
               image: _Image, emit: _Emitter, co0: int = 0, tag: str = "") -> int:
    """Lower conv `layer` (grouped: with zero tiles across groups, which no GEMM streams)
    reading the concatenation of the channels of `srcs` (one input block after the
    other; all of one size), writing output blocks co0.. of `dst`. `tag` names this
    part's weights when a layer lowers to several convs. The real MACs."""
    r, c, bus = cfg.rows, cfg.cols, cfg.bus_bytes
    cout, cin_g, k, _ = layer.weight.shape
    s, p = layer.stride, layer.padding
    _need(p <= 7, layer, f"padding {p} exceeds the DMA's 7")
    src = srcs[0]
    assert all((t.h, t.w) == (src.h, src.w) for t in srcs)
    firsts = np.cumsum([0] + [t.stored_channels for t in srcs])     # stored channel offsets
    n_ci, n_co = int(firsts[-1]) // r, -(-cout // cfg.channel_block) * cfg.channel_block // c
    g = _Geometry(k, s, p, n_ci, n_co, src.h, src.w, dst.h, dst.w)
    out_h, out_w, wp = dst.h, dst.w, g.wp
    block_src = np.repeat(np.arange(len(srcs)), [t.stored_channels // r for t in srcs])

    # Weights in stored-channel order; tile (co, ci, ky, kx) is `rows` wbuf entries, so
    # the taps of any run of input blocks are contiguous in DRAM.
    w = np.zeros((n_co * c, firsts[-1], k, k), np.int8)
    index = np.concatenate([t.channel_index + f for t, f in zip(srcs, firsts)])
    w[np.arange(cout)[:, None], index[None, :]] = _dense_weight(layer)
    tiles = w.reshape(n_co, c, n_ci, r, k, k).transpose(0, 2, 4, 5, 3, 1)  # co ci ky kx r c
    taps = n_ci * k * k                       # weight tiles per output block
    w_region = image.put(f"{layer.name}{tag}.weight", "weights", np.ascontiguousarray(tiles))
    # GEMMs run only over non-zero tiles (grouped convs are block-diagonal); a block
    # without any keeps its first (zero) tile, which clears the accumulators for the bias
    live = tiles.reshape(n_co, taps, -1).any(axis=2)
    live[~live.any(axis=1), 0] = True
    plan = _conv_plan(layer, g, cfg, live)
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
        _need(lo_s <= shifts.min() and shifts.max() <= hi_s, layer,
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
        t = srcs[block_src[ci]]
        pin, local = t.pixel_words(cfg), ci - firsts[block_src[ci]] // r
        top = st.r0 * s - p                   # first input row the band reads (may be < 0)
        n = g.in_rows(st.rows)
        y0, y1 = max(top, 0), min(top + n, src.h)
        if y1 <= y0:                          # the band reads padding only (k <= padding)
            y0 = y1 = 0
            pad_top, pad_bottom = n, 0
        else:
            pad_top, pad_bottom = y0 - top, top + n - y1
        return dict(buf=0, sram=st.inp + (ci - st.ci0) * n * wp,
                    dram=t.region.word + y0 * src.w * pin + local * (r // bus),
                    y_size=y1 - y0, x_size=src.w, y_stride=src.w * pin, x_stride=pin,
                    pad_top=pad_top, pad_bottom=pad_bottom, pad_left=p, pad_right=p)

    # Pass 1: give every step its slots, and queue the loads that fill them.
    heights = {}
    steps = []
    for r0 in range(0, out_h, plan.band):
        rows = min(plan.band, out_h - r0)
        if rows not in heights:
            heights[rows] = _band_parts(plan, k * k, live)
        steps += [_Step(r0, rows, *part) for part in heights[rows]]
    prefetch = _Prefetch(emit, cfg)
    stores = _Stores(emit, cfg, prefetch)
    inputs = _Slots(cfg.ibuf_depth // plan.inputs, plan.inputs)
    weights = _Slots(plan.chunk * r if plan.chunk else taps * r, plan.weights)
    biases = _Slots(plan.bias_run * per, plan.biases)
    accs = _Slots(cfg.abuf_depth // plan.accs, plan.accs)
    for i, st in enumerate(steps):
        rows = f"rows {st.r0}..{st.r0 + st.rows - 1}"
        st.inp, ready = inputs.use((st.r0, st.ci0), i)
        if ready:
            prefetch.add(ready, (i, BEFORE), f"{rows} input blocks {st.ci0}..{st.ci1 - 1}",
                         [input_block(st, ci) for ci in range(st.ci0, st.ci1)])
        st.wgt, ready = weights.use((st.co, st.w0), i)
        if ready:
            prefetch.add(ready, (i, BEFORE), f"output block {st.co} weights {st.w0}..{st.w1 - 1}",
                         _runs(1, st.wgt, w_region.word + (st.co * taps + st.w0) * r * ew,
                               (st.w1 - st.w0) * r, ew))
        st.acc = accs.use((st.r0, st.run), i)[0] + (st.co - st.run * plan.blocks) * st.rows * out_w
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
        tile = f"rows {st.r0}..{st.r0 + st.rows - 1} output block {co0 + st.co}"
        span = g.in_rows(st.rows) * wp
        prefetch.due((i, BEFORE))
        for t in np.flatnonzero(live[st.co, st.t0:st.t1]) + st.t0:
            ci, tap = divmod(int(t), k * k)
            ky, kx = divmod(tap, k)
            emit("GEMM", f"{tile} tap ({ky},{kx}) input block {ci}",
                 wgt=st.wgt + (t - st.w0) * r, inp=st.inp + (ci - st.ci0) * span + ky * wp + kx,
                 acc=st.acc, reset=int(st.first), n_outer=st.rows, n_inner=out_w, inp_so=s * wp,
                 inp_si=s, acc_so=out_w, acc_si=1)
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
                         dict(sram=out, dram=dst.region.word + st.r0 * out_w * pout + (co0 + st.co) * ew,
                              y_size=st.rows, x_size=out_w, y_stride=out_w * pout, x_stride=pout))
            blocks += 1
    stores.flush()
    return out_h * out_w * cout * cin_g * k * k


def lower_maxpool(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
                  image: _Image, emit: _Emitter) -> int:
    src = srcs[0]
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


def _post_slope(layer: QLayer, cfg: HwConfig) -> int:
    """POST's slope field: the layer's LeakyReLU slope over 2**ALPHA_BITS, else none."""
    if layer.act != "leaky_relu":
        return SLOPE_ONE
    _need(cfg.leaky_relu, layer, f"LeakyReLU needs POST's slope multipliers, which hardware "
          f"config '{cfg.name}' leaves out (leaky_relu: false); use ReLU or another board")
    field = isa.BY_NAME["POST"].field("slope")
    _need(field.lo <= layer.alpha_q <= field.hi, layer,
          f"LeakyReLU slope {layer.alpha_q}/{SLOPE_ONE} is outside POST's {field.lo}..{field.hi}; "
          f"the negative slope must be in [0, {(field.hi + 0.5) / SLOPE_ONE:.3f})")
    return layer.alpha_q


def _conv_like(layer: QLayer, weight: np.ndarray, **changes) -> QLayer:
    """`layer` as a conv with `weight` (bias 0), the requantization otherwise its own."""
    return dataclasses.replace(layer, kind="conv", weight=weight, groups=changes.pop("groups", 1),
                               bias=np.zeros(len(weight), np.int32), f_wc=None, **changes)


def _lower_conv_layer(layer, srcs, dst, cfg, image, emit) -> int:
    return lower_conv(layer, srcs[:1], dst, cfg, image, emit)


def lower_avgpool(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
                  image: _Image, emit: _Emitter) -> int:
    """Average pool = depthwise conv whose every weight is the reciprocal multiplier: the
    window sum times it, requantized by the layer's shift, as the golden model does."""
    k, m, c = layer.kernel, layer.multiplier, layer.in_shape[0]
    if not -128 <= m <= 127:
        raise HwqError(f"layer '{layer.name}': average pool multiplier {m} (1/{k * k} at fix "
                       f"position {layer.f_w}) does not fit an int8 weight")
    conv = _conv_like(layer, np.full((c, 1, k, k), m, np.int8), groups=c)
    return lower_conv(conv, srcs[:1], dst, cfg, image, emit)


def lower_add(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
              image: _Image, emit: _Emitter) -> int:
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
    return dst.h * dst.w * c * len(srcs)                 # one product per input element


def lower_concat(layer: QLayer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig,
                 image: _Image, emit: _Emitter) -> int:
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
        macs += dst.h * dst.w * c                           # one product per input element
    return macs


LOWERINGS = {"conv": _lower_conv_layer, "maxpool": lower_maxpool, "avgpool": lower_avgpool,
             "add": lower_add, "concat": lower_concat}


def _flatten_view(src: TensorLayout) -> TensorLayout:
    """Flatten moves no data: the pixel-major bytes are read as one long pixel, and
    torch's channel-major order (c, y, x) is mapped onto them."""
    c = src.channel_index.size
    yx = np.arange(src.h * src.w)
    index = (yx[None, :] * src.stored_channels + src.channel_index[:, None]).ravel()
    assert index.size == c * src.h * src.w
    return TensorLayout(src.region, 1, 1, src.h * src.w * src.stored_channels, index)


def _last_uses(qmodel: QModel) -> dict[str, int]:
    """Index of the last layer that reads each tensor's memory (a flatten view reads its
    source's)."""
    owner = {"input": "input"}
    last = {}
    for k, layer in enumerate(qmodel.layers):
        for src in layer.sources:
            last[owner[src]] = k
        owner[layer.name] = owner[layer.sources[0]] if layer.kind == "flatten" else layer.name
    return last


def compile_model(qmodel: QModel, cfg: HwConfig, reuse_activations: bool = False) -> Compiled:
    """`reuse_activations`: a tensor's DRAM is given to later activations once its last
    reader is lowered (liveness), so only the input and the output survive the run: the
    layouts then hold just those two, and per-layer checks of the run are not possible."""
    memmap = MemoryMap(cfg)
    image = _Image(memmap)
    emit = _Emitter(cfg)
    layouts = {"input": memmap.activation("input", "input", qmodel.input_shape)}
    macs = {}
    last = qmodel.layers[-1].name
    dies_after = {}
    for name, k in _last_uses(qmodel).items():
        dies_after.setdefault(k, []).append(name)
    dead = set()
    for index, layer in enumerate(qmodel.layers):
        emit.layer = layer.name
        srcs = [layouts[s] for s in layer.sources]
        if layer.kind == "flatten":
            layouts[layer.name] = _flatten_view(srcs[0])
            continue
        if layer.kind not in LOWERINGS:
            raise HwqError(f"layer '{layer.name}': no lowering for kind '{layer.kind}'")
        kind = "output" if layer.name == last else "activation"
        c, h, w = layer.out_shape
        if layer.kind == "concat":
            dst = memmap.concatenation(layer.name, kind, [t.channel_index.size for t in srcs], h, w)
        else:
            dst = memmap.activation(layer.name, kind, layer.out_shape,
                                    like=srcs[0] if layer.kind == "maxpool" else None)
        layouts[layer.name] = dst
        macs[layer.name] = LOWERINGS[layer.kind](layer, srcs, dst, cfg, image, emit)
        if reuse_activations:
            for name in dies_after.get(index, []):
                if name not in ("input", last):
                    memmap.release(layouts[name].region)
                    dead.add(name)
    if reuse_activations:   # views of dead tensors die with them
        layouts = {n: t for n, t in layouts.items()
                   if n in ("input", last) or t.region.name not in dead}
    emit.layer = "end"
    emit("END")
    program = isa.to_bytes(emit.program)
    code = memmap.allocate("program", "program", len(program))
    data = image.assemble(memmap.next_word)
    data[code.word * cfg.bus_bytes:] = program
    return Compiled(cfg, emit.program, emit.notes, emit.layer_of, bytes(data), memmap, layouts,
                    code.word, macs)
