"""Cycle model of the accelerator: in which clock cycle each instruction starts on its
unit and when that unit is done, as the RTL (hwq/rtl/top.py) does it. The ISS runs it
beside the instructions; tests hold it to the RTL's cycle and performance counters,
exactly. Change it together with the RTL's control.

The memory is assumed never to stall (`ready` high; a read answers the next cycle).
Cycle 0 is the first fetch cycle. The front end handles one instruction at a time:

  fetch     instr_words cycles issuing one DRAM read each, 1 cycle taking the last word
  check     CHECK_CYCLES computing the instruction's extents against the memory sizes
            (hwq/rtl/check.py), the verdict registered for dispatch
  dispatch  from the next cycle: the instruction starts its unit in the first cycle in
            which that unit is free and no conflicting earlier instruction still runs on
            another unit (isa.hazard); the unit's cycle 0 is that cycle. END, an illegal
            opcode and an address out of range stop in the first cycle in which every
            unit is idle.

With `overlap` (the hardware config) the next fetch starts the cycle after a dispatch;
without it, once every unit is idle again (one instruction at a time). The fetch has
priority on the one DRAM port: a LOAD or STORE waits a cycle for every word fetched
while it runs, so its length depends on what is fetched meanwhile.

Unit busy times are hwq/arch/timing.py's.

Every cycle of a run is counted once in the front end's counters: `fetch` (fetching,
checking, and the cycle that dispatches or stops), `stall_unit` (the instruction's unit
is busy), `stall_port` / `stall_data` (a port or data hazard holds it) and `stall_idle`
(waiting for every unit to go idle). Units count their busy cycles on top of that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.arch.perf import FRONT_END, UNIT_OF_OP
from hwq.arch.timing import (dram_items, front_end_cycles, mul_regs, read_regs,
                             unit_cycles)


@dataclass
class _Running:
    instr: isa.Instr
    extents: list[isa.Extent]
    start: int
    end: int                # last busy cycle (a LOAD's or STORE's grows with later fetches)
    dram_first: int = 0     # LOAD / STORE: first cycle that wants the DRAM port
    dram_items: int = 0


@dataclass
class Timeline:
    """The cycle model of one run, fed the instructions in program order: `issue` for
    each that runs on a unit, `stop` for the one that ends the run."""

    cfg: HwConfig
    now: int = 0                                   # first fetch cycle of the next instruction
    running: dict[str, _Running] = field(default_factory=dict)   # the last one per unit
    drain: int = -1                                # last accumulator write of any GEMM
    fetches: list[tuple[int, int]] = field(default_factory=list)   # [first, last] DRAM reads
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.counters = dict.fromkeys(("cycles", *FRONT_END, *UNIT_OF_OP.values()), 0)

    # ---- ends: a LOAD's or STORE's moves with every word fetched while it runs ----
    def _end(self, unit: str) -> int:
        r = self.running.get(unit)
        if r is None:
            return -1
        if unit in ("LOAD", "STORE") and r.dram_items:
            c, left = r.dram_first, r.dram_items
            for first, last in self.fetches:
                if last < c:
                    continue
                if first > c:
                    take = min(left, first - c)
                    left -= take
                    if left == 0:
                        c += take
                        break
                c = max(c, last + 1)
            else:
                c += left
            # a LOAD writes its last item 1 + read_regs cycles after its read
            r.end = c + read_regs(self.cfg) if unit == "LOAD" else c - 1
            if r.end < self.now:                      # later fetches cannot move it any more
                r.dram_items = 0
        return r.end

    def _idle_from(self) -> int:
        return max([self.drain, *(self._end(u) for u in self.running)]) + 1

    def _fetch(self) -> int:
        """Fetch and check the next instruction from `now`; its first dispatch cycle."""
        self.fetches.append((self.now, self.now + self.cfg.instr_words - 1))
        self.counters["fetch"] += front_end_cycles(self.cfg) + 1   # + the dispatch cycle
        return self.now + front_end_cycles(self.cfg)

    def _hazard_ends(self, instr: isa.Instr, new: list[isa.Extent]) -> tuple[int, int]:
        """Last cycles in which a port hazard, and a data hazard, hold `instr` (whose
        extents are `new`) back."""
        ends = {"port": -1, "data": -1}
        for unit, r in self.running.items():
            if unit == instr.op:
                continue
            for f in r.extents:
                live = self._end(unit)
                if unit == "GEMM" and f.memory == "abuf":
                    # the array drains after the unit is free, for this GEMM and earlier ones
                    f, live = isa.Extent(f.memory, f.first, f.last, True, f.access), self.drain
                for e in new:
                    h = isa.hazard(e, f)
                    if h is not None and h[1]:
                        ends[h[0]] = max(ends[h[0]], live)
        return ends["port"], ends["data"]

    def _retire(self, unit: str) -> None:
        """Count the busy cycles of the unit's last instruction, which has ended."""
        if unit in self.running:
            self.counters[UNIT_OF_OP[unit]] += self._end(unit) - self.running.pop(unit).start

    # ---- the instructions ----
    def issue(self, instr: isa.Instr) -> int:
        """Schedule `instr` (one that runs on a unit); its start cycle."""
        ready = self._fetch()
        free = self._end(instr.op) + 1
        extents = isa.BY_NAME[instr.op].extents(instr.fields, self.cfg)
        port, data = self._hazard_ends(instr, extents)
        start = max(ready, free, port + 1, data + 1)
        stall_unit = max(0, min(start, free) - ready)
        stall_port = max(0, min(start, port + 1) - max(ready, free))
        self.counters["stall_unit"] += stall_unit
        self.counters["stall_port"] += stall_port
        self.counters["stall_data"] += start - ready - stall_unit - stall_port

        self._retire(instr.op)
        r = _Running(instr, extents, start, start + unit_cycles(instr, self.cfg))
        if instr.op in ("LOAD", "STORE"):
            r.dram_first = start + (1 if instr.op == "LOAD" else 2)
            r.dram_items = dram_items(instr, self.cfg)
        elif instr.op == "GEMM" and instr["n_outer"] * instr["n_inner"]:
            v = instr["n_outer"] * instr["n_inner"]
            self.drain = max(self.drain, start + v + self.cfg.rows + self.cfg.cols + 3
                             + mul_regs(self.cfg))
        self.running[instr.op] = r
        self.now = start + 1
        if len(self.fetches) > 64:         # fetches before every running DMA's first cycle
            first = min([r.dram_first for r in self.running.values() if r.dram_items]
                        + [self.now])
            self.fetches = [f for f in self.fetches if f[1] >= first]
        if not self.cfg.overlap:
            self.now = max(self.now, self._idle_from())
            self.counters["stall_idle"] += self.now - start - 1
        return start

    def stop(self) -> int:
        """Schedule the instruction that stops the run (END, an illegal opcode, an
        address out of range); the run's cycle count."""
        ready = self._fetch()
        at = max(ready, self._idle_from())
        self.counters["stall_idle"] += at - ready
        for unit in list(self.running):
            self._retire(unit)
        self.counters["cycles"] = at + 1
        return at + 1


def schedule(program: list[isa.Instr], cfg: HwConfig) -> tuple[list[int], int]:
    """Start cycle of every instruction of a straight-line program (its last one stops
    it; that one's entry is the stop cycle), and the run's cycle count."""
    t = Timeline(cfg)
    starts = [t.issue(i) for i in program[:-1]]
    total = t.stop()
    return starts + [total - 1], total


def span_cycles(labels: list[str], starts: list[int], total: int) -> dict[str, int]:
    """Cycles of each run of equal consecutive labels (the compiler's layer of each
    instruction): from its first instruction's start to the next run's first start; the
    last run until the end. Overlapping units make this the time the program spends
    before moving on, and the spans add up to `total`."""
    out: dict[str, int] = {}
    firsts = [k for k in range(len(labels)) if k == 0 or labels[k] != labels[k - 1]]
    for j, k in enumerate(firsts):
        begin = 0 if j == 0 else starts[k]
        end = starts[firsts[j + 1]] if j + 1 < len(firsts) else total
        out[labels[k]] = out.get(labels[k], 0) + end - begin
    return out
