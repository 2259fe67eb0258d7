"""One processing element of the weight-stationary systolic array.

PE(r, c) holds the int8 weight W[r][c]. Each cycle it takes an activation from its left
neighbour -- 9-bit signed, which holds int8 and uint8 codes alike (the GEMM unit extends
the byte by its sign or by zero) -- and an int32 partial sum from the PE above, passes the activation
right (registered), registers activation x weight, and passes the partial sum plus the
product registered the cycle before down (registered, int32 two's-complement wrap): the
activation enters PE (r, c) in cycle T, the partial sum of its column in cycle T + 1.

Double-buffered weight: `w_load` writes the SHADOW register, never the weight in use,
so the next GEMM's weights can be preloaded while the previous GEMM's vectors are still
flowing through the array. A 1-bit tag `sw_in` travels with the activation (registered
to `sw_out` exactly like x_in -> x_out); the tagged activation is the first vector of
a new GEMM, so in that cycle the PE computes with the shadow weight and makes it the
active one (active <= shadow at that edge). Because the tag moves with the data, every
PE switches exactly when the first vector of the new GEMM reaches it, and every vector
still in flight from the old GEMM keeps the old weight.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwq.rtl.mul import Multiplier

ACC_BITS = 32
X_BITS = 9          # an activation: int8 or uint8, as a signed operand of the multipliers


class PE(wiring.Component):
    def __init__(self, acc_bits: int = ACC_BITS, mul_regs: int = 0):
        self.acc_bits, self.mul_regs = acc_bits, mul_regs
        super().__init__({
            "w_load": In(1),          # latch w_in into the SHADOW weight
            "w_in": In(signed(8)),
            "x_in": In(signed(X_BITS)),
            "sw_in": In(1),           # x_in is the first vector of a new GEMM: use the shadow
            "psum_in": In(signed(acc_bits)),
            "x_out": Out(signed(X_BITS)),
            "sw_out": Out(1),
            "psum_out": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        shadow = Signal(signed(8))
        active = Signal(signed(8))
        with m.If(self.w_load):
            m.d.sync += shadow.eq(self.w_in)
        # the tagged vector already needs the new weight, so it bypasses `active` this cycle
        w = Mux(self.sw_in, shadow, active)
        with m.If(self.sw_in):
            m.d.sync += active.eq(shadow)
        # With mul_regs (the ECP5 builds) the tag's register reads its own output, so
        # yosys cannot merge it with the other PEs' on its anti-diagonal (all hold `swap`
        # delayed r + c cycles): the one register it kept fanned out across the array and
        # was the ECP5-85F's longest path. Tags are never in consecutive cycles (the
        # array's contract), so this is the plain delay; on the full iCE40 it would cost
        # a LUT per PE.
        m.d.sync += self.sw_out.eq(self.sw_in & ~self.sw_out if self.mul_regs else self.sw_in)
        # the product is registered before the add (a multiplier and a 32-bit adder in
        # one cycle were a critical path): psum_out is psum_in + the product of the
        # activation of the cycle before; with `mul_regs` the operands are registered
        # too (mul.py), and it is the activation of two cycles before
        if self.mul_regs:
            m.submodules.mul = mul = Multiplier(signed(X_BITS), signed(8))
            m.d.comb += [mul.a.eq(self.x_in), mul.b.eq(w)]
            prod = mul.p
        else:
            prod = Signal(signed(X_BITS + 8))
            m.d.sync += prod.eq(self.x_in * w)
        m.d.sync += [
            self.x_out.eq(self.x_in),
            self.psum_out.eq((self.psum_in + prod)[:self.acc_bits]),
        ]
        return m
