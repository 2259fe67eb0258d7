"""MAXPOOL: sequential window reads from obuf, lane-parallel int8 max.

Timeline (cycle 0 = start, P = out_h * out_w, K = k_h * k_w): cycles 1..P*K read one
window element each (output pixels in order, each window row by row); the element's data
arrives a cycle later and -- with o = hwq.sim.cycles.read_regs(cfg) = 1, after a register
-- is folded into the running max o cycles after that; the last element of a window
writes obuf[dst + p] in that same cycle, while later reads go out -- a read issued in the
cycle of a write (o = 1: or the cycle before) of the entry written is forwarded the
written value, so a later read sees an earlier write, as the ISA requires. Done in cycle
P*K + 1 + o (with the last write).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring

from hwq.compiler import isa
from hwq.config import HwConfig
from hwq.rtl.decode import args_layout
from hwq.rtl.ports import SramRead, SramWrite, held_args, unit_members
from hwq.sim.cycles import read_regs


class PoolUnit(wiring.Component):
    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        A = isa.SRAM_ADDR_BITS
        super().__init__({
            **unit_members(args_layout("MAXPOOL")),
            "rd": wiring.Out(SramRead(A, 8 * cfg.cols)),
            "wr": wiring.Out(SramWrite(A, 8 * cfg.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        a0, a, C = self.args, held_args(m, self, self.cfg), self.cfg.cols
        A = isa.SRAM_ADDR_BITS
        oy, ox = Signal.like(a.out_h), Signal.like(a.out_w)
        ky, kx = Signal.like(a.k_h), Signal.like(a.k_w)
        rowb, pixb, winr, dptr = (Signal(A, name=n) for n in ("rowb", "pixb", "winr", "dptr"))
        # stride * in_w by shift-and-add over the 4-bit stride: a few adders instead of
        # a DSP block (the array needs every one a small FPGA has)
        row_step = Signal(A)
        m.d.comb += row_step.eq(sum(Mux(a.stride[b], a.in_w << b, 0)
                                    for b in range(len(a.stride))))

        # stage s: the cycle after a read (its data on the port); with `o` (read_regs),
        # registered into stage u, which folds it into the running max and writes the
        # window's result; without, stage s does that
        o = read_regs(self.cfg)
        s_valid, s_first, s_last = Signal(), Signal(), Signal()
        s_dst, s_addr = Signal(A), Signal(A)
        m.d.sync += s_valid.eq(0)
        lay = data.ArrayLayout(signed(8), C)
        if o:
            u_valid, u_first, u_last = Signal(), Signal(), Signal()
            u_dst = Signal(A)
            m.d.sync += [u_valid.eq(s_valid), u_first.eq(s_first), u_last.eq(s_last),
                         u_dst.eq(s_dst)]
            # obuf's read data is registered before the compare (a block RAM's output
            # into a comparator was a critical path). A read sees the writes before it
            # (the ISA's order): the memory has those up to the cycle before the read;
            # the writes in the read's cycle and the next one are forwarded here, the
            # later one first
            rdata = Signal(8 * C)
            f1, f1_u, f2 = Signal(), Signal(), Signal()
            d1, d1_u, d2 = Signal(8 * C), Signal(8 * C), Signal(8 * C)
            m.d.sync += [rdata.eq(self.rd.data),
                         f1.eq(self.wr.en & self.rd.en & (self.wr.addr == self.rd.addr)),
                         d1.eq(self.wr.data), f1_u.eq(f1), d1_u.eq(d1),
                         f2.eq(self.wr.en & s_valid & (self.wr.addr == s_addr)),
                         d2.eq(self.wr.data)]
            din = lay(Mux(f2, d2, Mux(f1_u, d1_u, rdata)))
        else:
            u_valid, u_first, u_last, u_dst = s_valid, s_first, s_last, s_dst
            # a read of the entry written in the same cycle gets the new value (the ISA's
            # order): forwarded here, so obuf's read port needs no bypass of its write port
            fwd = Signal()
            fwd_data = Signal(8 * C)
            m.d.sync += [fwd.eq(self.wr.en & self.rd.en & (self.wr.addr == self.rd.addr)),
                         fwd_data.eq(self.wr.data)]
            din = lay(Mux(fwd, fwd_data, self.rd.data))
        mreg = Signal(lay)
        mx = Signal(lay)
        for c in range(C):
            m.d.comb += mx[c].eq(Mux(u_first | (din[c] > mreg[c]), din[c], mreg[c]))
        with m.If(u_valid):
            m.d.sync += mreg.eq(mx)
        m.d.comb += [self.wr.en.eq(u_valid & u_last), self.wr.addr.eq(u_dst),
                     self.wr.data.eq(mx)]

        with m.FSM(name="pool") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [oy.eq(0), ox.eq(0), ky.eq(0), kx.eq(0), rowb.eq(a0.src),
                                 pixb.eq(a0.src), winr.eq(a0.src), dptr.eq(a0.dst)]
                    with m.If((a0.out_h == 0) | (a0.out_w == 0) | (a0.k_h == 0) | (a0.k_w == 0)):
                        m.next = "LAST" if o else "DRAIN"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.rd.en.eq(1), self.rd.addr.eq(winr + kx)]
                m.d.sync += [s_valid.eq(1), s_first.eq((ky == 0) & (kx == 0)),
                             s_last.eq((ky == a.k_h - 1) & (kx == a.k_w - 1)), s_dst.eq(dptr),
                             s_addr.eq(self.rd.addr)]
                with m.If(kx != a.k_w - 1):
                    m.d.sync += kx.eq(kx + 1)
                with m.Else():
                    m.d.sync += kx.eq(0)
                    with m.If(ky != a.k_h - 1):
                        m.d.sync += [ky.eq(ky + 1), winr.eq(winr + a.in_w)]
                    with m.Else():
                        m.d.sync += [ky.eq(0), dptr.eq(dptr + 1)]
                        with m.If(ox != a.out_w - 1):
                            m.d.sync += [ox.eq(ox + 1), pixb.eq(pixb + a.stride),
                                         winr.eq(pixb + a.stride)]
                        with m.Else():
                            m.d.sync += [ox.eq(0), oy.eq(oy + 1), rowb.eq(rowb + row_step),
                                         pixb.eq(rowb + row_step), winr.eq(rowb + row_step)]
                            with m.If(oy == a.out_h - 1):
                                m.next = "LAST" if o else "DRAIN"
            if o:
                with m.State("LAST"):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
