"""GEMM: stream input vectors through the weight-stationary array, accumulate in abuf.

GEMMs overlap: the unit takes the next GEMM while the previous one drains through the
array. Its weights go to the array's SHADOW registers and become active with its first
vector (the `swap` tag travels with that vector through the array, pe.py), and each
vector's accumulator address and reset bit travel down a delay line with it, so nothing
on the output side looks at `args` (which by then may be the next GEMM's).

Timeline of one GEMM (cycle 0 = the cycle `start` is taken, R = rows, C = cols,
V = n_outer * n_inner, L = R + C + 1 + m = gemm_latency, m = 1 where the multipliers
register their operands (hwq.arch.timing.mul_regs), O = max(V + 1, R, C)):
  cycle  0          start (taken only while busy is low, ignored otherwise); the args the
                    input side needs are copied (args are only valid in the start cycle)
  cycles 1..R       read wbuf[wgt + r] in cycle r + 1; array SHADOW row r latches it in
                    cycle r + 3 (w_row one-hot, registered). Not for V = 0: it would never swap
                    them in, and its done (cycle O - 1) may come before cycle R.
  cycles 2..V+1     read ibuf for vector v in cycle v + 2 (o outer, i inner); it enters the
                    array in cycle v + 4 (registered), vector 0 tagged swap (row r swaps to
                    the new weights in cycle 4 + r, after its shadow load in cycle r + 3); its
                    accumulator address a_v and reset bit enter the delay line then
  cycle  v+2+L-o    abuf[a_v] read issued (from the delay line); o = 1 where the read
                    data is registered (hwq.arch.timing.read_regs)
  cycle  v+3+L      y of vector v on the array output; abuf[a_v] <= (reset ? 0 : old) + y
  busy              high in cycles 1..O-1, low from cycle O: a new start is taken from
                    cycle O on (S = start of the next GEMM >= O)
  draining          high from the ibuf read of a vector through its abuf write (cycles
                    v+2 .. v+3+L): for a GEMM alone with V >= 1, cycles 2..V+R+C+3.
                    (From the read cycle, not the one after: with V = 1 and R = C = 2,
                    cycle 2 = O is not busy, and busy | draining must not drop there.)
  done              in a cycle where busy | draining and, absent a new start, neither is
                    high next cycle: alone, V >= 1: cycle V+R+C+3 (the last write);
                    V = 0: cycle O-1 = max(R, C) - 1. It may fall in the cycle a new
                    GEMM is started (the start does not cancel it).
  vector            high in the ibuf read cycles (MAC counter)

Why S >= O is safe for the next GEMM (started in cycle S):
  S >= V+1: its first abuf read (S+2+L-o) comes no earlier than this GEMM's last write
            (V+2+L), so a GEMM reading what the previous one wrote (conv taps) sees the
            new value: from the memory, or with o = 1 forwarded from the write in the
            read's cycle. (Within a GEMM the entries are distinct, ISA rule, so no RMW
            hazard.)
  S >= R:   its wbuf reads (S+1..S+R) come after this GEMM's (1..R).
  S >= C:   its shadow row r loads at the end of cycle S+r+3 >= r+C+3, the cycle this
            GEMM's swap tag reaches row r's last column (4+r+C-1), which takes the old
            shadow into its active weight at that same edge.
  Between this GEMM's last ibuf read (V+1) and the next one's first (S+2) the array gets
  S - V bubble cycles: one when S = V + 1 (V + 1 >= R, C), i.e. V of every V + 1 cycles
  stream vectors in a run of back-to-back GEMMs.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.array import SystolicArray, array_latency
from hwq.rtl.decode import args_layout
from hwq.rtl.pe import ACC_BITS
from hwq.rtl.ports import SramRead, SramWrite, held_args, unit_members
from hwq.arch.timing import mul_regs, read_regs


def gemm_latency(cfg: HwConfig) -> int:
    """Cycles from an ibuf read's data to its dot products: the register on the array's
    inputs, then the array."""
    return 1 + array_latency(cfg.rows, cfg.cols, mul_regs(cfg))


class GemmUnit(wiring.Component):
    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        A = isa.SRAM_ADDR_BITS
        members = unit_members(args_layout("GEMM"))
        # busy (a start now would be ignored): from unit_members where it has it
        members.setdefault("busy", Out(1))
        super().__init__({
            **members,
            "wbuf": Out(SramRead(A, 8 * C)),
            "ibuf": Out(SramRead(A, 8 * R)),
            "abuf_rd": Out(SramRead(A, ACC_BITS * C)),
            "abuf_wr": Out(SramWrite(A, ACC_BITS * C)),
            "vector": Out(1),          # one input vector streamed this cycle (MAC counter)
            "draining": Out(1),        # some vector's abuf write is still to come
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        L = gemm_latency(cfg)
        A = isa.SRAM_ADDR_BITS
        m.submodules.array = arr = SystolicArray(R, C, mul_regs=mul_regs(cfg))
        take = Signal()                 # start accepted this cycle
        # with overlap the top's args change in the next GEMM's start cycle, which may be
        # this one's last ibuf read: the input side works from a copy (held_args). Without
        # overlap they hold until every unit is idle.
        ga = held_args(m, self, cfg)

        # ---- weight preload: R reads, latched one cycle later into shadow row wk_d ----
        waddr = Signal(A)
        wk = Signal(range(R + 1))
        w_active = Signal()
        w_valid = Signal()
        wk_d = Signal(range(R))
        m.d.sync += w_valid.eq(0)
        with m.If(w_active):
            m.d.comb += [self.wbuf.en.eq(1), self.wbuf.addr.eq(waddr)]
            m.d.sync += [waddr.eq(waddr + 1), wk.eq(wk + 1), w_valid.eq(1), wk_d.eq(wk)]
            with m.If(wk == R - 1):
                m.d.sync += w_active.eq(0)
        # the array's inputs are registered: the block RAMs' read data goes into
        # registers, not straight into row 0's multipliers (or the shadow weights' muxes).
        # Each byte becomes a 9-bit operand, extended by zero if the GEMM that read it
        # says its inputs are uint8 (inp_unsigned, taken in the read's cycle: the next
        # GEMM's args may be in place by the time its data arrives), else by its sign.
        rd_unsigned = Signal()
        m.d.sync += rd_unsigned.eq(ga.inp_unsigned)
        m.d.sync += [
            arr.w_row.eq(Mux(w_valid, 1 << wk_d, 0)),
            arr.w_data.eq(self.wbuf.data),
            *[arr.x[r].eq(Cat(self.ibuf.data[8 * r:8 * r + 8],
                              ~rd_unsigned & self.ibuf.data[8 * r + 7]).as_signed())
              for r in range(R)],
        ]

        # ---- input side: cycle 1 (pre), then one vector a cycle (streaming) ----
        pre = Signal()
        streaming = Signal()
        o = Signal.like(ga.n_outer)
        i = Signal.like(ga.n_inner)
        ibase = Signal(A)
        iaddr = Signal(A)
        abase = Signal(A)
        aaddr = Signal(A)
        # registered compares (set at the start, updated with i and o), so that `busy`,
        # which the front end's dispatch and fetch logic wait on, is a few gates of
        # registers: nz = V != 0, i_last = (i == n_inner - 1), o_last = (o == n_outer - 1)
        nz, i_last, o_last = Signal(), Signal(), Signal()
        last = i_last & o_last
        m.d.sync += pre.eq(0)
        with m.If(pre & nz):
            m.d.sync += streaming.eq(1)
        with m.If(streaming):
            m.d.comb += [self.ibuf.en.eq(1), self.ibuf.addr.eq(iaddr), self.vector.eq(1)]
            with m.If(i_last):
                m.d.sync += [i.eq(0), o.eq(o + 1),
                             i_last.eq(ga.n_inner == 1), o_last.eq(o + 1 == ga.n_outer - 1),
                             ibase.eq(ibase + ga.inp_so), iaddr.eq(ibase + ga.inp_so),
                             abase.eq(abase + ga.acc_so), aaddr.eq(abase + ga.acc_so)]
                with m.If(o_last):
                    m.d.sync += streaming.eq(0)
            with m.Else():
                m.d.sync += [i.eq(i + 1), i_last.eq(i + 1 == ga.n_inner - 1),
                             iaddr.eq(iaddr + ga.inp_si), aaddr.eq(aaddr + ga.acc_si)]
        # the first vector's swap tag: read in cycle 2, on the array's x in cycle 4
        sw_rd = Signal()
        sw_x = Signal()
        m.d.sync += [sw_rd.eq(pre & nz), sw_x.eq(sw_rd), arr.swap.eq(sw_x)]

        # ---- delay line: (valid, reset, a_v) of the vector read j+1 cycles ago ----
        tag = data.StructLayout({"valid": 1, "reset": 1, "addr": A})
        line = [Signal(tag, name=f"line_{j}") for j in range(L + 1)]
        m.d.sync += [line[0].valid.eq(streaming), line[0].reset.eq(ga.reset),
                     line[0].addr.eq(aaddr)]
        for j in range(1, L + 1):
            m.d.sync += line[j].eq(line[j - 1])
        acc = data.ArrayLayout(signed(ACC_BITS), C)
        new = Signal(acc)
        wr = line[L]                    # the write in cycle v+3+L
        if read_regs(cfg):
            # abuf's read data registered before the adders (a block RAM's output through
            # 32-bit adders into a block RAM's input was a critical path): the read goes
            # out in cycle v+1+L, a cycle early. The entry may be written in that cycle
            # by the previous GEMM's last vector (S = V + 1 above); the port reads the
            # old value, so that write is forwarded. None is later: that write is in
            # cycle V+2+L <= S+1+L. The reset bit zeroes the register, off the adders' path.
            rd, mid = line[L - 2], line[L - 1]
            fwd, fwd_data = Signal(), Signal(acc)
            m.d.sync += [fwd.eq(rd.valid & wr.valid & (rd.addr == wr.addr)),
                         fwd_data.eq(new)]
            old = Signal(acc)
            m.d.sync += old.eq(Mux(mid.reset, 0, Mux(fwd, fwd_data, self.abuf_rd.data)))
        else:
            rd = line[L - 1]            # read issue in cycle v+2+L
            old = Signal(acc)
            m.d.comb += old.eq(Mux(wr.reset, 0, self.abuf_rd.data))
        m.d.comb += [self.abuf_rd.en.eq(rd.valid), self.abuf_rd.addr.eq(rd.addr)]
        for c in range(C):
            m.d.comb += new[c].eq((old[c] + arr.y[c])[:ACC_BITS])
        m.d.comb += [self.abuf_wr.en.eq(wr.valid), self.abuf_wr.addr.eq(wr.addr),
                     self.abuf_wr.data.eq(new)]

        # ---- busy / draining / done ----
        K = max(R, C) - 1               # busy cycles 1..K even when V + 1 < max(R, C)
        kcnt = Signal(range(K + 1))
        dcnt = Signal(range(L + 2))     # cycles of draining left after this one
        # kcnt != 0 and dcnt != 0 in registers of their own, updated with the counters:
        # `busy` and `draining` feed the scoreboard's hazards and so the dispatch decision
        # (the pc's enable and every unit's start), which the counters' compares made
        # the ECP5-85F's longest path
        knz, dnz = Signal(), Signal()
        with m.If(knz):
            m.d.sync += [kcnt.eq(kcnt - 1), knz.eq(kcnt != 1)]
        with m.If(streaming):
            m.d.sync += [dcnt.eq(L + 1), dnz.eq(1)]
        with m.Elif(dnz):
            m.d.sync += [dcnt.eq(dcnt - 1), dnz.eq(dcnt != 1)]
        m.d.comb += [
            self.busy.eq(knz | (pre & nz) | (streaming & ~last)),
            self.draining.eq(streaming | dnz),
        ]
        # busy or draining next cycle (absent a start): a vector read now or next cycle
        # drains then; otherwise only the two counters are left
        more = streaming | (pre & nz) | (kcnt > 1) | (dcnt > 1)
        m.d.comb += self.done.eq((self.busy | self.draining) & ~more)

        # ---- start (last: it overrides the bookkeeping of the GEMM ending now) ----
        # The fields and counters start over in every cycle the unit is free, the
        # start's among them: the start, at the end of the dispatch logic, stays out of
        # their enables, only the state bits take it. What a free unit still does (the
        # last vector's read, the last wbuf read) uses them in that cycle, not after.
        a = self.args
        streams = (a.n_outer != 0) & (a.n_inner != 0)
        with m.If(~self.busy):
            m.d.sync += [waddr.eq(a.wgt), wk.eq(0), nz.eq(streams),
                         i_last.eq(a.n_inner == 1), o_last.eq(a.n_outer == 1),
                         o.eq(0), i.eq(0), ibase.eq(a.inp), iaddr.eq(a.inp),
                         abase.eq(a.acc), aaddr.eq(a.acc)]
        m.d.comb += take.eq(self.start & ~self.busy)
        with m.If(take):
            # V = 0 streams nothing, so it would never swap these weights in (and its
            # last wbuf read would come after its done)
            m.d.sync += [kcnt.eq(K), knz.eq(K != 0), pre.eq(1), streaming.eq(0),
                         w_active.eq(streams)]
        return m
