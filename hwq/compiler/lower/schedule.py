"""Where a conv's LOADs and STOREs go among its GEMMs. The accelerator starts
instructions in program order, so their places decide what overlaps: a buffer cut into
slots (Slots) lets the next data load while the array streams the current; Prefetch
emits each LOAD between the GEMM that frees its slot and the one that needs it, spaced
so that it never holds up the GEMMs behind it; Stores emits each finished block's STORE
among the next block's GEMMs. plan.conv_cost replays the same slots to estimate a cut."""
from __future__ import annotations

import collections
import heapq
import itertools

from hwq.arch import isa, timing
from hwq.arch.config import HwConfig
from hwq.compiler.lower.emit import Emitter


# Points of a conv's instruction stream, in program order: (step, phase).
BEFORE, STREAMING, BEFORE_POST = 0, 1, 2   # before a step's GEMMs, after its first, before POST


class Slots:
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


class Prefetch:
    """LOADs placed among a conv's GEMMs: each may go from its `ready` point, must go
    before its `need` point, and goes as early as the LOAD unit allows, the most urgent
    first. The accelerator starts instructions in order and its LOAD unit takes one at a
    time, so a LOAD that finds the unit busy holds back every instruction behind it: the
    next LOAD is emitted only once the GEMMs since the last one take as long as that one
    moves words (hwq/arch/timing.py's estimates, the DRAM port assumed free)."""

    def __init__(self, emit: Emitter, cfg: HwConfig):
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


class Stores:
    """STOREs of finished output blocks, emitted among the next block's GEMMs once POST
    has written obuf: the front end starts instructions in order, so a STORE right behind
    its POST would hold the next GEMMs back until POST is done. (POST itself cannot run
    beside the array: both use abuf's read port.) A STORE goes before any POST that
    overwrites its obuf entries, and before the conv ends. Times are the array's
    (hwq/arch/timing.py), counted from GEMM to GEMM."""

    def __init__(self, emit: Emitter, cfg: HwConfig, prefetch: Prefetch):
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
