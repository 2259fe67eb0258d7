"""The ISA table generates encoder, decoder, disassembler and docs that agree."""
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hwq.arch import isa

ROOT = Path(__file__).resolve().parent.parent


@st.composite
def instructions(draw):
    op = draw(st.sampled_from(isa.OPS))
    return isa.Instr.make(op.name, **{f.name: draw(st.integers(f.lo, f.hi)) for f in op.fields})


@given(st.lists(instructions(), min_size=1, max_size=20))
def test_encode_decode_round_trip(program):
    blob = isa.to_bytes(program)
    assert len(blob) == isa.INSTR_BYTES * len(program)
    assert isa.from_bytes(blob) == program
    assert isa.assemble(isa.disassemble(blob)) == program


@given(instructions())
def test_fields_sit_where_the_table_says(instr):
    word = isa.encode(instr)
    spec = isa.BY_NAME[instr.op]
    assert word & 0xF == spec.opcode
    for f in spec.fields:
        raw = (word >> spec.offsets()[f.name]) & ((1 << f.bits) - 1)
        assert raw == instr[f.name] & ((1 << f.bits) - 1)
    assert word >> isa.INSTR_BITS == 0


def test_fields_do_not_overlap_and_fit():
    for op in isa.OPS:
        used = isa.OPCODE_BITS + sum(f.bits for f in op.fields)
        assert used <= isa.INSTR_BITS
        ends = [off + f.bits for f, off in zip(op.fields, op.offsets().values())]
        assert ends == sorted(ends)


@pytest.mark.parametrize("opcode", [c for c in range(16) if c not in isa.BY_OPCODE])
def test_illegal_opcodes_do_not_decode(opcode):
    with pytest.raises(isa.IsaError, match="illegal opcode"):
        isa.decode(opcode)
    assert ".word" in isa.disassemble(opcode.to_bytes(16, "little"))


def test_field_range_is_checked():
    with pytest.raises(isa.IsaError, match="shift=40"):
        isa.Instr.make("POST", acc=0, out=0, bias=0, n=1, shift=40, round=0, lo=-128, hi=127)
    with pytest.raises(isa.IsaError, match="takes"):
        isa.Instr.make("END", n=1)


def test_isa_reference_page_is_fresh():
    page = (ROOT / "docs" / "isa.md").read_text()
    assert page == isa.reference_markdown(), "docs/isa.md is stale: run 'make docs'"


def test_disassembly_notes_round_trip():
    program = [isa.Instr.make("END"), isa.Instr.make("END")]
    notes = {1: "conv1: rows 0..7 output block 0"}
    assert isa.disassembly_notes(isa.disassemble(isa.to_bytes(program), notes)) == notes


@given(st.integers(0, 12), st.integers(1, 6), st.integers(0, 12), st.integers(1, 6),
       st.sampled_from(["r", "w", "rw"]), st.sampled_from(["r", "w", "rw"]))
def test_data_hazard_is_a_shared_entry(f1, n1, f2, n2, a1, a2):
    """isa.hazard, over ints: two extents of a buffer through different ports meet exactly
    when their address ranges share an entry. (An extent is non-empty wherever its `when`
    holds: empty loops make `when` false, so the rule never sees last < first.)"""
    l1, l2 = f1 + n1 - 1, f2 + n2 - 1
    h = isa.hazard(isa.Extent("obuf", f1, l1, 1, a1), isa.Extent("obuf", f2, l2, 1, a2))
    if set(a1) & set(a2):
        assert h == ("port", 1)
    else:
        assert h[0] == "data" and bool(h[1]) == bool(set(range(f1, l1 + 1)) & set(range(f2, l2 + 1)))
