"""The hwq instruction set, as data (DESIGN.md rule 1).

This table is the only place a field, a width or an opcode is written. The encoder,
the decoder the ISS uses, the Amaranth decoder (hwq/rtl/decode.py), the disassembler
and docs/isa.md are all generated from it.

Machine model. DRAM is an array of words of `bus_bytes` bytes (the hardware config's
memory port); every DRAM address and stride below counts words. On chip there are five
buffers, each an array of entries:

    ibuf  entry = rows x 8 bits  one input vector (`rows` channels of one pixel)
    wbuf  entry = cols x int8    one weight-tile row (input channel r, `cols` outputs)
    bbuf  entry = cols x int32   one bias vector
    abuf  entry = cols x int32   one accumulator vector
    obuf  entry = cols x 8 bits  one requantized output vector

An activation byte is int8 or uint8 (a ReLU's output, stored with twice the resolution);
the bytes do not say which, so the instructions that read activations as numbers -- GEMM
and MAXPOOL -- carry a bit that does, and POST's clamp range says what it writes.

A buffer entry in DRAM is `entry_bytes / bus_bytes` consecutive words, lanes in order,
little-endian. Instructions are 128-bit words, little-endian, fetched from DRAM from the
start address onward (the program counter wraps modulo `dram_words`); fields are packed
from bit 0 upward in table order, the opcode first.

Instructions overlap. Each op but END runs on a unit of its own (LOAD, STORE, GEMM,
POST, MAXPOOL), one instruction at a time per unit, started in program order: while one
unit works, the next instructions are fetched, checked and started on the other units.
The result is always that of running the program one instruction after the other,
because the accelerator holds an instruction back while an earlier one that is still
running on another unit conflicts with it (`hazard` below, the same function in the ISS
and the RTL): both use one port of the same memory (DRAM has one port; each buffer has
one read port and one write port), or one writes entries the other reads. A GEMM's
accumulator range stays in use until its last accumulator write (the array drains after
the unit takes the next GEMM); every other range until its unit is done. END waits for
every unit to finish. Instruction words must not be written by a running program.

Addresses do not wrap. Before an instruction runs, every buffer entry and DRAM word its
pseudo-code touches is checked against the size of its memory (each op's table of
extents below); if any lies outside, the accelerator stops with status `address_range`
at that instruction's pc, having changed nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

ISA_VERSION = 6
INSTR_BITS = 128
OPCODE_BITS = 4
SRAM_ADDR_BITS = 14
DRAM_ADDR_BITS = 24
BUFFERS = ("ibuf", "wbuf", "bbuf", "abuf", "obuf")
ADDR_BITS = {buf: SRAM_ADDR_BITS for buf in BUFFERS}
LOAD_TARGETS = ("ibuf", "wbuf", "bbuf", "obuf")  # LOAD's `buf` field indexes this

# Status codes the accelerator reports when it stops.
STATUS = {"ok": 0, "illegal_opcode": 1, "address_range": 2, "unsupported": 3}


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    doc: str
    signed: bool = False
    default: int | None = None   # the value Instr.make and assemble use when it is omitted

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


@dataclass(frozen=True)
class Extent:
    """One memory range an instruction touches: addresses first..last of `memory` (a
    buffer name or "dram"), accessed only `when` its loops are not empty, through the
    memory's read port, write port or both (`access`). The values are
    ints in the ISS, Amaranth values in the RTL, text in docs/isa.md."""
    memory: str
    first: Any
    last: Any
    when: Any
    access: str = "r"        # "r", "w" or "rw": which of the memory's ports it uses


@dataclass(frozen=True)
class Op:
    name: str
    opcode: int
    summary: str
    fields: tuple[Field, ...]
    semantics: str
    # (fields, hw) -> [Extent]: written with + - * > == & only, so that ints, Amaranth
    # values and doc text all evaluate it; hw has `rows` and `entry_words(buf)`
    extents: Callable[[Any, Any], list[Extent]] = lambda f, hw: []

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def offsets(self) -> dict[str, int]:
        """Bit offset of each field (the opcode sits at 0)."""
        return {name: off for name, off, _, _, _ in self.plan}

    @cached_property
    def plan(self) -> tuple[tuple[str, int, int, int, int], ...]:
        """(name, bit offset, mask, lo, hi) of each field in table order: what the encoder
        and the field check use per instruction, derived once from `fields`."""
        out, pos = [], OPCODE_BITS
        for f in self.fields:
            out.append((f.name, pos, (1 << f.bits) - 1, f.lo, f.hi))
            pos += f.bits
        return tuple(out)

    @cached_property
    def defaults(self) -> dict[str, int]:
        """The fields an instruction may omit, and their values."""
        return {f.name: f.default for f in self.fields if f.default is not None}

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)



def _span(first, counts_strides, tail):
    """Last address of first + sum_k i_k * stride_k (i_k < count_k) + j (j < tail), and
    whether it is accessed at all (every count non-zero)."""
    last, when = first, True
    for count, stride in counts_strides:
        last = last + (count - 1) * stride
        when = when & (count > 0)
    return (last if isinstance(tail, int) and tail == 1 else last + tail - 1), when


def _load_extents(f, hw):
    h = f["pad_top"] + f["y_size"] + f["pad_bottom"]
    w = f["pad_left"] + f["x_size"] + f["pad_right"]
    out = []
    for code, target in enumerate(LOAD_TARGETS):
        sel = f["buf"] == code
        out.append(Extent(target, f["sram"], f["sram"] + h * w - 1, sel & (h > 0) & (w > 0), "w"))
        last, when = _span(f["dram"], [(f["y_size"], f["y_stride"]), (f["x_size"], f["x_stride"])],
                           hw.entry_words(target))
        out.append(Extent("dram", f["dram"], last, sel & when))
    return out


def _store_extents(f, hw):
    last, when = _span(f["dram"], [(f["y_size"], f["y_stride"]), (f["x_size"], f["x_stride"])],
                       hw.entry_words("obuf"))
    return [Extent("obuf", f["sram"], f["sram"] + f["y_size"] * f["x_size"] - 1, when),
            Extent("dram", f["dram"], last, when, "w")]


def _gemm_extents(f, hw):
    loops = [(f["n_outer"], f["inp_so"]), (f["n_inner"], f["inp_si"])]
    last_i, when = _span(f["inp"], loops, 1)
    last_a, _ = _span(f["acc"], [(f["n_outer"], f["acc_so"]), (f["n_inner"], f["acc_si"])], 1)
    return [Extent("wbuf", f["wgt"], f["wgt"] + hw.rows - 1, True),
            Extent("ibuf", f["inp"], last_i, when), Extent("abuf", f["acc"], last_a, when, "rw")]


def _post_extents(f, hw):
    when = f["n"] > 0
    return [Extent("abuf", f["acc"], f["acc"] + f["n"] - 1, when),
            Extent("bbuf", f["bias"], f["bias"] + f["lane_shifts"], when),
            Extent("obuf", f["out"], f["out"] + f["n"] - 1, when, "w")]


def _maxpool_extents(f, hw):
    last_s, when = _span(f["src"], [(f["out_h"], f["stride"] * f["in_w"]), (f["k_h"], f["in_w"]),
                                    (f["out_w"], f["stride"]), (f["k_w"], 1)], 1)
    return [Extent("obuf", f["src"], last_s, when),
            Extent("obuf", f["dst"], f["dst"] + f["out_h"] * f["out_w"] - 1, when, "w")]


F = Field
_SRAM = SRAM_ADDR_BITS
_DRAM = DRAM_ADDR_BITS

OPS: tuple[Op, ...] = (
    Op("LOAD", 1, "DMA a 2-D block of entries from DRAM into a buffer, with zero padding", (
        F("buf", 2, "target buffer: 0 ibuf, 1 wbuf, 2 bbuf, 3 obuf"),
        F("sram", _SRAM, "first buffer entry written"),
        F("dram", _DRAM, "DRAM word address of element (0, 0)"),
        F("y_size", 10, "rows of elements read"),
        F("x_size", 12, "elements per row read"),
        F("y_stride", 20, "DRAM words between rows"),
        F("x_stride", 16, "DRAM words between elements of a row (0 repeats one)"),
        F("pad_top", 3, "zero rows written before the first row"),
        F("pad_bottom", 3, "zero rows written after the last row"),
        F("pad_left", 3, "zero entries written before each row"),
        F("pad_right", 3, "zero entries written after each row"),
    ), """\
W = pad_left + x_size + pad_right
for y in range(pad_top + y_size + pad_bottom):
    for x in range(W):
        inside = pad_top <= y < pad_top + y_size and pad_left <= x < pad_left + x_size
        e = dram[dram + (y - pad_top) * y_stride + (x - pad_left) * x_stride] if inside else 0
        buf[sram + y * W + x] = e      # e: one entry, entry_words consecutive DRAM words""",
       _load_extents),
    Op("STORE", 2, "DMA a 2-D block of obuf entries out to DRAM", (
        F("sram", _SRAM, "first obuf entry read"),
        F("dram", _DRAM, "DRAM word address of element (0, 0)"),
        F("y_size", 10, "rows of elements"),
        F("x_size", 12, "elements per row"),
        F("y_stride", 20, "DRAM words between rows"),
        F("x_stride", 16, "DRAM words between elements of a row"),
    ), """\
for y in range(y_size):
    for x in range(x_size):
        dram[dram + y * y_stride + x * x_stride] = obuf[sram + y * x_size + x]""",
       _store_extents),
    Op("GEMM", 3, "stream input vectors through the weight-stationary array", (
        F("wgt", _SRAM, "wbuf entry of tile row 0; the tile is rows consecutive entries"),
        F("inp", _SRAM, "ibuf entry of vector (0, 0)"),
        F("acc", _SRAM, "abuf entry of result (0, 0)"),
        F("reset", 1, "1: overwrite the accumulators, 0: add to them"),
        F("n_outer", 10, "outer loop count"),
        F("n_inner", 10, "inner loop count"),
        F("inp_so", _SRAM, "ibuf step of the outer loop"),
        F("inp_si", 6, "ibuf step of the inner loop"),
        F("acc_so", _SRAM, "abuf step of the outer loop"),
        F("acc_si", 6, "abuf step of the inner loop"),
        F("inp_unsigned", 1, "1: the input vectors are uint8, 0: int8 (the default when "
          "omitted); the multipliers take them as 9-bit signed", default=0),
    ), """\
Wt = wbuf[wgt : wgt + rows]            # rows x cols int8, row r = input channel r
for o in range(n_outer):
    for i in range(n_inner):
        x = ibuf[inp + o * inp_so + i * inp_si]     # rows bytes: uint8 if inp_unsigned else int8
        a = acc + o * acc_so + i * acc_si
        abuf[a] = (0 if reset else abuf[a]) + x @ Wt            # cols int32, wraps
# the n_outer * n_inner entries `a` must be distinct (the compiler guarantees it)""",
       _gemm_extents),
    Op("POST", 4, "bias, shift with rounding, clamp: accumulators to int8 or uint8 outputs", (
        F("acc", _SRAM, "first abuf entry read"),
        F("out", _SRAM, "first obuf entry written"),
        F("bias", _SRAM, "bbuf entry added to every accumulator"),
        F("n", _SRAM, "entries processed"),
        F("shift", 6, "right shift s (negative: left shift)", signed=True),
        F("round", 2, "rounding of the shift: 0 half_up, 1 half_even, 2 half_down, 3 std_round"),
        F("lo", 9, "clamp floor (-128 none, 0 ReLU)", signed=True),
        F("hi", 9, "clamp ceiling (127 none, 6*2^f ReLU6; 255 a uint8 output)", signed=True),
        F("lane_shifts", 1, "1: lane c shifts by shift + bbuf[bias + 1][c] (per-channel "
          "weights), 0: every lane by shift (the default when omitted)", default=0),
        F("slope", 9, "LeakyReLU: negative sums times slope / 256 before the shift (256, "
          "the default when omitted: none)", default=256),
    ), """\
for j in range(n):
    for c in range(cols):
        off = bbuf[bias + 1][c] if lane_shifts else 0      # int32 lane
        s = (shift + off + 32) % 64 - 32     # modulo 64: only bits 5..0 of off count
        x = abuf[acc + j][c] + bbuf[bias][c]               # wraps at 32 bits
        if slope != 256:                      # x * slope / 256 if x < 0, one rounding
            x, s = (x * slope if x < 0 else x << 8), s + 8
        obuf[out + j][c] = requantize(x, s, round, lo, hi) & 0xff   # int8 or uint8 byte
# requantize is hwq.arch.requant.requantize (the slope step: its apply_slope); [lo, hi]
# lies within int8 (-128..127) or uint8 (0..255), and the byte is the value in that type.
# The compiler writes offsets 0..63 over shift = the least shift of the output block, so shift + off is the lane's own shift, in -32..31: the modulo never acts.""",
       _post_extents),
    Op("MAXPOOL", 5, "max over k_h x k_w windows of obuf entries", (
        F("src", _SRAM, "obuf entry of input pixel (0, 0); rows are in_w entries"),
        F("dst", _SRAM, "obuf entry of output pixel (0, 0); rows are out_w entries"),
        F("out_h", 8, "output rows"),
        F("out_w", 8, "output columns"),
        F("in_w", 10, "input row length in entries"),
        F("k_h", 4, "window height (0 writes nothing)"),
        F("k_w", 4, "window width (0 writes nothing)"),
        F("stride", 4, "window step, both directions"),
        F("unsigned", 1, "1: the entries are uint8, 0: int8 (the default when omitted)",
          default=0),
    ), """\
for oy in range(out_h):
    for ox in range(out_w):         # in this order: a later read sees an earlier write
        obuf[dst + oy * out_w + ox] = max(obuf[src + (oy * stride + ky) * in_w + ox * stride + kx]
                                          for ky in range(k_h) for kx in range(k_w))
# lane-wise, comparing the bytes as uint8 if unsigned else as int8""",
       _maxpool_extents),
    Op("END", 6, "stop; the status becomes ok and `done` rises", (), "halt()"),
)

BY_NAME = {op.name: op for op in OPS}
BY_OPCODE = {op.opcode: op for op in OPS}
for _op in OPS:
    assert OPCODE_BITS + sum(f.bits for f in _op.fields) <= INSTR_BITS, _op.name


def hazard(new: Extent, running: Extent):
    """Why an instruction touching `new` may not start while another unit runs one
    touching `running`: ("port", when) -- they need the same memory port -- or
    ("data", when) -- one writes entries the other reads; None if they never meet.
    `when` is an int, an Amaranth value or doc text, like the extents themselves."""
    if new.memory != running.memory:
        return None
    both = new.when & running.when
    if new.memory == "dram" or set(new.access) & set(running.access):
        return "port", both
    return "data", both & (running.last >= new.first) & (new.last >= running.first)


def hazards(new: Instr, running: Instr, cfg) -> list[str]:
    """The kinds of conflict ("port", "data") that hold `new` back while `running` is
    still running on another unit (empty: they overlap)."""
    out = []
    for e in BY_NAME[new.op].extents(new.fields, cfg):
        for f in BY_NAME[running.op].extents(running.fields, cfg):
            h = hazard(e, f)
            if h is not None and h[1]:
                out.append(h[0])
    return out


class IsaError(ValueError):
    """A word that is no instruction, or a field value that does not fit."""


@dataclass(frozen=True)
class Instr:
    op: str
    args: tuple[tuple[str, int], ...]

    @classmethod
    def make(cls, op: str, **args: int) -> "Instr":
        spec = BY_NAME[op]
        if spec.defaults:
            args = {**spec.defaults, **args}
        if args.keys() != spec.names:
            raise IsaError(f"{op} takes {', '.join(f.name for f in spec.fields)}; "
                           f"got {', '.join(sorted(args))}")
        values = []
        for name, _, _, lo, hi in spec.plan:
            v = args[name]
            if not lo <= v <= hi:
                f = spec.field(name)
                raise IsaError(f"{op}.{name}={v} does not fit {f.bits} bits "
                               f"({'signed' if f.signed else 'unsigned'})")
            values.append((name, int(v)))
        return cls(op, tuple(values))

    def __getitem__(self, name: str) -> int:
        return dict(self.args)[name]

    @property
    def fields(self) -> dict[str, int]:
        return dict(self.args)


def encode(instr: Instr) -> int:
    spec = BY_NAME[instr.op]
    word = spec.opcode
    for (_, off, mask, _, _), (_, v) in zip(spec.plan, instr.args):
        word |= (v & mask) << off
    return word


def decode(word: int) -> Instr:
    opcode = word & ((1 << OPCODE_BITS) - 1)
    spec = BY_OPCODE.get(opcode)
    if spec is None:
        raise IsaError(f"illegal opcode {opcode}")
    args = {}
    for name, off, mask, lo, _ in spec.plan:
        v = (word >> off) & mask
        if lo < 0 and v > mask >> 1:      # signed: the top bit set is negative
            v -= mask + 1
        args[name] = v
    return Instr.make(spec.name, **args)


INSTR_BYTES = INSTR_BITS // 8


def memory_words(cfg, memory: str) -> int:
    """Entries of a buffer, or words of DRAM, in hardware config `cfg`."""
    return cfg.dram_words if memory == "dram" else getattr(cfg, f"{memory}_depth")


def range_violation(instr: Instr, cfg) -> Extent | None:
    """The first extent of `instr` that leaves its memory (status `address_range`), or
    None when every access is in range."""
    for e in BY_NAME[instr.op].extents(instr.fields, cfg):
        if e.when and e.last >= memory_words(cfg, e.memory):
            return e
    return None


def unsupported(instr: Instr, cfg) -> str | None:
    """The field of `instr` asking for what this hardware config leaves out (status
    `unsupported`, checked before the ranges): a POST slope without the slope multiplier
    (`leaky_relu: false`). None when the hardware has all it needs."""
    if instr.op == "POST" and not cfg.leaky_relu \
            and instr["slope"] != BY_NAME["POST"].field("slope").default:
        return "slope"
    return None


def to_bytes(program: list[Instr]) -> bytes:
    return b"".join(encode(i).to_bytes(INSTR_BYTES, "little") for i in program)


def from_bytes(blob: bytes) -> list[Instr]:
    if len(blob) % INSTR_BYTES:
        raise IsaError(f"program is {len(blob)} bytes, not a multiple of {INSTR_BYTES}")
    return [decode(int.from_bytes(blob[k:k + INSTR_BYTES], "little"))
            for k in range(0, len(blob), INSTR_BYTES)]


def format_instr(instr: Instr) -> str:
    return " ".join([f"{instr.op:<7}"] + [f"{n}={v}" for n, v in instr.args]).rstrip()


def disassemble(blob: bytes, comments: dict[int, str] | None = None) -> str:
    """One line per instruction: index, hex word, mnemonic and fields; `comments` maps an
    instruction index to a note (the compiler passes layer and tile)."""
    lines = []
    for k in range(0, len(blob), INSTR_BYTES):
        word = int.from_bytes(blob[k:k + INSTR_BYTES], "little")
        idx = k // INSTR_BYTES
        try:
            text = format_instr(decode(word))
        except IsaError as e:
            text = f".word   0x{word:032x}  ; {e}"
        note = f"  ; {comments[idx]}" if comments and idx in comments else ""
        lines.append(f"{idx:6d}: {word:032x}  {text}{note}")
    return "\n".join(lines) + "\n"


def disassembly_notes(text: str) -> dict[int, str]:
    """The `comments` a disassembly was written with: instruction index -> note."""
    notes = {}
    for line in text.splitlines():
        head, sep, note = line.partition(";")
        index, colon, rest = head.partition(":")
        if sep and colon and not rest.strip().startswith(".word"):
            notes[int(index)] = note.strip()
    return notes


def assemble(text: str) -> list[Instr]:
    """Inverse of format_instr, one instruction a line; `;` starts a comment and a
    leading `N: hexword` (disassembler output) is skipped."""
    program = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"^\s*\d+:\s*[0-9a-f]{32}\s*", "", line.split(";")[0]).strip()
        if not line:
            continue
        op, *pairs = line.split()
        try:
            program.append(Instr.make(op.upper(), **{k: int(v, 0) for k, v in
                                                     (p.split("=", 1) for p in pairs)}))
        except (KeyError, ValueError) as e:
            raise IsaError(f"line {lineno}: cannot assemble {line!r} ({e})") from None
    return program


class _Sym:
    """An expression as text, for printing the extents: the same functions the ISS and the
    RTL evaluate, evaluated over names."""

    def __init__(self, text, prec=9):
        self.text, self.prec = str(text), prec

    @staticmethod
    def of(v):
        return v if isinstance(v, _Sym) else _Sym(v)

    def _bin(self, other, op, prec, swap=False):
        a, b = (_Sym.of(other), self) if swap else (self, _Sym.of(other))
        if op == "&" and a.text == "True":
            return b
        if op == "*" and "1" in (a.text, b.text):
            return b if a.text == "1" else a
        wrap = lambda x, p: f"({x.text})" if x.prec < p else x.text
        return _Sym(f"{wrap(a, prec)} {op} {wrap(b, prec + (op == '-'))}", prec)

    def __add__(self, o): return self._bin(o, "+", 4)
    def __radd__(self, o): return self._bin(o, "+", 4, True)
    def __sub__(self, o): return self._bin(o, "-", 4)
    def __mul__(self, o): return self._bin(o, "*", 5)
    def __rmul__(self, o): return self._bin(o, "*", 5, True)
    def __gt__(self, o): return self._bin(o, ">", 3)
    def __ge__(self, o): return self._bin(o, ">=", 3)
    def __eq__(self, o): return self._bin(o, "==", 3)
    def __and__(self, o): return self._bin(o, "&", 2)
    def __rand__(self, o): return self._bin(o, "&", 2, True)
    __hash__ = object.__hash__


class _SymHw:
    rows = _Sym("rows")

    @staticmethod
    def entry_words(buf):
        return _Sym(f"entry_words({buf})")


def extent_rows(op: Op) -> list[str]:
    """The markdown table rows of `op`'s extents."""
    rows = []
    for e in op.extents({f.name: _Sym(f.name) for f in op.fields}, _SymHw()):
        when = "always" if _Sym.of(e.when).text == "True" else f"`{_Sym.of(e.when).text}`"
        rows.append(f"| {e.memory} | `{_Sym.of(e.first).text}` | `{_Sym.of(e.last).text}` | {when} |")
    return rows


def hazard_rows() -> list[str]:
    """The markdown rows of the hazard table: for each pair of ops on different units,
    what holds the new one back while the other runs. Fields of the running
    instruction are primed."""
    rows = []
    for new in OPS:
        for running in OPS:
            if new is running or not new.fields or not running.fields:
                continue
            mine = new.extents({f.name: _Sym(f.name) for f in new.fields}, _SymHw())
            theirs = running.extents({f.name: _Sym(f.name + "'") for f in running.fields},
                                     _SymHw())
            for e in mine:
                for f in theirs:
                    h = hazard(e, f)
                    if h is not None:
                        rows.append(f"| {new.name} | {running.name} | {e.memory} | {h[0]} | "
                                    f"`{_Sym.of(h[1]).text}` |")
    return rows


def reference_markdown() -> str:
    """docs/isa.md, generated: the table above as a page (a test keeps the file fresh)."""
    out = [f"# hwq ISA, version {ISA_VERSION}", "",
           "Generated from `hwq/arch/isa.py` by `hwq isa-doc`; do not edit by hand.", "",
           __doc__.split("\n\n", 2)[2].strip(), "",
           f"Opcodes not listed are illegal: the accelerator stops with status "
           f"`illegal_opcode` ({STATUS['illegal_opcode']}); a POST slope other than 256 on "
           f"hardware built without the slope multiplier (`leaky_relu: false`) stops with "
           f"`unsupported`. Status codes: "
           + ", ".join(f"`{k}` = {v}" for k, v in STATUS.items()) + ".", ""]
    sizes = ", ".join(f"{b}: `{b}_depth` entries" for b in BUFFERS)
    out += [f"Memory sizes: {sizes}; dram: `dram_words` words (the hardware config).", ""]
    out += ["## Hazards", "",
            "An instruction does not start while an earlier one that it conflicts with is "
            "still running on another unit; `when` is the condition over both "
            "instructions' fields (the running one's primed). A GEMM's abuf range counts as "
            "in use, whatever its `when`, until the array has drained.", "",
            "| new | running | memory | kind | when |", "| --- | --- | --- | --- | --- |",
            *hazard_rows(), ""]
    for op in OPS:
        out += [f"## {op.name} (opcode {op.opcode})", "", op.summary + ".", "",
                "| bits | field | meaning |", "| --- | --- | --- |",
                f"| {OPCODE_BITS - 1}:0 | opcode | {op.opcode} |"]
        for f, off in zip(op.fields, op.offsets().values()):
            kind = " (signed)" if f.signed else ""
            out.append(f"| {off + f.bits - 1}:{off} | `{f.name}` | {f.doc}{kind} |")
        out += ["", "```python", op.semantics, "```", ""]
        ext = extent_rows(op)
        if ext:
            out += ["Extents (`address_range` unless `last` < the memory's size wherever "
                    "`when` holds):", "", "| memory | first | last | when |",
                    "| --- | --- | --- | --- |", *ext, ""]
    return "\n".join(out)
