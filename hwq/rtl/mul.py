"""A multiplier whose operands and product are registered: `p` is the product of the `a`
and `b` presented MUL_LATENCY (hwq/arch/timing.py) cycles earlier: one register on the
operands, one on the product.

On an ECP5 those registers are the DSP block's own: a MULT18X18D with its input and
output registers clocked by `sync`. yosys maps a `*` onto a MULT18X18D but never packs
registers into one, so with fabric registers on both sides the cycle holds a route into
the DSP column and one out of it, 4 to 5 ns each on the ECP5-85F (nextpnr), besides the
multiply. Elsewhere, and in simulation, it is the same pipeline in Amaranth; on the
iCE40 yosys packs such registers into the SB_MAC16 itself.

The MULT18X18D's registers, as Lattice's simulation model has them: clocked by CLK0
(CLK0_DIV "ENABLED", the default, still clocks them on every rising edge), enabled by
CE0, reset synchronously by RST0; SIGNEDA/SIGNEDB sign-extend the 18-bit operands.
"""
from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

_DSP_BITS = 18                   # a MULT18X18D's signed operands


def _fits_dsp(shape: Shape) -> bool:
    return shape.width + (not shape.signed) <= _DSP_BITS


class Multiplier(wiring.Component):
    def __init__(self, a_shape, b_shape):
        a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        p_shape = Shape(a_shape.width + b_shape.width + (a_shape.signed != b_shape.signed),
                        a_shape.signed or b_shape.signed)
        super().__init__({"a": In(a_shape), "b": In(b_shape), "p": Out(p_shape)})

    def elaborate(self, platform):
        m = Module()
        a_shape, b_shape = self.a.shape(), self.b.shape()
        if (getattr(platform, "family", None) == "ecp5"
                and _fits_dsp(a_shape) and _fits_dsp(b_shape)):
            # named apart from the ports: named like them, the orangecrab-25f's synthesis
            # failed an assertion in yosys's ABC9 reintegration
            a = Signal(signed(_DSP_BITS), name="dsp_a")
            b = Signal(signed(_DSP_BITS), name="dsp_b")
            p = Signal(signed(2 * _DSP_BITS), name="dsp_p")
            m.d.comb += [a.eq(self.a), b.eq(self.b), self.p.eq(p)]
            m.submodules.dsp = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
                p_REG_PIPELINE_CLK="NONE", p_REG_INPUTC_CLK="NONE", p_GSR="DISABLED",
                p_RESETMODE="SYNC", p_CLK0_DIV="ENABLED",
                i_CLK0=ClockSignal(), i_CE0=1, i_RST0=0,
                i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
                **{f"i_A{k}": a[k] for k in range(_DSP_BITS)},
                **{f"i_B{k}": b[k] for k in range(_DSP_BITS)},
                **{f"i_C{k}": 0 for k in range(_DSP_BITS)},
                **{f"o_P{k}": p[k] for k in range(2 * _DSP_BITS)})
            return m
        # no reset: loaded every cycle (and so an iCE40's SB_MAC16 takes them)
        a = Signal.like(self.a, name="a_r", reset_less=True)
        b = Signal.like(self.b, name="b_r", reset_less=True)
        p = Signal.like(self.p, name="p_r", reset_less=True)
        m.d.sync += [a.eq(self.a), b.eq(self.b), p.eq(a * b)]
        m.d.comb += self.p.eq(p)
        return m
