"""Address-range check at dispatch: does any extent of the instruction leave its memory?

The extents are the ISA table's (`isa.Op.extents`), evaluated over the instruction
register's fields as Amaranth values -- the same function the ISS evaluates over ints,
so the two cannot disagree on what is out of range (status `address_range`).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwq.compiler import isa
from hwq.config import HwConfig
from hwq.rtl.decode import instr_layout


class RangeCheck(wiring.Component):
    """`in_range` is low when the decoded op (one-hot `op`, isa.OPS order) touches an
    address at or beyond its memory's size. Combinational: the top registers it."""

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        super().__init__({
            "fields": In(instr_layout()),
            "op": In(len(isa.OPS)),
            "in_range": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bad = []
        for k, op in enumerate(isa.OPS):
            view = self.fields[op.name]
            f = {fld.name: getattr(view, fld.name) for fld in op.fields}
            for e in op.extents(f, self.cfg):
                bad.append(self.op[k] & Value.cast(e.when)
                           & (e.last >= isa.memory_words(self.cfg, e.memory)))
        m.d.comb += self.in_range.eq(~Cat(*bad).any() if bad else 1)
        return m
