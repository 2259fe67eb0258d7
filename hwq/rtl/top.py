"""The accelerator: a front end that fetches, checks and starts instructions in program
order, and five execution units that run concurrently (isa.py: "Instructions overlap").

Ports (Verilog names in brackets):
  start [start]           pulse while idle: run from start_pc
  start_pc [start_pc]     DRAM word address of the first instruction
  done [done]             level: high from the stop until the next start
  busy [busy]             high while running (the cycle counter counts these cycles)
  status [status]         isa.STATUS code of the last stop
  pc [pc]                 word address of the instruction in the front end / the stopping one
  cycles [cycles]         cycles of the current / last run
  macs [macs]             vectors streamed x rows x cols in the current / last run
  mem [mem__*]            the DRAM port (hwq/rtl/ports.py: DramPort protocol)
  perf [perf]             the performance counters of the current / last run
                          (hwq/arch/perf.py; cycles and macs repeat the ports above)
  trace [trace__*]        for differential testing: `issue` pulses in the cycle an
                          instruction starts its unit or stops the run (`pc` is its
                          address), and each buffer's write port is mirrored (`<buf>_addr`,
                          `_en`, `_data`) with the unit driving it (`<buf>_unit`, an index
                          into UNITS); `busy`: which units are busy (GEMM: or the
                          array still draining); nothing reads them

Front end, per instruction: FETCH issues the instr_words reads (one a cycle; the fetch
has priority on the DRAM port, LOAD and STORE see `ready` low meanwhile), FETCH_WAIT
takes the last word, CHECK computes in CHECK_CYCLES the instruction's extents and whether
they fit the memories (hwq/rtl/check.py), DISPATCH starts the unit in the first cycle in
which the unit is free and no hazard (isa.hazard) holds against the instruction another
unit runs; END, illegal opcodes and out-of-range instructions stop there once every unit
is idle. The next FETCH begins the cycle after. With `cfg.overlap` off, FETCH waits
until every unit is idle, so one instruction runs at a time and the units read their
fields straight from the instruction register; with it on, each unit keeps a copy of its
instruction's fields (hwq/rtl/ports.py held_args) and of its extents (for the hazard
checks), both taken in every cycle it is idle (ports.hold), the dispatch's among them.
hwq/sim/cycles.py is the cycle model of all this.

`fault` builds a deliberately broken variant for the tests that prove the differential
checks catch a bug: "post_round" makes POST's half_up rounding truncate.
"""
from __future__ import annotations

import dataclasses

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.check import RangeCheck, extent_layout, extents_of
from hwq.rtl.decode import Decoder, args_of, op_index
from hwq.rtl.dma import LoadUnit, StoreUnit, dram_addr_bits
from hwq.rtl.gemm import GemmUnit
from hwq.rtl.pe import ACC_BITS
from hwq.arch.perf import COUNTER_BITS, COUNTERS, RUN_BITS, UNIT_OF_OP
from hwq.rtl.perf import perf_layout
from hwq.rtl.pool import PoolUnit
from hwq.rtl.ports import DramPort, hold
from hwq.rtl.post import PostUnit

STATUS_BITS = 8
PC_BITS = isa.DRAM_ADDR_BITS
FAULTS = ("post_round",)
UNITS = tuple(UNIT_OF_OP)                  # the ops that run on a unit of their own
BUFFER_BITS = {"ibuf": lambda cfg: 8 * cfg.rows, "wbuf": lambda cfg: 8 * cfg.cols,
               "bbuf": lambda cfg: ACC_BITS * cfg.cols, "abuf": lambda cfg: ACC_BITS * cfg.cols,
               "obuf": lambda cfg: 8 * cfg.cols}


def write_lanes(cfg: HwConfig, buf: str) -> int:
    """Write-enable bits of a buffer: one per bus word of an entry (abuf: one)."""
    return 1 if buf == "abuf" else cfg.entry_words(buf)


class TraceSignature(wiring.Signature):
    """The `trace` port: instruction issue and every buffer's write port."""

    def __init__(self, cfg: HwConfig):
        members = {"issue": Out(1), "busy": Out(len(UNITS))}
        for b in isa.BUFFERS:
            members[f"{b}_addr"] = Out(isa.SRAM_ADDR_BITS)
            members[f"{b}_en"] = Out(write_lanes(cfg, b))
            members[f"{b}_data"] = Out(BUFFER_BITS[b](cfg))
            members[f"{b}_unit"] = Out(range(len(UNITS)))
        super().__init__(members)


def _mux_write(m, port, unit_index, sources):
    """Drive a memory write port from its sources, (unit, address, enables, data,
    owner): it writes the lanes a source enables. Two units never write a buffer at
    once (a port hazard, isa.hazard), so the address, the data and the unit's index are
    chosen by which unit holds the port (the first whose `owner` is high, else the
    last), off the enables' paths; a port with one source takes them straight from it."""
    unit, addr, en, data, _ = sources[-1]
    index = UNITS.index(unit)
    for unit, a, e, d, owner in reversed(sources[:-1]):
        addr, data = Mux(owner, a, addr), Mux(owner, d, data)
        index = Mux(owner, UNITS.index(unit), index)
        en = en | e
    m.d.comb += [port.addr.eq(addr), port.en.eq(en), port.data.eq(data), unit_index.eq(index)]


def _mux_read(m, port, sources):
    """Drive a synchronous read port from its sources, (address, enable, owner): it reads
    when a source enables it, and with no read it is disabled, so its data holds (a
    ReadPort's `en` defaults to 1). Two units never read a buffer at once (a port
    hazard, isa.hazard), so the address is chosen by which unit holds the port (the
    first whose `owner` is high, else the last), off the enables' paths."""
    addr = sources[-1][0]
    for a, _, owner in reversed(sources[:-1]):
        addr = Mux(owner, a, addr)
    m.d.comb += [port.addr.eq(addr), port.en.eq(Cat(en for _, en, _ in sources).any())]


class Accelerator(wiring.Component):
    def __init__(self, cfg: HwConfig, fault: str | None = None):
        if fault not in (None, *FAULTS):
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        self.cfg, self.fault = cfg, fault
        self.A = dram_addr_bits(cfg)
        self.B = 8 * cfg.bus_bytes
        super().__init__({
            "start": In(1),
            "start_pc": In(PC_BITS),
            "done": Out(1),
            "busy": Out(1),
            "status": Out(STATUS_BITS),
            "pc": Out(PC_BITS),
            "cycles": Out(COUNTER_BITS),
            "macs": Out(COUNTER_BITS),
            "mem": Out(DramPort(self.A, self.B)),
            "perf": Out(perf_layout()),
            "trace": Out(TraceSignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C, B, N = cfg.rows, cfg.cols, self.B, cfg.instr_words

        # ---- buffers ----
        mems, wp, rp = {}, {}, {}
        for name in isa.BUFFERS:
            mem = Memory(shape=unsigned(BUFFER_BITS[name](cfg)), depth=getattr(cfg, f"{name}_depth"),
                         init=[])
            m.submodules[name] = mems[name] = mem
            wp[name] = mem.write_port(granularity=None if name == "abuf" else B)
        for name in isa.BUFFERS:
            rp[name] = mems[name].read_port()
        for name in isa.BUFFERS:
            m.d.comb += [getattr(self.trace, f"{name}_addr").eq(wp[name].addr),
                         getattr(self.trace, f"{name}_en").eq(wp[name].en),
                         getattr(self.trace, f"{name}_data").eq(wp[name].data)]

        # ---- units ----
        m.submodules.decoder = dec = Decoder()
        m.submodules.check = chk = RangeCheck(cfg)
        m.submodules.load = load = LoadUnit(cfg)
        m.submodules.store = store = StoreUnit(cfg)
        m.submodules.gemm = gemm = GemmUnit(cfg)
        m.submodules.post = post = PostUnit(cfg, fault=self.fault)
        m.submodules.pool = pool = PoolUnit(cfg)
        units = dict(zip(UNITS, (load, store, gemm, post, pool)))

        ir = Signal(isa.INSTR_BITS)
        m.d.comb += [dec.word.eq(ir), chk.fields.eq(dec.fields), chk.op.eq(dec.op)]
        running = {}                         # each unit's extents, for the hazard checks
        for name, unit in units.items():
            m.d.comb += unit.args.eq(args_of(dec.fields, name))   # units keep what they need
            if cfg.overlap:
                # held like the unit's fields (copied in every idle cycle: the start,
                # at the end of the dispatch logic, stays out of these registers' enables)
                ext = Signal(extent_layout(cfg), name=f"{name.lower()}_extents")
                hold(m, unit.busy, cfg, [(ext, chk.extents)])
                running[name] = extents_of(ext, isa.BY_NAME[name], cfg)
        # the array drains after GEMM is free (cycles.py), and GEMM's held extents are
        # copied again from then on: its abuf extents are kept for the drain, taken from
        # the held ones while it is busy (from the cycle after the start; the hazard
        # blocks read them in a check's last cycle, the fetch and the check later)
        drains = {}
        if cfg.overlap:
            for k, f in enumerate(running["GEMM"]):
                if f.memory == "abuf":
                    first = Signal.like(f.first, name=f"gemm_drain_{k}_first")
                    last = Signal.like(f.last, name=f"gemm_drain_{k}_last")
                    with m.If(gemm.busy):
                        m.d.sync += [first.eq(f.first), last.eq(f.last)]
                    drains[k] = isa.Extent(f.memory, first, last, Const(1), f.access)

        # LOAD -> ibuf / wbuf / bbuf / obuf (by its `buf` field)
        load_wr = {}
        for code, t in enumerate(isa.LOAD_TARGETS):
            e = cfg.entry_words(t)
            sel = load.target == code
            load_wr[t] = ("LOAD", load.wr.addr, load.wr.en[:e] & sel.replicate(e),
                          load.wr.data[:e * B], load.busy & sel)
        unit_of = {name: getattr(self.trace, f"{name}_unit") for name in isa.BUFFERS}
        _mux_write(m, wp["ibuf"], unit_of["ibuf"], [load_wr["ibuf"]])
        _mux_write(m, wp["wbuf"], unit_of["wbuf"], [load_wr["wbuf"]])
        _mux_write(m, wp["bbuf"], unit_of["bbuf"], [load_wr["bbuf"]])
        ew_o = cfg.entry_words("obuf")
        _mux_write(m, wp["obuf"], unit_of["obuf"], [
            load_wr["obuf"],
            ("POST", post.obuf.addr, post.obuf.en.replicate(ew_o), post.obuf.data, post.busy),
            ("MAXPOOL", pool.wr.addr, pool.wr.en.replicate(ew_o), pool.wr.data, None)])
        _mux_write(m, wp["abuf"], unit_of["abuf"],
                   [("GEMM", gemm.abuf_wr.addr, gemm.abuf_wr.en, gemm.abuf_wr.data, None)])

        _mux_read(m, rp["ibuf"], [(gemm.ibuf.addr, gemm.ibuf.en, None)])
        _mux_read(m, rp["wbuf"], [(gemm.wbuf.addr, gemm.wbuf.en, None)])
        _mux_read(m, rp["bbuf"], [(post.bbuf.addr, post.bbuf.en, None)])
        _mux_read(m, rp["abuf"], [(gemm.abuf_rd.addr, gemm.abuf_rd.en, gemm.draining),
                                  (post.abuf.addr, post.abuf.en, None)])
        _mux_read(m, rp["obuf"], [(store.rd.addr, store.rd.en, store.busy),
                                  (pool.rd.addr, pool.rd.en, None)])
        m.d.comb += [
            gemm.ibuf.data.eq(rp["ibuf"].data), gemm.wbuf.data.eq(rp["wbuf"].data),
            gemm.abuf_rd.data.eq(rp["abuf"].data), post.abuf.data.eq(rp["abuf"].data),
            post.bbuf.data.eq(rp["bbuf"].data),
            store.rd.data.eq(rp["obuf"].data), pool.rd.data.eq(rp["obuf"].data),
        ]

        # ---- DRAM port: the fetch first, then LOAD or STORE (never both: one port) ----
        # LOAD's address is the default, not chosen by its request: that depends on its
        # padding comparisons, which would otherwise run on into the RAM's address (the
        # iCE40's longest path). STORE's write is a state of its FSM; the hazards never
        # let it overlap a LOAD that reads DRAM.
        f_re = Signal()
        f_addr = Signal(self.A)
        with m.If(f_re):
            m.d.comb += [self.mem.re.eq(1), self.mem.addr.eq(f_addr)]
        with m.Else():
            m.d.comb += [self.mem.re.eq(load.dram.re), self.mem.we.eq(store.dram.we),
                         self.mem.addr.eq(Mux(store.dram.we, store.dram.addr, load.dram.addr)),
                         self.mem.wdata.eq(store.dram.wdata)]
        for u in (load, store):
            m.d.comb += [u.dram.rdata.eq(self.mem.rdata), u.dram.ready.eq(self.mem.ready & ~f_re)]

        # ---- hazards between the instruction in dispatch and the ones running ----
        op = {name: dec.op[op_index(name)] for name in units}
        unit_busy = Signal()
        port_hazard = Signal()
        data_hazard = Signal()
        m.d.comb += unit_busy.eq(Cat(op[n] & u.busy for n, u in units.items()).any())
        if cfg.overlap:
            # What dispatch waits for is registered in check's last cycle, a register per
            # hazard kind and busy signal: whether the instruction (its op) meets an
            # extent of that unit's running instruction. The instruction's extents
            # (chk.extents, registered the cycle before) and the running units' change
            # only at a dispatch, so the register holds for every dispatch cycle, and
            # dispatch only ANDs each with its busy signal.
            blocks = {}                      # (kind, busy signal's name) -> (busy, terms)
            for new in units:
                for e in extents_of(chk.extents, isa.BY_NAME[new], cfg):
                    for other, unit in units.items():
                        if other == new:
                            continue
                        for k, f in enumerate(running[other]):
                            if other == "GEMM" and k in drains:
                                # this extent counts while the array drains, or while the
                                # unit is busy where the running GEMM writes it
                                lives = [("gemm_draining", gemm.draining, drains[k], Const(1)),
                                         ("gemm", gemm.busy, dataclasses.replace(f, when=Const(1)), f.when)]
                            else:
                                lives = [(other.lower(), unit.busy, f, Const(1))]
                            for name, busy, g, when in lives:
                                h = isa.hazard(e, g)
                                if h is not None:
                                    blocks.setdefault((h[0], name), (busy, []))[1].append(
                                        op[new] & h[1] & when)
            terms = {"port": [], "data": []}
            for (kind, name), (busy, meets) in blocks.items():
                block = Signal(name=f"{kind}_{name}")
                m.d.sync += block.eq(Cat(*meets).any())
                terms[kind].append(busy & block)
            m.d.comb += [port_hazard.eq(Cat(*terms["port"]).any()),
                         data_hazard.eq(Cat(*terms["data"]).any())]
        all_idle = Signal()
        m.d.comb += [self.trace.busy.eq(Cat(u.busy | (gemm.draining if u is gemm else 0)
                                            for u in units.values())),
                     all_idle.eq(~self.trace.busy.any())]
        # isa.unsupported: a POST slope where the config leaves the multipliers out
        unsupported = Signal()
        if not cfg.leaky_relu:
            post_slope = args_of(dec.fields, "POST").slope
            m.d.comb += unsupported.eq(dec.op[op_index("POST")] & (
                post_slope != isa.BY_NAME["POST"].field("slope").default))
        stops = Signal()
        m.d.comb += stops.eq(~dec.legal | unsupported | ~chk.in_range | dec.op[op_index("END")])

        # ---- control ----
        pc = Signal(PC_BITS)
        k = Signal(range(max(2, N + 1)))
        f_valid = Signal()                   # a fetch read was accepted last cycle
        m.d.sync += f_valid.eq(f_re & self.mem.ready)
        with m.If(f_valid):
            m.d.sync += ir.eq(Cat(ir[B:], self.mem.rdata))
        # f_addr = pc + k, a register of its own: no adder before the DRAM port's address
        m.d.comb += self.pc.eq(pc)

        m.d.comb += self.busy.eq(0)
        cycles = Signal(RUN_BITS)
        macs = Signal(RUN_BITS + (R * C - 1).bit_length())
        m.d.comb += [self.cycles.eq(cycles), self.macs.eq(macs)]
        with m.If(self.busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(gemm.vector):
            m.d.sync += macs.eq(macs + R * C)

        # ---- performance counters (hwq/arch/perf.py) ----
        # without overlap nothing waits in dispatch: those counters stay 0, and their
        # adders are ~5% of the iCE40 that runs that way
        never = ("cycles", "macs") + (() if cfg.overlap else ("stall_unit", "stall_port", "stall_data"))
        count = {name: Signal(RUN_BITS, name=f"perf_{name}") for name in COUNTERS
                 if name not in never}
        front = {name: Signal(name=f"in_{name}") for name in
                 ("fetch", "stall_unit", "stall_port", "stall_data", "stall_idle")}
        m.d.comb += [self.perf.cycles.eq(self.cycles), self.perf.macs.eq(self.macs)]
        for name, sig in count.items():
            m.d.comb += getattr(self.perf, name).eq(sig)
        inc = {"instructions": self.trace.issue,
               "stall_mem": (self.mem.re | self.mem.we) & ~self.mem.ready,
               **front, **{UNIT_OF_OP[n]: u.busy for n, u in units.items()}}
        with m.If(self.start & ~self.busy):
            m.d.sync += [sig.eq(0) for sig in count.values()]
        with m.Else():
            for name, sig in count.items():
                with m.If(inc[name]):
                    m.d.sync += sig.eq(sig + 1)

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(self.start_pc), k.eq(0), f_addr.eq(self.start_pc),
                                 self.done.eq(0),
                                 self.status.eq(isa.STATUS["ok"]),
                                 cycles.eq(0), macs.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                go = Const(1) if cfg.overlap else all_idle
                m.d.comb += [f_re.eq(go), front["fetch"].eq(go), front["stall_idle"].eq(~go)]
                with m.If(go & self.mem.ready):
                    m.d.sync += [k.eq(k + 1), f_addr.eq(f_addr + 1)]
                    with m.If(k == N - 1):
                        m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += [self.busy.eq(1), front["fetch"].eq(1)]
                with m.If(f_valid):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), front["fetch"].eq(1), chk.run.eq(1)]
                with m.If(chk.last):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += self.busy.eq(1)
                # the next fetch's counters, in every dispatch cycle: only the pc waits
                # for the dispatch decision (the end of the hazard logic)
                m.d.sync += [k.eq(0), f_addr.eq(pc + N)]
                with m.If(stops):
                    with m.If(all_idle):
                        m.d.comb += [self.trace.issue.eq(1), front["fetch"].eq(1)]
                        status = Mux(~dec.legal, isa.STATUS["illegal_opcode"],
                                     Mux(unsupported, isa.STATUS["unsupported"],
                                         Mux(~chk.in_range, isa.STATUS["address_range"],
                                             isa.STATUS["ok"])))
                        m.d.sync += [self.done.eq(1), self.status.eq(status)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += front["stall_idle"].eq(1)
                with m.Elif(unit_busy):
                    m.d.comb += front["stall_unit"].eq(1)
                with m.Elif(port_hazard):
                    m.d.comb += front["stall_port"].eq(1)
                with m.Elif(data_hazard):
                    m.d.comb += front["stall_data"].eq(1)
                with m.Else():
                    m.d.comb += [self.trace.issue.eq(1), front["fetch"].eq(1)]
                    for name, unit in units.items():
                        m.d.comb += unit.start.eq(op[name])
                    m.d.sync += pc.eq(pc + N)
                    m.next = "FETCH"
        return m
