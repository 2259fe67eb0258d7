"""Post-processing: accumulator + bias, shift with rounding, clamp to int8.

Implements hwq.compiler.quant.requant.requantize (DESIGN.md rule 2) lane by lane; the
tests hold `RequantLanes` to that function, exhaustively on a narrow accumulator.

Right shift s in 1..31: floor = x >> s (arithmetic), and the rounding looks at the
round bit b = bit s-1 of x and the sticky bit t = (bits s-2..0 of x) != 0:
    half_up   up = b              (rem >= half)
    half_down up = b & t          (rem >  half)
    half_even up = b & (t | floor[0])
    std_round up = b & (t | x >= 0)
Left shift by -s (s <= 0, up to 32): the int64 value x << -s is clamped to [lo, hi] within
int8, and sat8(x << n) == sat8(sat8(x) << min(n, 8)), so only an 8-bit value is shifted.
Clamp: clip(v, lo, hi) == clip(sat8(v), lo, hi) for int8 lo, hi (np.clip: max then min).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.compiler import isa
from hwq.compiler.quant.requant import ROUND_MODES
from hwq.rtl.decode import args_layout
from hwq.rtl.pe import ACC_BITS
from hwq.rtl.ports import SramRead, SramWrite, unit_members

_POST = {f.name: f for f in isa.BY_NAME["POST"].fields}
SHIFT_BITS = _POST["shift"].bits
ROUND_BITS = _POST["round"].bits
CLAMP_BITS = _POST["lo"].bits
INT8_MIN, INT8_MAX = -(1 << 7), (1 << 7) - 1


def _sat(m, v, lo, hi, name):
    out = Signal(signed(8), name=name)
    m.d.comb += out.eq(Mux(v < lo, lo, Mux(v > hi, hi, v)))
    return out


class RequantLanes(wiring.Component):
    """`lanes` combinational requantizers sharing shift/round/lo/hi.

    y[k] = requantize(wrap(acc[k] + bias[k], acc_bits), shift, round, lo, hi)

    fault="post_round" (tests only, see hwq/rtl/top.py) makes half_up truncate instead.
    """

    def __init__(self, lanes: int, acc_bits: int = ACC_BITS, fault: str | None = None):
        self.lanes, self.acc_bits, self.fault = lanes, acc_bits, fault
        super().__init__({
            "acc": In(data.ArrayLayout(signed(acc_bits), lanes)),
            "bias": In(data.ArrayLayout(signed(acc_bits), lanes)),
            "shift": In(signed(SHIFT_BITS)),
            "round": In(unsigned(ROUND_BITS)),
            "lo": In(signed(CLAMP_BITS)),
            "hi": In(signed(CLAMP_BITS)),
            "y": Out(data.ArrayLayout(signed(8), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.acc_bits
        s = self.shift
        right = Signal(name="right")
        rs = Signal(range(1 << (SHIFT_BITS - 1)), name="rs")       # right shift amount 1..31
        ls = Signal(range(9), name="ls")                            # left shift, capped at 8
        m.d.comb += [
            right.eq(s > 0),
            rs.eq(s[:SHIFT_BITS - 1]),
            ls.eq(Mux(-s > 8, 8, -s)),
        ]
        rs1 = Signal(range(1 << (SHIFT_BITS - 1)), name="rs1")
        m.d.comb += rs1.eq(rs - 1)
        # sticky mask: bits s-2..0
        mask = Signal(unsigned(1 << (SHIFT_BITS - 1)), name="sticky_mask")
        m.d.comb += mask.eq((1 << rs1) - 1)
        mode = self.round
        for k in range(self.lanes):
            x = Signal(signed(W), name=f"x{k}")
            m.d.comb += x.eq((self.acc[k] + self.bias[k])[:W])
            floor = Signal(signed(W), name=f"floor{k}")
            rbit = Signal(name=f"rbit{k}")
            sticky = Signal(name=f"sticky{k}")
            up = Signal(name=f"up{k}")
            m.d.comb += [
                floor.eq(x >> rs),
                rbit.eq((x >> rs1)[0]),
                sticky.eq((x & mask) != 0),
            ]
            with m.Switch(mode):
                with m.Case(ROUND_MODES["half_up"]):
                    m.d.comb += up.eq(0 if self.fault == "post_round" else rbit)
                with m.Case(ROUND_MODES["half_down"]):
                    m.d.comb += up.eq(rbit & sticky)
                with m.Case(ROUND_MODES["half_even"]):
                    m.d.comb += up.eq(rbit & (sticky | floor[0]))
                with m.Case(ROUND_MODES["std_round"]):
                    m.d.comb += up.eq(rbit & (sticky | (x >= 0)))
            rounded = Signal(signed(W + 1), name=f"rounded{k}")
            m.d.comb += rounded.eq(floor + up)
            x8 = _sat(m, x, INT8_MIN, INT8_MAX, f"x8_{k}")
            shl = Signal(signed(8 + 8), name=f"shl{k}")
            m.d.comb += shl.eq(x8 << ls)
            v8 = _sat(m, Mux(right, rounded, shl), INT8_MIN, INT8_MAX, f"v8_{k}")
            # np.clip(v, lo, hi) = min(max(v, lo), hi)
            lo_d = Signal(signed(8), name=f"lo_d{k}")
            m.d.comb += lo_d.eq(Mux(v8 < self.lo, self.lo, v8))
            m.d.comb += self.y[k].eq(Mux(lo_d > self.hi, self.hi, lo_d))
        return m


class PostUnit(wiring.Component):
    """POST: obuf[out + j] = requantize(abuf[acc + j] + bbuf[bias]) for j < n.

    Timeline (cycle 0 = start): cycle 0 reads bbuf[bias] (held for the whole
    instruction); cycles 1..n read abuf[acc + j]; each result is written to obuf a cycle
    later; done in cycle n + 1 (with the last write).
    """

    def __init__(self, cfg, fault: str | None = None):
        self.cfg, self.fault = cfg, fault
        A, C = isa.SRAM_ADDR_BITS, cfg.cols
        super().__init__({
            **unit_members(args_layout("POST")),
            "abuf": Out(SramRead(A, ACC_BITS * C)),
            "bbuf": Out(SramRead(A, ACC_BITS * C)),
            "obuf": Out(SramWrite(A, 8 * C)),
        })

    def elaborate(self, platform):
        m = Module()
        a, C = self.args, self.cfg.cols
        m.submodules.lanes = lanes = RequantLanes(C, ACC_BITS, self.fault)
        j = Signal.like(a.n)
        aptr = Signal(isa.SRAM_ADDR_BITS)
        optr = Signal(isa.SRAM_ADDR_BITS)
        s_valid = Signal()
        s_out = Signal(isa.SRAM_ADDR_BITS)
        m.d.sync += s_valid.eq(0)
        m.d.comb += [
            lanes.acc.eq(self.abuf.data), lanes.bias.eq(self.bbuf.data),
            lanes.shift.eq(a.shift), lanes.round.eq(a.round), lanes.lo.eq(a.lo),
            lanes.hi.eq(a.hi),
            self.obuf.en.eq(s_valid), self.obuf.addr.eq(s_out), self.obuf.data.eq(lanes.y),
        ]
        with m.FSM(name="post"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += [self.bbuf.en.eq(1), self.bbuf.addr.eq(a.bias)]
                    m.d.sync += [j.eq(0), aptr.eq(a.acc), optr.eq(a.out)]
                    with m.If(a.n == 0):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.abuf.en.eq(1), self.abuf.addr.eq(aptr)]
                m.d.sync += [aptr.eq(aptr + 1), optr.eq(optr + 1), j.eq(j + 1),
                             s_valid.eq(1), s_out.eq(optr)]
                with m.If(j == a.n - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
