"""The R x C weight-stationary systolic array (R = cfg.rows, C = cfg.cols).

Weights: `w_row[r]` high latches `w_data` (C int8, lane c = output channel c) into row
r. Inputs: one R-lane int8 vector per cycle on `x` (lane r = input channel r); the array
skews it (lane r is delayed r cycles) so it meets the partial sums flowing down the
columns, and de-skews the bottom row (column c delayed C-1-c cycles), so the C int32
dot products of the vector presented in cycle t appear together on `y` in cycle
t + LATENCY.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.rtl.pe import ACC_BITS, PE


def array_latency(rows: int, cols: int) -> int:
    """Cycles from a vector on `x` to its dot products on `y`."""
    return rows + cols - 1


class SystolicArray(wiring.Component):
    def __init__(self, rows: int, cols: int, acc_bits: int = ACC_BITS):
        self.rows, self.cols, self.acc_bits = rows, cols, acc_bits
        super().__init__({
            "w_row": In(rows),                                   # one-hot row load enable
            "w_data": In(data.ArrayLayout(signed(8), cols)),
            "x": In(data.ArrayLayout(signed(8), rows)),
            "y": Out(data.ArrayLayout(signed(acc_bits), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        pes = [[PE(self.acc_bits) for _ in range(C)] for _ in range(R)]
        for r in range(R):
            for c in range(C):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]
        # input skew: lane r passes through r registers
        for r in range(R):
            src = self.x[r]
            for k in range(r):
                reg = Signal(signed(8), name=f"skew_{r}_{k}")
                m.d.sync += reg.eq(src)
                src = reg
            m.d.comb += pes[r][0].x_in.eq(src)
        for r in range(R):
            for c in range(C):
                pe = pes[r][c]
                m.d.comb += [pe.w_load.eq(self.w_row[r]), pe.w_in.eq(self.w_data[c])]
                if c > 0:
                    m.d.comb += pe.x_in.eq(pes[r][c - 1].x_out)
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
