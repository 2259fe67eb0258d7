"""Address-range check at dispatch: does any extent of the instruction leave its memory?

The extents are the ISA table's (`isa.Op.extents`), evaluated over the instruction
register's fields as Amaranth values -- the same function the ISS evaluates over ints,
so the two cannot disagree on what is out of range (status `address_range`).

The extents multiply fields (counts by strides): one multiplier per product would be
~15 wide multipliers, more DSP blocks than a small FPGA has for the whole accelerator
(the iCE40UP5K has 8, the array itself needs rows x cols). So the products are
scheduled onto MULTIPLIERS multipliers shared by all ops. Each multiplier is a
three-cycle pipeline, so that the operand selection, the multiply and the clamp are not
one path (together they were the ECP5's longest, 17 ns):

  cycle t      select the operands of the products issued in slot t (clamped fields of
               the instruction register, or earlier products), register them
  cycle t + 1  multiply the registered operands, register the raw product
  cycle t + 2  clamp it into slot t's product register; an operand from cycle t + 3 on

A new pair of operands is taken every cycle, so the slots are cycles 0 .. STAGES - 1 (a
product of products waits for its operand: MAXPOOL's (out_h - 1) x (stride x in_w) is
issued in slot 3); the last product is registered in cycle STAGES + 1, the cycle after
registers the extents and whether each leaves its memory, and the last cycle ORs those
into the verdict while the top compares the registered extents with the running
units' (the hazards; after the sums in one cycle, they were the ECP5's longest paths).
That is CHECK_CYCLES = STAGES + 4 cycles for every instruction (8: 4 slots), which
hwq/arch/timing.py counts:

  t = 0   slot 0 operands registered
  t = 1   slot 1 operands registered, slot 0 raw products registered
  t = 2   slot 2 operands registered, slot 1 raw products, slot 0 products registered
  t = 3   slot 3 operands registered, slot 2 raw products, slot 1 products registered
  t = 4                               slot 3 raw products, slot 2 products registered
  t = 5                                                    slot 3 products registered
  t = 6   sums and compares: the extents and their out-of-range bits registered
  t = 7   the verdict (`in_range`) registered; the top registers the hazard terms

With read registers (hwq.arch.timing.read_regs: the ECP5 builds) each value of an extent
is summed by an adder tree in the order its summands become valid, one adder and a
register a cycle, the last register in t = 5; t = 6 takes the extent and the compare
from those registers (a chain of sums and the compare in one cycle were critical
paths). MAXPOOL's source, whose product of products comes in t = 6, adds it there.

Every field, operand and product saturates at C = 2^n - 1 >= S + 1, S the largest
memory's size and n the bit length of S + 1: wherever an extent is accessed (`when`),
its `last` is a sum of non-negative terms (first address, (count - 1) x stride, a
tail), so `last >= size` for size <= S holds exactly when it holds with the values
clamped -- a clamped term, even a clamped count minus one, alone reaches S -- and the
ISA's `when` compares counts with 0 and `buf` with small codes, which clamping keeps.
Where `when` is false the value does not matter (a negative operand or product, a count
of 0 minus one, only stays negative). C being all ones, the clamp is an OR of the high
bits into the low ones, no comparator. This keeps each multiplier within one DSP block
and the sums as narrow as the addresses.
"""
from __future__ import annotations

import functools
import operator

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.decode import instr_layout
from hwq.rtl.mul import Multiplier
from hwq.arch.timing import CHECK_CYCLES, MUL_LATENCY, read_regs

MULTIPLIERS = 2
LATENCY = MUL_LATENCY + 1          # operands, raw product (mul.py), clamped product
STAGES = CHECK_CYCLES - LATENCY - 1   # issue slots; a product is an operand LATENCY cycles on


class _Expr:
    """A value of the extents under construction: an Amaranth value and the cycle from
    which it is valid (0: straight from the instruction register; s + LATENCY: the
    product issued in slot s). Products of two such values are handed to `sched`."""

    def __init__(self, value, ready: int, sched: "_Schedule", terms=None):
        self.value, self.ready, self.sched = value, ready, sched
        # the summands whose sum `value` is, (value, ready) each (itself if not a sum)
        self.terms = terms if terms is not None else [(value, ready)]

    def _op(self, other, fn, swap=False, terms=None):
        if isinstance(other, _Expr):
            ov, r = other.value, max(self.ready, other.ready)
        else:
            ov, r = other, self.ready
        a, b = (ov, self.value) if swap else (self.value, ov)
        return _Expr(fn(a, b), r, self.sched, terms)

    def _plus(self, other, sign: int, swap=False):
        mine = self.terms
        theirs = other.terms if isinstance(other, _Expr) else [(other, 0)]
        if swap:
            mine, theirs = theirs, mine
        terms = mine + [(v if sign > 0 else -v, r) for v, r in theirs]
        return self._op(other, (lambda a, b: a + b) if sign > 0 else (lambda a, b: a - b),
                        swap, terms)

    def __add__(self, o): return self._plus(o, 1)
    def __radd__(self, o): return self._plus(o, 1, True)
    def __sub__(self, o): return self._plus(o, -1)
    def __rsub__(self, o): return self._plus(o, -1, True)
    def __gt__(self, o):
        if isinstance(o, int) and o == 0 and all(
                isinstance(v, Value) and not v.shape().signed for v, _ in self.terms):
            # a sum of unsigned values (LOAD's padded height) is > 0 where one of them is
            # not 0: an OR, not adders and a compare
            return _Expr(Cat(*(v for v, _ in self.terms)).any(), self.ready, self.sched)
        return self._op(o, lambda a, b: a > b)
    def __eq__(self, o): return self._op(o, lambda a, b: a == b)
    def __and__(self, o): return self._op(o, lambda a, b: a & b)
    def __rand__(self, o): return self._op(o, lambda a, b: a & b, True)

    def __mul__(self, o):
        if not isinstance(o, _Expr):                 # by a constant: a few adders
            return self._op(o, lambda a, b: a * b)
        return self.sched.product(self, o)

    __rmul__ = __mul__
    __hash__ = None


class _Schedule:
    """Places one op's products into (slot, multiplier) pairs, first fit in the order
    the extents ask for them, a slot no earlier than its operands are valid; the same
    product asked twice (LOAD's four targets) is computed once. regs[s][j] holds the
    product issued in slot s on multiplier j. With `stage_sums` (read registers) an
    operand that is a sum (a count minus one, LOAD's padded height) is registered first
    and issued a cycle later: the adders, then the operand selection into a DSP block,
    were the ECP5-85F's longest path; `sums` gets those registers' assignments."""

    def __init__(self, regs, sat: int, stage_sums: bool = False, name: str = ""):
        self.regs, self.sat = regs, sat              # regs[stage][j]: the product registers
        self.stage_sums, self.name = stage_sums, name
        self.slots: dict[tuple[int, int], tuple] = {}
        self.seen: dict[str, _Expr] = {}
        self.sums: list = []

    def _operand(self, v: _Expr):
        """v clamped, and the cycle from which it can be issued."""
        value = _clamp(Value.cast(v.value), self.sat)
        if not (self.stage_sums and len(v.terms) > 1):
            return value, v.ready
        r = Signal.like(value, name=f"operand_{self.name}_{len(self.sums)}")
        self.sums.append(r.eq(value))
        return r, v.ready + 1

    def product(self, a: _Expr, b: _Expr) -> _Expr:
        key = " ".join(sorted((repr(a.value), repr(b.value))))
        if key not in self.seen:
            (va, ra), (vb, rb) = self._operand(a), self._operand(b)
            for s in range(max(ra, rb), STAGES):
                free = [j for j in range(MULTIPLIERS) if (s, j) not in self.slots]
                if free:
                    break
            else:
                raise ValueError(f"the ISA's extents need more than {STAGES} slots of "
                                 f"{MULTIPLIERS} multipliers; raise CHECK_CYCLES")
            self.slots[(s, free[0])] = tuple(sorted(((va, ra), (vb, rb)), key=lambda o: len(o[0])))
            self.seen[key] = _Expr(self.regs[s][free[0]], s + LATENCY, self)
        return self.seen[key]


def _clamp(v: Value, sat: int) -> Value:
    """min(v, sat) for v >= 0, sat = 2^n - 1, as narrow as that: unsigned(n), or signed(n
    + 1) for a signed v, whose negative values (a count of 0 minus one, where `when` is
    false) come out negative and greater than -2^n."""
    n = sat.bit_length()
    assert sat == (1 << n) - 1
    sgn = v.shape().signed
    if v.shape().width <= n + sgn:
        return v
    if not sgn:
        return v[:n] | v[n:].any().replicate(n)
    over = v[n:-1].any() & ~v[-1]
    return Cat(v[:n] | over.replicate(n), v[-1]).as_signed()


def _staged(x, name: str, regs: list):
    """An extent's value from registers (read registers: `regs` gets their assignments)
    for the cycle the extents and their compares are registered, t = CHECK_CYCLES - 2:
    an adder tree by when the summands are valid -- those valid from cycle r added to
    the sum of the earlier ones and registered, one adder a cycle (a chain of sums, or a
    sum and the compare, in one cycle were critical paths) -- and a summand valid only
    then (MAXPOOL's product of products) added after."""
    if not isinstance(x, _Expr):
        return x
    due = CHECK_CYCLES - 3
    late = [v for v, r in x.terms if r > due]
    levels = sorted({r for _, r in x.terms if r <= due})
    acc = []
    for level in levels:
        acc += [v for v, r in x.terms if r == level]
        last = level == levels[-1]
        if len(acc) > 1 or last:
            r = Signal.like(Value.cast(_sum(acc)), name=name if last else f"{name}_{level}")
            regs.append(r.eq(_sum(acc)))
            acc = [r]
    return _sum(acc + late)


def _sum(values):
    return functools.reduce(operator.add, values)


def _one_hot_select(cases):
    """The value of the (select, value) case whose select is high, or 0; at most one is.
    An AND-OR, the cases with the same value merged (the ops' views of the instruction
    share fields), where a chain of If would be a priority multiplexer per case."""
    merged: dict[str, tuple[Value, list]] = {}
    for sel, v in cases:
        merged.setdefault(repr(v), (v, []))[1].append(sel)
    terms = [Mux(Cat(*sels).any(), v, 0) for v, sels in merged.values()]
    return functools.reduce(operator.or_, terms, Const(0))


def _operand_shape(values):
    """A signed shape that holds every value exactly."""
    return signed(max(len(v) + (0 if v.shape().signed else 1) for v in values))


def extent_layout(cfg: HwConfig) -> data.StructLayout:
    """The `extents` port: every extent of every op in the ISA table's order, as
    `<op>_<k>_first`, `_last` (buffer entries) and `_when`; DRAM extents only `_when`."""
    members = {}
    for op in isa.OPS:
        for k, e in enumerate(op.extents({f.name: 0 for f in op.fields}, cfg)):
            if e.memory != "dram":
                members[f"{op.name}_{k}_first"] = unsigned(isa.SRAM_ADDR_BITS)
                members[f"{op.name}_{k}_last"] = unsigned(isa.SRAM_ADDR_BITS)
            members[f"{op.name}_{k}_when"] = unsigned(1)
    return data.StructLayout(members)


def extents_of(view, op: isa.Op, cfg: HwConfig) -> list[isa.Extent]:
    """`op`'s extents read back from an `extent_layout` view (a DRAM extent's range is
    left out: DRAM has one port, so any two DRAM extents conflict)."""
    out = []
    for k, e in enumerate(op.extents({f.name: 0 for f in op.fields}, cfg)):
        get = lambda part: getattr(view, f"{op.name}_{k}_{part}")  # noqa: E731
        first, last = (get("first"), get("last")) if e.memory != "dram" else (0, 0)
        out.append(isa.Extent(e.memory, first, last, get("when"), e.access))
    return out


class RangeCheck(wiring.Component):
    """`in_range` is low when the decoded op (one-hot `op`, isa.OPS order) touches an
    address at or beyond its memory's size. `run` is held high for CHECK_CYCLES cycles
    (with `fields` and `op` steady); `in_range` is valid the cycle after, and `last` is
    high in the last of them. `extents`, valid with `in_range`, holds the instruction's
    extents (every op's view of it; the decoded op's is the one that counts) for the
    hazard checks, in range wherever `in_range` holds; it is valid a cycle earlier, in
    the last one."""

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        super().__init__({
            "fields": In(instr_layout()),
            "op": In(len(isa.OPS)),
            "run": In(1),
            "last": Out(1),
            "in_range": Out(1),
            "extents": Out(extent_layout(cfg)),
        })

    def elaborate(self, platform):
        biggest = max(isa.memory_words(self.cfg, mem) for mem in ("dram", *isa.BUFFERS))
        sat = (1 << (biggest + 1).bit_length()) - 1
        holders = [[Signal(range(-sat - 1, sat + 1), name=f"p{s}_{j}")
                    for j in range(MULTIPLIERS)] for s in range(STAGES)]
        bad, plans, regs = [], [], []       # regs: the extents' registers, bad: each
                                            # extent's out-of-range bit (both sync)
        for k, op in enumerate(isa.OPS):
            sched = _Schedule(holders, sat, bool(read_regs(self.cfg)), op.name.lower())
            view = self.fields[op.name]
            f = {fld.name: _Expr(_clamp(Value.cast(getattr(view, fld.name)), sat), 0, sched)
                 for fld in op.fields}
            for k_e, e in enumerate(op.extents(f, self.cfg)):
                parts = {"first": e.first, "last": e.last, "when": e.when}
                if read_regs(self.cfg):
                    first, last, when = (_staged(x, f"sum_{op.name.lower()}_{k_e}_{n}", regs)
                                         for n, x in parts.items())
                else:
                    first, last, when = (x.value if isinstance(x, _Expr) else x
                                         for x in parts.values())
                if e.memory != "dram":
                    regs += [
                        getattr(self.extents, f"{op.name}_{k_e}_first").eq(Value.cast(first)),
                        getattr(self.extents, f"{op.name}_{k_e}_last").eq(Value.cast(last))]
                regs.append(getattr(self.extents, f"{op.name}_{k_e}_when").eq(
                    Value.cast(when).bool()))
                # sizes are powers of two and `last` is not negative where it counts:
                # last >= size is a non-zero high part, no comparator
                size = isa.memory_words(self.cfg, e.memory)
                out = Signal(name=f"out_{op.name.lower()}_{k_e}")
                regs.append(out.eq(self.op[k] & Value.cast(when)
                                   & Value.cast(last)[size.bit_length() - 1:].any()))
                bad.append(out)
            plans.append(sched.slots)
            regs += sched.sums
        m = Module()                        # after the schedule, which may raise
        m.d.sync += regs

        t = Signal(range(CHECK_CYCLES))
        with m.If(self.run):
            m.d.sync += t.eq(t + 1)
        with m.Else():
            m.d.sync += t.eq(0)
        m.d.comb += self.last.eq(self.run & (t == CHECK_CYCLES - 1))
        # slot[s]: t == s, one-hot from a shift register (a compare of t fewer on the
        # operand selection, the ECP5-85F's longest path); t is 0 in the first run cycle
        slot = Signal(STAGES, init=1)
        m.d.sync += slot.eq(Mux(self.run, slot << 1, 1))

        # With read registers the operands issued from slot 1 on are selected by the op and
        # taken from the fields as registered in the cycle before (they hold through the
        # check): only slot 0's come from the instruction register through the decode and
        # the clamps. From it, all in one select, they were the ECP5-85F's longest path.
        late_regs = bool(read_regs(self.cfg))
        if late_regs:
            op_r = Signal.like(self.op, name="op_r")
            m.d.sync += op_r.eq(self.op)
        copies = {}

        def early(value):
            """A field operand (valid from cycle 0), registered: valid from cycle 1."""
            if repr(value) not in copies:
                copies[repr(value)] = r = Signal.like(value, name=f"field_r{len(copies)}")
                m.d.sync += r.eq(value)
            return copies[repr(value)]

        for j in range(MULTIPLIERS):
            pairs = [(k, s, p) for k, slots in enumerate(plans) for (s, jj), p in slots.items()
                     if jj == j]
            if not pairs:
                continue
            # cycle t: the operands of slot t, registered; cycle t + 1: their product,
            # registered (a Multiplier, mul.py: inside the DSP block where it can be);
            # cycle t + 2: clamped into slot t's register
            shapes = [_operand_shape([Value.cast(p[side][0]) for _, _, p in pairs])
                      for side in (0, 1)]
            m.submodules[f"mul{j}"] = mul = Multiplier(*shapes)
            for side, port in enumerate((mul.a, mul.b)):
                now, later = [], []          # each a one-hot select; ORed, as one is 0
                for k, s, p in pairs:
                    value, ready = p[side]
                    if late_regs and s > 0:
                        later.append((op_r[k] & slot[s], value if ready else early(value)))
                    else:
                        now.append((self.op[k] & slot[s], value))
                m.d.comb += port.eq(_one_hot_select(now) | _one_hot_select(later))
            clamped = _clamp(mul.p, sat)
            for s in range(STAGES):
                with m.If(self.run & (t == s + LATENCY - 1)):
                    m.d.sync += holders[s][j].eq(clamped)
        m.d.sync += self.in_range.eq(~Cat(*bad).any() if bad else 1)
        return m
