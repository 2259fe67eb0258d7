"""The blocks the accelerator's top composes around its front end, each on Amaranth's
simulator against a model written from its spec: the buffer crossbar, the scoreboard
(against isa.hazard over ints), the DRAM arbiter and the performance counters."""
from __future__ import annotations

import dataclasses
import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.arch.perf import COUNTERS
from hwq.rtl.buffers import (BUFFER_BITS, READERS, UNIT_PORTS, WRITERS, BufferCrossbar,
                             member, write_lanes)
from hwq.rtl.dma import DramArbiter, load_lanes
from hwq.rtl.perf import PerfCounters
from hwq.rtl.ports import UNITS
from hwq.rtl.scoreboard import Scoreboard

CFG = HwConfig(name="blocks", rows=4, cols=8, bus_bytes=2, ibuf_depth=64, wbuf_depth=32,
               bbuf_depth=16, abuf_depth=16, obuf_depth=64, dram_words=1024)


def _run(dut, bench, clock=True):
    m = Module()
    m.submodules.dut = dut
    if clock:                  # a `sync` domain even where the block has no register
        tick = Signal()
        m.d.sync += tick.eq(~tick)
    sim = Simulator(m)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# ---------------- buffer crossbar ----------------

def test_crossbar_wires_what_the_isa_accesses():
    """Every buffer a unit's op writes (reads) in the ISA table has that unit among its
    writers (readers), and no other unit is there."""
    writes, reads = {}, {}
    for unit in UNITS:
        for e in isa.BY_NAME[unit].extents({f.name: 0 for f in isa.BY_NAME[unit].fields}, CFG):
            if e.memory in isa.BUFFERS:
                if "w" in e.access:
                    writes.setdefault(e.memory, set()).add(unit)
                if "r" in e.access:
                    reads.setdefault(e.memory, set()).add(unit)
    assert {b: {u for u, _ in ports} for b, ports in WRITERS.items()} == writes
    assert {b: {u for u, _ in ports} for b, ports in READERS.items()} == reads


def _holds(unit, buf, busy, draining, target):
    """Who holds a shared port (buffers.py): LOAD into its target, GEMM while the array
    drains, another unit while busy."""
    if unit == "GEMM":
        return draining
    if unit == "LOAD":
        return busy["LOAD"] and isa.LOAD_TARGETS[target] == buf
    return busy[unit]


def _owner(ports, buf, busy, draining, target):
    """The source of a port: the first that holds it, else the last."""
    return next((p for p in ports[:-1] if _holds(p[0], buf, busy, draining, target)), ports[-1])


def test_buffer_crossbar():
    """Random cycles: units busy or not at random, each port driven with random addresses
    and data by every unit, enabled only by the unit that holds it (as the hazards
    ensure). Each write port's mirror (trace) shows the holder's address, lanes, data and
    index; the memories take the enabled lanes; each read port's data, at every reader,
    is the entry the holder's enabled read addressed a cycle before (the old one, if
    written in that cycle), and holds without a read."""
    dut = BufferCrossbar(CFG)
    rng = random.Random(3)
    B = 8 * CFG.bus_bytes
    mems = {b: [0] * getattr(CFG, f"{b}_depth") for b in isa.BUFFERS}
    width = {member(u, p): len(getattr(dut, member(u, p)).data) for u, p in UNIT_PORTS}
    writers = {p for ports in WRITERS.values() for p in ports}
    failures = []

    async def bench(ctx):
        read = {b: 0 for b in isa.BUFFERS}
        for cycle in range(600):
            busy = {u: rng.random() < 0.5 for u in UNITS}
            draining, target = rng.random() < 0.5, rng.randrange(len(isa.LOAD_TARGETS))
            ctx.set(dut.busy, sum(busy[u] << k for k, u in enumerate(UNITS)))
            ctx.set(dut.draining, draining)
            ctx.set(dut.load_target, target)
            drive = {}
            for unit, port in UNIT_PORTS:
                p = getattr(dut, member(unit, port))
                addr = rng.randrange(8)
                data = rng.getrandbits(width[member(unit, port)])
                drive[unit, port] = (addr, data)
                ctx.set(p.addr, addr)
                if (unit, port) in writers:
                    ctx.set(p.data, data)
                ctx.set(p.en, 0)
            writes, reads = {}, {}
            for buf, ports in WRITERS.items():
                unit, port = _owner(ports, buf, busy, draining, target)
                lanes = write_lanes(CFG, buf)
                above = load_lanes(CFG) - lanes
                en = rng.getrandbits(lanes) if rng.random() < 0.7 else 0
                addr, data = drive[unit, port]
                if unit == "LOAD":
                    # LOAD's port: the target's lanes at the bottom of its wider port, the
                    # lanes above them ignored
                    en = en if (busy["LOAD"] and isa.LOAD_TARGETS[target] == buf) else 0
                    data &= (1 << BUFFER_BITS[buf](CFG)) - 1
                    if en:
                        ctx.set(dut.load_wr.en, en | rng.getrandbits(above) << lanes)
                else:
                    ctx.set(getattr(dut, member(unit, port)).en, 1 if en else 0)
                    en = (1 << lanes) - 1 if en else 0
                writes[buf] = (unit, addr, en, data)
            for buf, ports in READERS.items():
                unit, port = _owner(ports, buf, busy, draining, target)
                if rng.random() < 0.6:
                    ctx.set(getattr(dut, member(unit, port)).en, 1)
                    reads[buf] = drive[unit, port][0]
            for buf, (unit, addr, en, data) in writes.items():
                got = tuple(ctx.get(getattr(dut.trace, f"{buf}_{f}"))
                            for f in ("unit", "addr", "en", "data"))
                if got != (UNITS.index(unit), addr, en, data):
                    failures.append((cycle, buf, "trace", got, (UNITS.index(unit), addr, en, data)))
            await ctx.tick()
            for buf, addr in reads.items():
                read[buf] = mems[buf][addr]
            for buf, (_, addr, en, data) in writes.items():
                gran = BUFFER_BITS[buf](CFG) if buf == "abuf" else B
                for lane in range(write_lanes(CFG, buf)):
                    if en >> lane & 1:
                        mask = ((1 << gran) - 1) << (lane * gran)
                        mems[buf][addr] = mems[buf][addr] & ~mask | data & mask
            for buf, ports in READERS.items():
                for unit, port in ports:
                    got = ctx.get(getattr(dut, member(unit, port)).data)
                    if got != read[buf]:
                        failures.append((cycle, buf, unit, "read", got, read[buf]))
    _run(dut, bench)
    assert not failures, failures[:5]


# ---------------- scoreboard ----------------

def _random_instr(op: str, rng) -> isa.Instr:
    """An in-range `op` with small fields: its extents meet other instructions' often."""
    while True:
        fields = {}
        for f in isa.BY_NAME[op].fields:
            lo, hi = (-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed else (0, (1 << f.bits) - 1)
            fields[f.name] = rng.randint(max(lo, -3), min(hi, rng.choice([1, 2, 4, 8, 30])))
        if op == "LOAD":
            fields["buf"] = rng.randrange(len(isa.LOAD_TARGETS))
        ins = isa.Instr.make(op, **fields)
        if isa.range_violation(ins, CFG) is None:
            return ins


def _extents_word(dut, ins) -> int:
    """`ins`'s extents packed as the scoreboard's `extents` port holds them (its op's
    members; the other ops' are 0)."""
    layout = dut.extents.shape()
    word = 0
    for k, e in enumerate(isa.BY_NAME[ins.op].extents(ins.fields, CFG)):
        parts = {"when": int(bool(e.when))}
        if e.memory != "dram":
            parts |= {"first": e.first, "last": e.last}
        for part, v in parts.items():
            f = layout[f"{ins.op}_{k}_{part}"]
            word |= (v & ((1 << f.width) - 1)) << f.offset
    return word


def _expected_hazards(new, running, busy: bool, draining: bool) -> set[str]:
    """isa.hazard over ints: the running instruction's extents count while its unit is
    busy; a GEMM's abuf extents also while the array drains, whatever their `when`."""
    if new.op == running.op:
        return set()
    kinds = set()
    for e in isa.BY_NAME[new.op].extents(new.fields, CFG):
        for f in isa.BY_NAME[running.op].extents(running.fields, CFG):
            lives = [f] if busy else []
            if running.op == "GEMM" and f.memory == "abuf" and draining:
                lives.append(dataclasses.replace(f, when=1))
            for g in lives:
                h = isa.hazard(e, g)
                if h is not None and h[1]:
                    kinds.add(h[0])
    return kinds


@pytest.mark.parametrize("overlap", [True, False])
def test_scoreboard_hazards(overlap):
    """Pairs of random instructions on the top's schedule: the running one's extents
    presented while its unit is idle (it starts), its unit busy from the next cycle, then
    the new one's op and extents; for a running GEMM also with the array draining, busy
    or not (then its held extents follow the new instruction). A cycle after the new one
    is presented, `port_hazard` and `data_hazard` are what isa.hazard says over ints (0
    without overlap), `unit_busy` whether the new one's unit is busy, and `active` and
    `all_idle` follow busy and draining."""
    cfg = dataclasses.replace(CFG, overlap=overlap)
    dut = Scoreboard(cfg)
    rng = random.Random(7 + overlap)
    trials = []
    for _ in range(500):
        # GEMM running and POST new more often: the drain's cases
        running = _random_instr(rng.choice(UNITS + ("GEMM",)), rng)
        new = _random_instr(rng.choice(UNITS + ("POST",)) if rng.random() < 0.9 else running.op,
                            rng)
        state = rng.choice(["busy", "busy+draining", "draining"] if running.op == "GEMM"
                           else ["busy"])
        trials.append((running, new, state))
    failures = []

    def onehot(op):
        return 1 << [o.name for o in isa.OPS].index(op)

    async def bench(ctx):
        for running, new, state in trials:
            unit = 1 << UNITS.index(running.op)
            busy, draining = "busy" in state, "draining" in state
            ctx.set(dut.busy, 0)
            ctx.set(dut.draining, 0)
            await ctx.tick()
            ctx.set(dut.extents.as_value(), _extents_word(dut, running))
            ctx.set(dut.op, onehot(running.op))
            await ctx.tick()                      # the start: the unit is idle
            ctx.set(dut.busy, unit)
            ctx.set(dut.draining, running.op == "GEMM" and draining)
            ctx.set(dut.extents.as_value(), _extents_word(dut, new))
            ctx.set(dut.op, onehot(new.op))
            await ctx.tick()
            await ctx.tick()
            if not busy:                          # GEMM free, the array draining
                ctx.set(dut.busy, 0)
                await ctx.tick()
                await ctx.tick()
            want = _expected_hazards(new, running, busy, draining) if overlap else set()
            got = {k for k in ("port", "data") if ctx.get(getattr(dut, f"{k}_hazard"))}
            if got != want:
                failures.append((isa.format_instr(running), state, isa.format_instr(new), got, want))
            want_busy = int(busy and new.op == running.op)
            active = (unit if busy or draining else 0)
            got_status = (ctx.get(dut.unit_busy), ctx.get(dut.active), ctx.get(dut.all_idle))
            if got_status != (want_busy, active, int(active == 0)):
                failures.append((running.op, state, new.op, got_status, (want_busy, active)))
    _run(dut, bench)
    assert not failures, failures[:5]


# ---------------- DRAM arbiter ----------------

def test_dram_arbiter():
    """Random requests: the fetch has the port when it reads, else LOAD's read and
    STORE's write (LOAD's address unless STORE writes); `ready` reaches LOAD and STORE
    only while the fetch does not read, and read data reaches all three."""
    A, W = 10, 16
    dut = DramArbiter(A, W)
    rng = random.Random(5)
    failures = []

    async def bench(ctx):
        for cycle in range(300):
            v = {"fetch_re": rng.getrandbits(1), "fetch_addr": rng.getrandbits(A),
                 "load_re": rng.getrandbits(1), "load_addr": rng.getrandbits(A),
                 "store_we": rng.getrandbits(1), "store_addr": rng.getrandbits(A),
                 "store_wdata": rng.getrandbits(W),
                 "ready": rng.getrandbits(1), "rdata": rng.getrandbits(W)}
            for name in ("fetch", "load", "store"):
                for f in ("re", "we", "addr", "wdata"):
                    if f"{name}_{f}" in v:
                        ctx.set(getattr(getattr(dut, name), f), v[f"{name}_{f}"])
            ctx.set(dut.mem.ready, v["ready"])
            ctx.set(dut.mem.rdata, v["rdata"])
            if v["fetch_re"]:
                want = (1, 0, v["fetch_addr"])
            else:
                want = (v["load_re"], v["store_we"],
                        v["store_addr"] if v["store_we"] else v["load_addr"])
            got = (ctx.get(dut.mem.re), ctx.get(dut.mem.we), ctx.get(dut.mem.addr))
            if got != want or (v["store_we"] and not v["fetch_re"]
                               and ctx.get(dut.mem.wdata) != v["store_wdata"]):
                failures.append((cycle, "request", got, want))
            ready = (ctx.get(dut.fetch.ready), ctx.get(dut.load.ready), ctx.get(dut.store.ready))
            others = v["ready"] & (1 - v["fetch_re"])
            if ready != (v["ready"], others, others):
                failures.append((cycle, "ready", ready))
            if {ctx.get(getattr(dut, n).rdata) for n in ("fetch", "load", "store")} != {v["rdata"]}:
                failures.append((cycle, "rdata"))
    _run(dut, bench, clock=False)
    assert not failures, failures[:5]


# ---------------- performance counters ----------------

@pytest.mark.parametrize("overlap", [True, False])
def test_perf_counters(overlap):
    """Random events and clears: each counter counts its event's cycles (macs rows x cols
    each) since the last clear; without overlap the dispatch stalls stay 0."""
    cfg = dataclasses.replace(CFG, overlap=overlap)
    dut = PerfCounters(cfg)
    rng = random.Random(9 + overlap)
    never = set() if overlap else {"stall_unit", "stall_port", "stall_data"}
    step = {"macs": cfg.rows * cfg.cols}
    failures = []

    async def bench(ctx):
        model = dict.fromkeys(COUNTERS, 0)
        for cycle in range(400):
            clear = rng.random() < 0.03
            events = {name: rng.getrandbits(1) for name in COUNTERS}
            ctx.set(dut.clear, clear)
            for name, bit in events.items():
                ctx.set(getattr(dut.events, name), bit)
            await ctx.tick()
            for name in COUNTERS:
                if clear:
                    model[name] = 0
                elif events[name] and name not in never:
                    model[name] += step.get(name, 1)
            got = {name: ctx.get(getattr(dut.perf, name)) for name in COUNTERS}
            if got != model:
                failures.append((cycle, got, dict(model)))
    _run(dut, bench)
    assert not failures, failures[:3]
