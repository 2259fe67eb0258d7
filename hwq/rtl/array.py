"""The R x C weight-stationary systolic array (R = cfg.rows, C = cfg.cols).

Weights: `w_row[r]` high latches `w_data` (C int8, lane c = output channel c) into the
SHADOW weights of row r (see pe.py); they take effect with the next vector tagged `swap`.
Inputs: one R-lane vector of 9-bit activations (int8 or uint8 codes) per cycle on `x` (lane r = input channel r) with its
`swap` tag; the array skews both alike (lane r is delayed r cycles) so the vector meets
the partial sums flowing down the columns and the tag meets every PE together with the
tagged vector, and de-skews the bottom row (column c delayed C-1-c cycles), so the C
int32 dot products of the vector presented in cycle t appear together on `y` in cycle
t + LATENCY. `swap` is never high in two consecutive cycles (a GEMM takes at least two:
hwq/arch/timing.py gemm_occupancy). A `swap` vector is computed with the new (shadow) weights
throughout; PE (r, c) swaps in cycle t + r + c, so `w_row[r]` may be high again from cycle
t + r + C - 1 on (that load lands at the cycle's end, when the last column of row r has
already taken the old shadow value).
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.rtl.pe import ACC_BITS, PE, X_BITS


def array_latency(rows: int, cols: int, mul_regs: int = 0) -> int:
    """Cycles from a vector on `x` to its dot products on `y`: the skew (rows - 1), a
    product register and a partial-sum register in each PE (rows + 1), the de-skew
    (cols - 1), and the multipliers' operand registers (`mul_regs`, pe.py)."""
    return rows + cols + mul_regs


class SystolicArray(wiring.Component):
    def __init__(self, rows: int, cols: int, acc_bits: int = ACC_BITS, mul_regs: int = 0):
        self.rows, self.cols, self.acc_bits, self.mul_regs = rows, cols, acc_bits, mul_regs
        super().__init__({
            "w_row": In(rows),                                   # one-hot shadow row load enable
            "w_data": In(data.ArrayLayout(signed(8), cols)),
            "x": In(data.ArrayLayout(signed(X_BITS), rows)),
            "swap": In(1),                                       # x starts a new GEMM
            "y": Out(data.ArrayLayout(signed(acc_bits), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        pes = [[PE(self.acc_bits, self.mul_regs) for _ in range(C)] for _ in range(R)]
        for r in range(R):
            for c in range(C):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]
        # input skew: lane r and its copy of the swap tag pass through r registers
        for r in range(R):
            src, sw = self.x[r], self.swap
            for k in range(r):
                reg = Signal(signed(X_BITS), name=f"skew_{r}_{k}")
                sreg = Signal(name=f"swskew_{r}_{k}")
                m.d.sync += [reg.eq(src), sreg.eq(sw)]
                src, sw = reg, sreg
            m.d.comb += [pes[r][0].x_in.eq(src), pes[r][0].sw_in.eq(sw)]
        for r in range(R):
            for c in range(C):
                pe = pes[r][c]
                m.d.comb += [pe.w_load.eq(self.w_row[r]), pe.w_in.eq(self.w_data[c])]
                if c > 0:
                    m.d.comb += [pe.x_in.eq(pes[r][c - 1].x_out),
                                 pe.sw_in.eq(pes[r][c - 1].sw_out)]
                m.d.comb += pe.psum_in.eq(pes[r - 1][c].psum_out if r > 0 else 0)
        # output de-skew: column c passes through C-1-c registers
        for c in range(C):
            src = pes[R - 1][c].psum_out
            for k in range(C - 1 - c):
                reg = Signal(signed(self.acc_bits), name=f"deskew_{c}_{k}")
                m.d.sync += reg.eq(src)
                src = reg
            m.d.comb += self.y[c].eq(src)
        return m
