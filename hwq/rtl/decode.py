"""Instruction layouts for the RTL, generated from the ISA table (DESIGN.md rule 1).

`op_layout(name)` is the `StructLayout` of one instruction: the opcode followed by the
op's fields in table order. `StructLayout` places members LSB-first in declaration
order, which is exactly the ISA's packing, so no offset is written here; `INSTR_LAYOUT`
overlays all of them (a `UnionLayout`) on one `INSTR_BITS` word.
"""
from __future__ import annotations

from functools import lru_cache

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.arch import isa


def _field_shape(f: isa.Field):
    return signed(f.bits) if f.signed else unsigned(f.bits)


@lru_cache(maxsize=None)
def op_layout(name: str) -> data.StructLayout:
    """The StructLayout of instruction `name`: opcode, then its fields, LSB first."""
    op = isa.BY_NAME[name]
    return data.StructLayout({"opcode": unsigned(isa.OPCODE_BITS),
                              **{f.name: _field_shape(f) for f in op.fields}})


@lru_cache(maxsize=None)
def args_layout(name: str) -> data.StructLayout:
    """The fields of instruction `name` alone (what its execution unit receives)."""
    op = isa.BY_NAME[name]
    return data.StructLayout({f.name: _field_shape(f) for f in op.fields})


def instr_layout() -> data.UnionLayout:
    """One instruction word viewed as every op at once (plus the raw bits)."""
    return data.UnionLayout({"raw": unsigned(isa.INSTR_BITS),
                             "opcode": unsigned(isa.OPCODE_BITS),
                             **{op.name: op_layout(op.name) for op in isa.OPS}})


def field_offsets(name: str) -> dict[str, int]:
    """Bit offset of each field as the generated layout places it (tests compare this
    with isa.Op.offsets())."""
    lay = op_layout(name)
    return {f.name: lay[f.name].offset for f in isa.BY_NAME[name].fields}


def args_of(view, name: str):
    """The `args_layout(name)` view of an `instr_layout()` view (same bits, opcode
    dropped)."""
    op_view = view[name]
    lay = args_layout(name)
    return lay(op_view.as_value()[isa.OPCODE_BITS:isa.OPCODE_BITS + lay.size])


class Decoder(wiring.Component):
    """Combinational decode of one instruction word: which op it is, or illegal.

    `op` is a one-hot vector in `isa.OPS` order; `fields` exposes every op's view.
    """

    def __init__(self):
        super().__init__({
            "word": In(isa.INSTR_BITS),
            "fields": Out(instr_layout()),
            "op": Out(len(isa.OPS)),
            "legal": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.fields.eq(self.word)
        for k, op in enumerate(isa.OPS):
            m.d.comb += self.op[k].eq(self.fields.opcode == op.opcode)
        m.d.comb += self.legal.eq(self.op.any())
        return m


def op_index(name: str) -> int:
    return [op.name for op in isa.OPS].index(name)
