"""How a conv is cut to fit the buffers. A band is as many output rows as the buffers
hold (band_rows); ConvPlan is the cut of a conv's shape (Geometry): band height, input
groups, runs of output blocks, and the slots of each buffer; band_parts lists the steps
of one band in program order; conv_plan picks the cheapest of a few candidate cuts by
conv_cost, an estimate of their cycles on the cycle model's numbers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.arch import timing
from hwq.arch.config import HwConfig
from hwq.compiler.ir import QLayer
from hwq.compiler.lower.emit import require
from hwq.compiler.lower.schedule import BEFORE, STREAMING, Slots


def band_rows(layer: QLayer, out_h: int, fits) -> int:
    """Largest number of output rows per band for which `fits(rows)` holds."""
    best = 0
    for rows in range(1, out_h + 1):
        if not fits(rows):
            break
        best = rows
    require(best > 0, layer, "one output row does not fit the on-chip buffers; "
            "use a hardware config with deeper buffers")
    return best


@dataclass(frozen=True)
class ConvPlan:
    """How a conv is cut to fit the buffers, and into how many slots each buffer is split
    so that loads and stores overlap the array."""
    band: int          # output rows per band
    group: int         # input blocks in one ibuf slot (all: each band's input loads once)
    inputs: int        # ibuf slots: 2 loads the next group while the array streams this one
    blocks: int        # output blocks accumulated at once (each input group serves them all)
    accs: int          # abuf slots of `blocks` blocks, used run after run in turn
    outputs: int       # obuf slots: 2 lets POST write a block while STORE reads the last
    chunk: int         # weight tiles per wbuf slot
    weights: int       # wbuf slots: one per output block when all weights stay on chip
    resident: bool     # every block's weights stay on chip, loaded once
    shared: bool       # the blocks share their tiles: one slot holds them, loaded once
    bias_run: int      # blocks' biases per bbuf slot (every block's when they fit)
    biases: int        # bbuf slots
    bias_entries: int  # bbuf entries per block: 1, or 2 with per-lane shift offsets


@dataclass(frozen=True)
class Geometry:
    """A conv's shape in the array's units: kernel, stride, the zero padding its windows
    read (top, bottom, left, right), input and output blocks, input and output image
    sizes."""
    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    bottom: int
    left: int
    right: int
    n_ci: int
    n_co: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int

    @property
    def kk(self) -> int:
        return self.kh * self.kw

    @property
    def wp(self) -> int:
        return self.left + self.in_w + self.right

    def in_rows(self, rows: int) -> int:
        return (rows - 1) * self.sh + self.kh


def band_rows_read(r0: int, rows: int, g: Geometry) -> tuple[int, int, int, int]:
    """(y0, y1, pad_top, pad_bottom): output rows r0..r0+rows-1 read input rows y0..y1-1,
    and the zero rows the LOAD writes above and below them."""
    top = r0 * g.sh - g.top                   # first input row the band reads (may be < 0)
    n = g.in_rows(rows)
    y0, y1 = max(top, 0), min(top + n, g.in_h)
    if y1 <= y0:                              # the band reads padding only (kh <= padding)
        return 0, 0, n, 0
    return y0, y1, y0 - top, top + n - y1


def weight_key(plan: ConvPlan, co: int, w0: int):
    """What a wbuf slot holds: output block co's stored tiles from w0 on, or the shared
    tiles whatever the block."""
    return (None if plan.shared else co, w0)


def conv_plan(layer: QLayer, g: Geometry, cfg: HwConfig, tiles: np.ndarray, shared: int) -> ConvPlan:
    """The cheapest cut by `conv_cost` among the balanced band heights, each either with
    all input blocks in ibuf (each band's input loads once; tall inputs make the bands
    short, and every weight tile then streams few vectors) or with input groups, reloaded
    per run of `blocks` output blocks that accumulate side by side in abuf, the next group
    loading beside the array (taller bands). `tiles` (n_co, taps) marks the weight tiles
    the GEMMs stream; `shared`, the number of tiles every block shares, or 0."""
    r = cfg.rows
    require(g.in_rows(1) * g.wp <= cfg.ibuf_depth, layer,
            f"one input row of {g.wp} pixels does not fit ibuf_depth={cfg.ibuf_depth}")
    require(r <= cfg.wbuf_depth, layer, f"a weight tile needs {r} wbuf entries, wbuf_depth={cfg.wbuf_depth}")
    tallest = band_rows(layer, g.out_h, lambda rows: g.in_rows(rows) * g.wp <= cfg.ibuf_depth
                        and rows * g.out_w <= min(cfg.abuf_depth, cfg.obuf_depth) and rows <= 1023)
    most = int(tiles.sum(axis=1).max())      # the stored tiles of the densest block
    if shared:
        chunk, weights, resident = shared, 1, True             # one slot, for every block
    elif g.n_co * most * r <= cfg.wbuf_depth:
        chunk, weights, resident = most, g.n_co, True          # a slot per block
    else:
        weights = 2 if 2 * r <= cfg.wbuf_depth else 1
        chunk, resident = cfg.wbuf_depth // weights // r, False
    per = 1 if layer.f_wc is None else 2      # per-channel: bias, then the shift offsets
    require(per <= cfg.bbuf_depth, layer, f"per-channel weights need {per} bbuf entries per "
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
                plan = ConvPlan(band, group, inputs, blocks, accs, outputs, chunk, weights,
                                resident, bool(shared), bias_run, biases, per)
                cost = conv_cost(plan, g, cfg, tiles)
                if best is None or cost < best[0]:
                    best = (cost, plan)
    return best[1]


def band_parts(plan: ConvPlan, kk: int, tiles: np.ndarray) -> list[list]:
    """The steps of one band, as [co, ci0, ci1, w0, w1, t0, t1, first, last, run]: output
    blocks go in runs of `plan.blocks`; a run goes through the input groups (in
    alternating order from one run to the next, so that the group loaded last serves the
    next run first) and, per group, through its blocks and their weight chunks (wbuf
    holds the block's stored tiles w0..w1-1, the non-zero ones in tap order, or the
    shared tiles; a streamed chunk is up to `plan.chunk` of them), the GEMMs running over
    the non-zero tiles among t0..t1-1. `first` and `last` mark each block's first and
    last step."""
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
                    stored = plan.chunk if plan.shared else len(used[co])
                    mine.append([co, ci0, ci1, 0, stored, lo, hi, False, False, run])
                    continue
                # chunks of the block's non-zero tiles in the group, `chunk` at a time
                j = int(np.searchsorted(used[co], lo))
                nz = used[co][j:np.searchsorted(used[co], hi)]
                while len(nz):
                    within = nz[:plan.chunk]
                    mine.append([co, ci0, ci1, j, j + len(within), int(within[0]), int(within[-1]) + 1,
                                 False, False, run])
                    j, nz = j + len(within), nz[len(within):]
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


def conv_cost(plan: ConvPlan, g: Geometry, cfg: HwConfig, tiles: np.ndarray) -> float:
    """Estimated cycles of a conv cut by `plan`, from hwq/arch/timing.py's numbers: the
    steps in order on a model of the array and the DRAM port. A GEMM holds the array for
    its occupancy (at least the front end's instruction interval); a LOAD starts at its
    point in the program (Slots) once the port is free, and runs slower by the
    instruction words fetched meanwhile; a step starts once its loads are done; POST
    waits for the array to drain and holds it while it runs; a STORE follows its POST.
    LOAD and STORE instructions use up the front end's spare time between GEMMs first,
    then delay the array."""
    r, c, kk = cfg.rows, cfg.cols, g.kk
    issue, iw = timing.front_end_cycles(cfg) + 1, cfg.instr_words
    ew_i, ew_w, ew_o = (cfg.entry_words(b) for b in ("ibuf", "wbuf", "obuf"))
    sums = np.concatenate([np.zeros((len(tiles), 1), np.int64), np.cumsum(tiles, axis=1)], axis=1)
    inputs, weights = Slots(0, plan.inputs), Slots(0, plan.weights)
    # pass 1: the steps and, per point of the program, the loads placed there; bands
    # after the third full one repeat its time (`more`)
    full, rest = divmod(g.out_h, plan.band)
    heights = [plan.band] * min(full, 3) + ([rest] if rest else [])
    more = max(0, full - 3)
    steps, loads, parts, ends = [], {}, {}, []
    for band, rows in enumerate(heights):
        if rows not in parts:
            parts[rows] = band_parts(plan, kk, tiles)
        n = g.in_rows(rows)
        inside = min(g.in_h, n) * g.in_w
        block = inside * ew_i + n * g.wp - inside
        for co, ci0, ci1, w0, w1, t0, t1, first, last, run in parts[rows]:
            i = len(steps)
            for slots, key, items in ((inputs, (band, ci0), (ci1 - ci0) * block),
                                      (weights, weight_key(plan, co, w0), (w1 - w0) * r * ew_w)):
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
