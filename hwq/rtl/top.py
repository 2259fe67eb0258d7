"""The accelerator: fetch, decode, dispatch to one execution unit at a time.

Ports (Verilog names in brackets):
  start [start]           pulse while idle: run from start_pc
  start_pc [start_pc]     DRAM word address of the first instruction
  done [done]             level: high from the stop until the next start
  busy [busy]             high while running (the cycle counter counts these cycles)
  status [status]         isa.STATUS code of the last stop
  pc [pc]                 word address of the current / stopping instruction
  cycles [cycles]         cycles of the current / last run
  macs [macs]             vectors streamed x rows x cols in the current / last run
  mem [mem__*]            the DRAM port (hwq/rtl/ports.py: DramPort protocol)
  perf [perf]             the performance counters of the current / last run
                          (hwq/rtl/perf.py; cycles and macs repeat the ports above)
  trace [trace__*]        for differential testing: `retire` pulses in the last cycle of
                          every instruction, and each buffer's write port is mirrored
                          (`<buf>_addr`, `<buf>_en`, `<buf>_data`); nothing reads them

Per instruction: FETCH issues the instr_words reads (one a cycle), FETCH_WAIT takes the
last word, CHECK computes in CHECK_CYCLES whether the instruction's extents fit the
memories (see hwq/rtl/check.py), DISPATCH decodes the instruction register (END, illegal opcodes and
out-of-range instructions stop here) and starts the unit, EXEC waits for the unit's
done; the next fetch begins the cycle after.

`fault` builds a deliberately broken variant for the tests that prove the differential
checks catch a bug: "post_round" makes POST's half_up rounding truncate. Units never overlap yet; each owns its buffer ports while it runs, and the ports
are multiplexed by which unit is driving them.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwq.compiler import isa
from hwq.config import HwConfig
from hwq.rtl.check import RangeCheck
from hwq.rtl.decode import Decoder, args_of, op_index
from hwq.rtl.dma import LoadUnit, StoreUnit, dram_addr_bits
from hwq.rtl.gemm import GemmUnit
from hwq.rtl.pe import ACC_BITS
from hwq.rtl.perf import COUNTER_BITS, COUNTERS, RUN_BITS, UNIT_OF_OP, perf_layout
from hwq.rtl.pool import PoolUnit
from hwq.rtl.ports import DramPort
from hwq.rtl.post import PostUnit

STATUS_BITS = 8
PC_BITS = isa.DRAM_ADDR_BITS
FAULTS = ("post_round",)
BUFFER_BITS = {"ibuf": lambda cfg: 8 * cfg.rows, "wbuf": lambda cfg: 8 * cfg.cols,
               "bbuf": lambda cfg: ACC_BITS * cfg.cols, "abuf": lambda cfg: ACC_BITS * cfg.cols,
               "obuf": lambda cfg: 8 * cfg.cols}


def write_lanes(cfg: HwConfig, buf: str) -> int:
    """Write-enable bits of a buffer: one per bus word of an entry (abuf: one)."""
    return 1 if buf == "abuf" else cfg.entry_words(buf)


class TraceSignature(wiring.Signature):
    """The `trace` port: instruction retire and every buffer's write port."""

    def __init__(self, cfg: HwConfig):
        members = {"retire": Out(1)}
        for b in isa.BUFFERS:
            members[f"{b}_addr"] = Out(isa.SRAM_ADDR_BITS)
            members[f"{b}_en"] = Out(write_lanes(cfg, b))
            members[f"{b}_data"] = Out(BUFFER_BITS[b](cfg))
        super().__init__(members)


def _mux_write(m, port, sources):
    """Drive a memory write port from whichever source enables a write."""
    for k, (addr, en, data) in enumerate(sources):
        cond = en.any()
        with (m.If if k == 0 else m.Elif)(cond):
            m.d.comb += [port.addr.eq(addr), port.en.eq(en), port.data.eq(data)]


def _mux_read(m, port, sources):
    """Drive a synchronous read port from whichever source enables a read; with no read
    the port is disabled, so its data holds (a ReadPort's `en` defaults to 1)."""
    m.d.comb += port.en.eq(0)
    for k, (addr, en) in enumerate(sources):
        with (m.If if k == 0 else m.Elif)(en):
            m.d.comb += [port.addr.eq(addr), port.en.eq(1)]


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
            rp[name] = mems[name].read_port(
                transparent_for=(wp[name],) if name == "obuf" else ())
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
        units = {"LOAD": load, "STORE": store, "GEMM": gemm, "POST": post, "MAXPOOL": pool}

        ir = Signal(isa.INSTR_BITS)
        m.d.comb += [dec.word.eq(ir), chk.fields.eq(dec.fields), chk.op.eq(dec.op)]
        for name, unit in units.items():
            m.d.comb += unit.args.eq(args_of(dec.fields, name))

        # LOAD -> ibuf / wbuf / bbuf / obuf (by its `buf` field)
        load_wr = {}
        for code, t in enumerate(isa.LOAD_TARGETS):
            e = cfg.entry_words(t)
            sel = load.args.buf == code
            load_wr[t] = (load.wr.addr, load.wr.en[:e] & sel.replicate(e), load.wr.data[:e * B])
        _mux_write(m, wp["ibuf"], [load_wr["ibuf"]])
        _mux_write(m, wp["wbuf"], [load_wr["wbuf"]])
        _mux_write(m, wp["bbuf"], [load_wr["bbuf"]])
        ew_o = cfg.entry_words("obuf")
        _mux_write(m, wp["obuf"], [load_wr["obuf"],
                                   (post.obuf.addr, post.obuf.en.replicate(ew_o), post.obuf.data),
                                   (pool.wr.addr, pool.wr.en.replicate(ew_o), pool.wr.data)])
        _mux_write(m, wp["abuf"], [(gemm.abuf_wr.addr, gemm.abuf_wr.en, gemm.abuf_wr.data)])

        _mux_read(m, rp["ibuf"], [(gemm.ibuf.addr, gemm.ibuf.en)])
        _mux_read(m, rp["wbuf"], [(gemm.wbuf.addr, gemm.wbuf.en)])
        _mux_read(m, rp["bbuf"], [(post.bbuf.addr, post.bbuf.en)])
        _mux_read(m, rp["abuf"], [(gemm.abuf_rd.addr, gemm.abuf_rd.en),
                                  (post.abuf.addr, post.abuf.en)])
        _mux_read(m, rp["obuf"], [(store.rd.addr, store.rd.en), (pool.rd.addr, pool.rd.en)])
        m.d.comb += [
            gemm.ibuf.data.eq(rp["ibuf"].data), gemm.wbuf.data.eq(rp["wbuf"].data),
            gemm.abuf_rd.data.eq(rp["abuf"].data), post.abuf.data.eq(rp["abuf"].data),
            post.bbuf.data.eq(rp["bbuf"].data),
            store.rd.data.eq(rp["obuf"].data), pool.rd.data.eq(rp["obuf"].data),
        ]

        # ---- DRAM port: fetch, LOAD, STORE ----
        f_re = Signal()
        f_addr = Signal(self.A)
        with m.If(f_re):
            m.d.comb += [self.mem.re.eq(1), self.mem.addr.eq(f_addr)]
        with m.Elif(load.dram.re):
            m.d.comb += [self.mem.re.eq(1), self.mem.addr.eq(load.dram.addr)]
        with m.Elif(store.dram.we):
            m.d.comb += [self.mem.we.eq(1), self.mem.addr.eq(store.dram.addr),
                         self.mem.wdata.eq(store.dram.wdata)]
        for u in (load, store):
            m.d.comb += [u.dram.rdata.eq(self.mem.rdata), u.dram.ready.eq(self.mem.ready)]

        # ---- control ----
        pc = Signal(PC_BITS)
        k = Signal(range(max(2, N + 1)))
        f_valid = Signal()                   # a fetch read was accepted last cycle
        m.d.sync += f_valid.eq(f_re & self.mem.ready)
        with m.If(f_valid):
            m.d.sync += ir.eq(Cat(ir[B:], self.mem.rdata))
        m.d.comb += [self.pc.eq(pc), f_addr.eq(pc + k)]

        m.d.comb += self.busy.eq(0)
        cycles = Signal(RUN_BITS)
        macs = Signal(RUN_BITS + (R * C - 1).bit_length())
        m.d.comb += [self.cycles.eq(cycles), self.macs.eq(macs)]
        with m.If(self.busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(gemm.vector):
            m.d.sync += macs.eq(macs + R * C)

        unit_done = Signal()
        m.d.comb += unit_done.eq(Cat(u.done for u in units.values()).any())
        legal = {name: dec.op[op_index(name)] for name in units}
        running = Signal(len(units))         # one-hot: the unit started by the last dispatch

        # ---- performance counters (hwq/rtl/perf.py) ----
        count = {name: Signal(RUN_BITS, name=f"perf_{name}") for name in COUNTERS
                 if name not in ("cycles", "macs")}
        in_fetch = Signal()                  # FETCH .. DISPATCH
        m.d.comb += [self.perf.cycles.eq(self.cycles), self.perf.macs.eq(self.macs)]
        for name, sig in count.items():
            m.d.comb += getattr(self.perf, name).eq(sig)
        inc = {"instructions": self.trace.retire, "fetch": in_fetch,
               "stall_mem": (self.mem.re | self.mem.we) & ~self.mem.ready,
               **{UNIT_OF_OP[op]: ~in_fetch & self.busy & running[k]
                  for k, op in enumerate(units)}}
        with m.If(self.start & ~self.busy):
            m.d.sync += [sig.eq(0) for sig in count.values()]
        with m.Else():
            for name, sig in count.items():
                with m.If(inc[name]):
                    m.d.sync += sig.eq(sig + 1)

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(self.start_pc), k.eq(0), self.done.eq(0),
                                 self.status.eq(isa.STATUS["ok"]),
                                 cycles.eq(0), macs.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += [self.busy.eq(1), in_fetch.eq(1), f_re.eq(1)]
                with m.If(self.mem.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == N - 1):
                        m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += [self.busy.eq(1), in_fetch.eq(1)]
                with m.If(f_valid):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), in_fetch.eq(1), chk.run.eq(1)]
                with m.If(chk.last):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += [self.busy.eq(1), in_fetch.eq(1)]
                with m.If(~dec.legal):
                    m.d.comb += self.trace.retire.eq(1)
                    m.d.sync += [self.done.eq(1), self.status.eq(isa.STATUS["illegal_opcode"])]
                    m.next = "IDLE"
                with m.Elif(~chk.in_range):
                    m.d.comb += self.trace.retire.eq(1)
                    m.d.sync += [self.done.eq(1), self.status.eq(isa.STATUS["address_range"])]
                    m.next = "IDLE"
                with m.Elif(dec.op[op_index("END")]):
                    m.d.comb += self.trace.retire.eq(1)
                    m.d.sync += [self.done.eq(1), self.status.eq(isa.STATUS["ok"])]
                    m.next = "IDLE"
                with m.Else():
                    for name, unit in units.items():
                        m.d.comb += unit.start.eq(legal[name])
                    m.d.sync += running.eq(Cat(legal[name] for name in units))
                    m.next = "EXEC"
            with m.State("EXEC"):
                m.d.comb += [self.busy.eq(1), self.trace.retire.eq(unit_done)]
                with m.If(unit_done):
                    m.d.sync += [pc.eq(pc + N), k.eq(0)]
                    m.next = "FETCH"
        return m
