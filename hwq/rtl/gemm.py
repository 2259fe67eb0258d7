"""GEMM: stream input vectors through the weight-stationary array, accumulate in abuf.

Timeline (cycle 0 = start, R = rows, C = cols, V = n_outer * n_inner, L = R + C - 1):
  cycles 1..R      read wbuf[wgt + r]; row r of the array latches it one cycle later
  cycles 2..V+1    read ibuf for vector v (cycle v + 2); it enters the array a cycle later,
                   in time for every row's weight (row r meets it at cycle v + 3 + r)
  cycle  v+2+L     abuf[a_v] read (issued a cycle earlier) + the array's dot products
                   -> abuf[a_v] (or the products alone with reset)
  done in cycle V + 1 + R + C (= the last write; for V = 0 the same count, no writes).
Entries written by one GEMM are distinct (ISA rule), so the read-modify-write pipeline
has no hazard; the unit drains completely before done.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from hwq.compiler import isa
from hwq.config import HwConfig
from hwq.rtl.array import SystolicArray, array_latency
from hwq.rtl.decode import args_layout
from hwq.rtl.pe import ACC_BITS
from hwq.rtl.ports import SramRead, SramWrite, unit_members


class GemmUnit(wiring.Component):
    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        A = isa.SRAM_ADDR_BITS
        super().__init__({
            **unit_members(args_layout("GEMM")),
            "wbuf": Out(SramRead(A, 8 * C)),
            "ibuf": Out(SramRead(A, 8 * R)),
            "abuf_rd": Out(SramRead(A, ACC_BITS * C)),
            "abuf_wr": Out(SramWrite(A, ACC_BITS * C)),
            "vector": Out(1),          # one input vector streamed this cycle (MAC counter)
        })

    def elaborate(self, platform):
        m = Module()
        cfg, a = self.cfg, self.args
        R, C = cfg.rows, cfg.cols
        L = array_latency(R, C)
        m.submodules.array = arr = SystolicArray(R, C)

        # ---- weight preload: R reads, latched one cycle later into row wk_d ----
        wk = Signal(range(R + 1))
        w_active = Signal()
        w_valid = Signal()
        wk_d = Signal(range(R))
        m.d.sync += w_valid.eq(0)
        with m.If(w_active):
            m.d.comb += [self.wbuf.en.eq(1), self.wbuf.addr.eq(a.wgt + wk)]
            m.d.sync += [wk.eq(wk + 1), w_valid.eq(1), wk_d.eq(wk)]
            with m.If(wk == R - 1):
                m.d.sync += w_active.eq(0)
        m.d.comb += [
            arr.w_row.eq(Mux(w_valid, 1 << wk_d, 0)),
            arr.w_data.eq(self.wbuf.data),
            arr.x.eq(self.ibuf.data),
        ]

        # ---- input stream and its valid pipeline ----
        o = Signal.like(a.n_outer)
        i = Signal.like(a.n_inner)
        ibase = Signal(isa.SRAM_ADDR_BITS)
        iaddr = Signal(isa.SRAM_ADDR_BITS)
        x_valid = Signal()
        vpipe = Signal(L)                    # vpipe[j]: x_valid delayed j + 1 cycles
        m.d.sync += [x_valid.eq(self.ibuf.en), vpipe.eq(Cat(x_valid, vpipe[:-1]))]
        rd_issue = vpipe[L - 2]              # the abuf read for the result due next cycle
        wr_valid = vpipe[L - 1]

        # ---- output-side address generator (runs L cycles behind) ----
        o2 = Signal.like(a.n_outer)
        i2 = Signal.like(a.n_inner)
        abase = Signal(isa.SRAM_ADDR_BITS)
        aaddr = Signal(isa.SRAM_ADDR_BITS)
        aaddr_d = Signal(isa.SRAM_ADDR_BITS)
        with m.If(rd_issue):
            m.d.comb += [self.abuf_rd.en.eq(1), self.abuf_rd.addr.eq(aaddr)]
            m.d.sync += aaddr_d.eq(aaddr)
            with m.If(i2 == a.n_inner - 1):
                m.d.sync += [i2.eq(0), o2.eq(o2 + 1), abase.eq(abase + a.acc_so),
                             aaddr.eq(abase + a.acc_so)]
            with m.Else():
                m.d.sync += [i2.eq(i2 + 1), aaddr.eq(aaddr + a.acc_si)]
        old = data.ArrayLayout(signed(ACC_BITS), C)(self.abuf_rd.data)
        new = Signal(data.ArrayLayout(signed(ACC_BITS), C))
        for c in range(C):
            m.d.comb += new[c].eq((Mux(a.reset, 0, old[c]) + arr.y[c])[:ACC_BITS])
        m.d.comb += [self.abuf_wr.en.eq(wr_valid), self.abuf_wr.addr.eq(aaddr_d),
                     self.abuf_wr.data.eq(new)]

        drain = Signal(range(R + C + 1))
        with m.FSM(name="gemm"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [wk.eq(0), w_active.eq(1),
                                 o.eq(0), i.eq(0), ibase.eq(a.inp), iaddr.eq(a.inp),
                                 o2.eq(0), i2.eq(0), abase.eq(a.acc), aaddr.eq(a.acc)]
                    m.next = "PRE"
            with m.State("PRE"):
                with m.If((a.n_outer == 0) | (a.n_inner == 0)):
                    m.d.sync += drain.eq(R + C - 1)
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [self.ibuf.en.eq(1), self.ibuf.addr.eq(iaddr), self.vector.eq(1)]
                with m.If(i == a.n_inner - 1):
                    m.d.sync += [i.eq(0), o.eq(o + 1), ibase.eq(ibase + a.inp_so),
                                 iaddr.eq(ibase + a.inp_so)]
                    with m.If(o == a.n_outer - 1):
                        m.d.sync += drain.eq(R + C - 1)
                        m.next = "DRAIN"
                with m.Else():
                    m.d.sync += [i.eq(i + 1), iaddr.eq(iaddr + a.inp_si)]
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
