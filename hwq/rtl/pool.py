"""MAXPOOL: sequential window reads from obuf, lane-parallel max of int8 or (`unsigned`)
uint8 bytes.

Timeline (cycle 0 = start, P = out_h * out_w, K = k_h * k_w): cycles 1..P*K read one
window element each (output pixels in order, each window row by row); the element's data
arrives a cycle later and -- with o = hwq.arch.timing.read_regs(cfg) = 1, after a register
-- is folded into the running max o cycles after that; the last element of a window
writes obuf[dst + p] o cycles after that (from the running max's register), while later
reads go out -- a read issued up to 2 * o cycles before the write of the entry it reads,
or in its cycle, is forwarded the written value, so a later read sees an earlier write,
as the ISA requires. Done in cycle P*K + 1 + 2 * o (with the last write).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.decode import args_layout
from hwq.rtl.ports import SramRead, SramWrite, held_args, hold, unit_members
from hwq.arch.timing import read_regs


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
        step = sum(Mux(a0.stride[b], a0.in_w << b, 0) for b in range(len(a0.stride)))
        # the last value of each counter
        k_w1, k_h1, out_w1, out_h1 = (Signal.like(f, name=n) for f, n in (
            (a.k_w, "k_w1"), (a.k_h, "k_h1"), (a.out_w, "out_w1"), (a.out_h, "out_h1")))
        ends = [(row_step, step), (k_w1, a0.k_w - 1), (k_h1, a0.k_h - 1),
                (out_w1, a0.out_w - 1), (out_h1, a0.out_h - 1)]
        # held like the args (ports.hold): these sums ran on into the address counters
        hold(m, self.busy, self.cfg, ends)

        # stage s: the cycle after a read (its data on the port); with `o` (read_regs),
        # registered into stage u, which folds it into the running max and writes the
        # window's result; without, stage s does that
        o = read_regs(self.cfg)
        tail = Signal(range(3))         # DRAIN's cycles less 1: the last read's data
                                        # register and its write (2 * o)
        s_valid, s_first, s_last = Signal(), Signal(), Signal()
        s_dst, s_addr = Signal(A), Signal(A)
        m.d.sync += s_valid.eq(0)
        lay = data.ArrayLayout(signed(8), C)
        mreg = Signal(lay)
        mx = Signal(lay)
        if o:
            u_valid, u_first, u_last = Signal(), Signal(), Signal()
            u_dst = Signal(A)
            m.d.sync += [u_valid.eq(s_valid), u_first.eq(s_first), u_last.eq(s_last),
                         u_dst.eq(s_dst)]
            # obuf's read data is registered before the compare, and the window's result
            # is written from a register the cycle after (stage w): block RAM ports at
            # either end of the compare were critical paths. A read sees the writes before
            # it (the ISA's order): the memory has those up to the cycle before the read;
            # those in its cycle and the next are forwarded into the data's register, the
            # one in the cycle after that -- stage w's, of the window that ended just
            # before -- into the compare (the later write first)
            rdata = Signal(8 * C)
            f1, d1, f3 = Signal(), Signal(8 * C), Signal()
            f2 = self.wr.en & s_valid & (self.wr.addr == s_addr)
            m.d.sync += [f1.eq(self.wr.en & self.rd.en & (self.wr.addr == self.rd.addr)),
                         d1.eq(self.wr.data),
                         rdata.eq(Mux(f2, self.wr.data, Mux(f1, d1, self.rd.data))),
                         f3.eq(u_valid & u_last & s_valid & (u_dst == s_addr))]
            din = lay(Mux(f3, mreg, rdata))
            w_en, w_dst = Signal(), Signal(A)
            m.d.sync += [w_en.eq(u_valid & u_last), w_dst.eq(u_dst)]
            m.d.comb += [self.wr.en.eq(w_en), self.wr.addr.eq(w_dst), self.wr.data.eq(mreg)]
        else:
            u_valid, u_first, u_last, u_dst = s_valid, s_first, s_last, s_dst
            # a read of the entry written in the same cycle gets the new value (the ISA's
            # order): forwarded here, so obuf's read port needs no bypass of its write port
            fwd = Signal()
            fwd_data = Signal(8 * C)
            m.d.sync += [fwd.eq(self.wr.en & self.rd.en & (self.wr.addr == self.rd.addr)),
                         fwd_data.eq(self.wr.data)]
            din = lay(Mux(fwd, fwd_data, self.rd.data))
            m.d.comb += [self.wr.en.eq(u_valid & u_last), self.wr.addr.eq(u_dst),
                         self.wr.data.eq(mx)]
        # bytes compared as 9-bit signed values: extended by their sign, or by zero when
        # the entries are uint8 (the held args stay until the last write)
        ext = lambda v: Cat(v, ~a.unsigned & v[7]).as_signed()   # noqa: E731
        for c in range(C):
            m.d.comb += mx[c].eq(Mux(u_first | (ext(din[c]) > ext(mreg[c])), din[c], mreg[c]))
        with m.If(u_valid):
            m.d.sync += mreg.eq(mx)

        with m.FSM(name="pool") as fsm:
            with m.State("IDLE"):
                # the counters start over in every idle cycle: kept out of their enables
                m.d.sync += [oy.eq(0), ox.eq(0), ky.eq(0), kx.eq(0), rowb.eq(a0.src),
                             pixb.eq(a0.src), winr.eq(a0.src), dptr.eq(a0.dst), tail.eq(2 * o)]
                with m.If(self.start):
                    with m.If((a0.out_h == 0) | (a0.out_w == 0) | (a0.k_h == 0) | (a0.k_w == 0)):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.rd.en.eq(1), self.rd.addr.eq(winr + kx)]
                m.d.sync += [s_valid.eq(1), s_first.eq((ky == 0) & (kx == 0)),
                             s_last.eq((ky == k_h1) & (kx == k_w1)), s_dst.eq(dptr),
                             s_addr.eq(self.rd.addr)]
                with m.If(kx != k_w1):
                    m.d.sync += kx.eq(kx + 1)
                with m.Else():
                    m.d.sync += kx.eq(0)
                    with m.If(ky != k_h1):
                        m.d.sync += [ky.eq(ky + 1), winr.eq(winr + a.in_w)]
                    with m.Else():
                        m.d.sync += [ky.eq(0), dptr.eq(dptr + 1)]
                        with m.If(ox != out_w1):
                            m.d.sync += [ox.eq(ox + 1), pixb.eq(pixb + a.stride),
                                         winr.eq(pixb + a.stride)]
                        with m.Else():
                            m.d.sync += [ox.eq(0), oy.eq(oy + 1), rowb.eq(rowb + row_step),
                                         pixb.eq(rowb + row_step), winr.eq(rowb + row_step)]
                            with m.If(oy == out_h1):
                                m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += tail.eq(tail - 1)
                with m.If(tail == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
