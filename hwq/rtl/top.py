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
instruction's fields (hwq/rtl/ports.py held_args) and the scoreboard one of its extents
(for the hazard checks), both taken in every cycle the unit is idle (ports.hold), the
dispatch's among them. hwq/sim/cycles.py is the cycle model of all this.

The front end is this module's; the blocks it connects are components of their own:
the units, BufferCrossbar (hwq/rtl/buffers.py: the buffers, and which unit drives each
of their ports), Scoreboard (hwq/rtl/scoreboard.py: the hazards, and which units are
busy), DramArbiter (hwq/rtl/dma.py: the DRAM port) and PerfCounters (hwq/rtl/perf.py).
The deliberately broken accelerators the tests use are subclasses (hwq/rtl/faults.py).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.arch.perf import COUNTER_BITS, UNIT_OF_OP
from hwq.rtl.buffers import UNIT_PORTS, BufferCrossbar, WriteTrace, member
from hwq.rtl.check import RangeCheck
from hwq.rtl.decode import Decoder, args_of, op_index
from hwq.rtl.dma import DramArbiter, LoadUnit, StoreUnit, dram_addr_bits
from hwq.rtl.gemm import GemmUnit
from hwq.rtl.perf import PerfCounters, perf_layout
from hwq.rtl.pool import PoolUnit
from hwq.rtl.ports import UNITS, dram_port
from hwq.rtl.post import PostUnit
from hwq.rtl.scoreboard import Scoreboard

STATUS_BITS = 8
PC_BITS = isa.DRAM_ADDR_BITS


class TraceSignature(wiring.Signature):
    """The `trace` port: instruction issue, the units busy and every buffer's write port."""

    def __init__(self, cfg: HwConfig):
        super().__init__({"issue": Out(1), "busy": Out(len(UNITS)), **WriteTrace(cfg).members})


class Accelerator(wiring.Component):
    # the execution units, in UNITS order (hwq/rtl/faults.py replaces one in a subclass)
    unit_classes = dict(zip(UNITS, (LoadUnit, StoreUnit, GemmUnit, PostUnit, PoolUnit)))

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
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
            "mem": Out(dram_port(cfg, self.A)),
            "perf": Out(perf_layout()),
            "trace": Out(TraceSignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        B, N = self.B, cfg.instr_words
        m.submodules.decoder = dec = Decoder()
        m.submodules.check = chk = RangeCheck(cfg)
        units = {name: cls(cfg) for name, cls in self.unit_classes.items()}
        for name, unit in units.items():
            m.submodules[UNIT_OF_OP[name]] = unit
        load, gemm = units["LOAD"], units["GEMM"]
        m.submodules.buffers = buffers = BufferCrossbar(cfg)
        m.submodules.scoreboard = scoreboard = Scoreboard(cfg)
        m.submodules.dram = dram = DramArbiter(self.A, B, cfg.dram_reads)
        m.submodules.counters = counters = PerfCounters(cfg)

        # ---- the instruction register, decoded, to the check, the units and the
        # scoreboard ----
        ir = Signal(isa.INSTR_BITS)
        op = {name: dec.op[op_index(name)] for name in units}
        m.d.comb += [dec.word.eq(ir), chk.fields.eq(dec.fields), chk.op.eq(dec.op)]
        for name, unit in units.items():
            m.d.comb += unit.args.eq(args_of(dec.fields, name))   # units keep what they need
        busy = Cat(unit.busy for unit in units.values())
        m.d.comb += [scoreboard.op.eq(dec.op), scoreboard.extents.eq(chk.extents),
                     scoreboard.busy.eq(busy), scoreboard.draining.eq(gemm.draining),
                     self.trace.busy.eq(scoreboard.active)]

        # ---- the units' ports: to the buffers, to DRAM ----
        for unit, port in UNIT_PORTS:
            connect(m, getattr(units[unit], port), getattr(buffers, member(unit, port)))
        m.d.comb += [buffers.busy.eq(busy), buffers.draining.eq(gemm.draining),
                     buffers.load_target.eq(load.target)]
        m.d.comb += [getattr(self.trace, name).eq(getattr(buffers.trace, name))
                     for name in buffers.trace.signature.members]
        connect(m, dram.load, load.dram)
        connect(m, dram.store, units["STORE"].dram)
        connect(m, dram.mem, flipped(self.mem))

        # ---- performance counters (the front end's five: in the FSM below) ----
        events = counters.events
        m.d.comb += [counters.clear.eq(self.start & ~self.busy),
                     events.cycles.eq(self.busy),
                     events.instructions.eq(self.trace.issue),
                     events.macs.eq(gemm.vector),
                     events.stall_mem.eq((self.mem.re | self.mem.we) & ~self.mem.ready),
                     *(getattr(events, UNIT_OF_OP[n]).eq(u.busy) for n, u in units.items()),
                     self.perf.eq(counters.perf),
                     self.cycles.eq(counters.perf.cycles), self.macs.eq(counters.perf.macs)]

        # isa.unsupported: a POST slope where the config leaves the multipliers out
        unsupported = Signal()
        if not cfg.leaky_relu:
            post_slope = args_of(dec.fields, "POST").slope
            m.d.comb += unsupported.eq(op["POST"] & (
                post_slope != isa.BY_NAME["POST"].field("slope").default))
        stops = Signal()
        m.d.comb += stops.eq(~dec.legal | unsupported | ~chk.in_range | dec.op[op_index("END")])

        # ---- front end ----
        pc = Signal(PC_BITS)
        k = Signal(range(max(2, N + 1)))
        # the fetch's address pc + k, a register of its own: no adder before the DRAM port
        f_addr = Signal(self.A)
        f_valid = Signal()                   # a fetch read was accepted last cycle
        # in FETCH, as a register of its own: LOAD's and STORE's `ready` is the port's
        # without the fetch's request, and a decode of the FSM state ran on through it into
        # STORE's counter enables (the ECP5-85F's longest path)
        fetching = Signal()
        go = Const(1) if cfg.overlap else scoreboard.all_idle
        m.d.comb += [dram.fetch.addr.eq(f_addr), dram.fetch.re.eq(fetching & go),
                     self.pc.eq(pc), self.busy.eq(0)]
        if cfg.dram_reads > 1:
            # the words come back when `rvalid` says; the instruction is in once N have
            got = Signal(range(max(2, N + 1)))
            m.d.comb += f_valid.eq(dram.fetch.rvalid)
            with m.If(f_valid):
                m.d.sync += got.eq(Mux(got == N - 1, 0, got + 1))
            fetched = f_valid & (got == N - 1)
        else:
            m.d.sync += f_valid.eq(dram.fetch.re & dram.fetch.ready)
            fetched = f_valid
        with m.If(f_valid):
            m.d.sync += ir.eq(Cat(ir[B:], dram.fetch.rdata))

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(self.start_pc), k.eq(0), f_addr.eq(self.start_pc),
                                 self.done.eq(0),
                                 self.status.eq(isa.STATUS["ok"]), fetching.eq(1)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                m.d.comb += [events.fetch.eq(go), events.stall_idle.eq(~go)]
                with m.If(go & dram.fetch.ready):
                    m.d.sync += [k.eq(k + 1), f_addr.eq(f_addr + 1)]
                    with m.If(k == N - 1):
                        m.d.sync += fetching.eq(0)
                        m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += [self.busy.eq(1), events.fetch.eq(1)]
                with m.If(fetched):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), events.fetch.eq(1), chk.run.eq(1)]
                with m.If(chk.last):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += self.busy.eq(1)
                # the next fetch's counters, in every dispatch cycle: only the pc waits
                # for the dispatch decision (the end of the hazard logic)
                m.d.sync += [k.eq(0), f_addr.eq(pc + N)]
                with m.If(stops):
                    with m.If(scoreboard.all_idle):
                        m.d.comb += [self.trace.issue.eq(1), events.fetch.eq(1)]
                        status = Mux(~dec.legal, isa.STATUS["illegal_opcode"],
                                     Mux(unsupported, isa.STATUS["unsupported"],
                                         Mux(~chk.in_range, isa.STATUS["address_range"],
                                             isa.STATUS["ok"])))
                        m.d.sync += [self.done.eq(1), self.status.eq(status)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += events.stall_idle.eq(1)
                with m.Elif(scoreboard.unit_busy):
                    m.d.comb += events.stall_unit.eq(1)
                with m.Elif(scoreboard.port_hazard):
                    m.d.comb += events.stall_port.eq(1)
                with m.Elif(scoreboard.data_hazard):
                    m.d.comb += events.stall_data.eq(1)
                with m.Else():
                    m.d.comb += [self.trace.issue.eq(1), events.fetch.eq(1)]
                    for name, unit in units.items():
                        m.d.comb += unit.start.eq(op[name])
                    m.d.sync += [pc.eq(pc + N), fetching.eq(1)]
                    m.next = "FETCH"
        return m
