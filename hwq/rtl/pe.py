"""One processing element of the weight-stationary systolic array.

PE(r, c) holds the int8 weight W[r][c]. Each cycle it takes an int8 activation from
its left neighbour and an int32 partial sum from the PE above, passes the activation
right (registered) and the partial sum plus activation x weight down (registered, int32
two's-complement wrap).
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

ACC_BITS = 32


class PE(wiring.Component):
    def __init__(self, acc_bits: int = ACC_BITS):
        self.acc_bits = acc_bits
        super().__init__({
            "w_load": In(1),          # latch w_in as this PE's weight
            "w_in": In(signed(8)),
            "x_in": In(signed(8)),
            "psum_in": In(signed(acc_bits)),
            "x_out": Out(signed(8)),
            "psum_out": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        w = Signal(signed(8))
        with m.If(self.w_load):
            m.d.sync += w.eq(self.w_in)
        m.d.sync += [
            self.x_out.eq(self.x_in),
            self.psum_out.eq((self.psum_in + self.x_in * w)[:self.acc_bits]),
        ]
        return m
