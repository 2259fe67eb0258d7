"""Instruction-set simulator: a NumPy interpreter of the binary program over the DRAM
image, instruction by instruction, with the cycle model of hwq/sim/cycles.py.

It executes exactly the semantics written in hwq/arch/isa.py; each method below is
that pseudo-code, vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.arch import isa
from hwq.arch.requant import ROUND_MODES, requantize
from hwq.arch.config import HwConfig
from hwq.arch.perf import COUNTERS
from hwq.sim import cycles as cycle_model

# activation bytes are held as int8; the instructions that read them as uint8 (GEMM's
# inp_unsigned, MAXPOOL's unsigned) view them so
_LANE_DTYPE = {"ibuf": np.int8, "wbuf": np.int8, "bbuf": np.int32, "abuf": np.int32,
               "obuf": np.int8}


class IssError(Exception):
    """The program broke a rule the ISA states (the compiler should never emit this)."""


@dataclass
class RunResult:
    status: str
    pc: int                      # word address of the instruction that stopped the run
    instructions: int            # executed, the stopping one included
    cycles: int                  # the RTL's cycle counter, exactly (memory never stalling)
    starts: list[int] = field(default_factory=list)   # cycle each instruction started its unit
    array_macs: int = 0          # rows*cols per streamed vector, padding lanes included
    counters: dict[str, int] = field(default_factory=dict)   # the RTL's performance counters

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Step:
    """One executed instruction: the decoded instruction (None: illegal opcode), the
    status it stops with (None: it does not stop the run) and its array MACs."""
    instr: isa.Instr | None
    status: str | None
    macs: int = 0


class Machine:
    def __init__(self, cfg: HwConfig, dram: bytes | np.ndarray):
        self.cfg = cfg
        self.dram = np.zeros(cfg.dram_words * cfg.bus_bytes, dtype=np.uint8)
        image = np.frombuffer(bytes(dram), dtype=np.uint8)
        if image.size > self.dram.size:
            raise IssError(f"DRAM image of {image.size} bytes exceeds the configured "
                           f"{self.dram.size} bytes (dram_words={cfg.dram_words})")
        self.dram[:image.size] = image
        self.buf = {b: np.zeros((getattr(cfg, f"{b}_depth"), self._lanes(b)), _LANE_DTYPE[b])
                    for b in isa.BUFFERS}

    def _lanes(self, buf: str) -> int:
        return self.cfg.rows if buf == "ibuf" else self.cfg.cols

    # ---- DRAM entries: `entry_words` consecutive words (range-checked before use) ----
    def _entry_bytes_index(self, buf: str, word_addr: np.ndarray) -> np.ndarray:
        c = self.cfg
        words = word_addr[..., None] + np.arange(c.entry_words(buf))
        return (words[..., None] * c.bus_bytes + np.arange(c.bus_bytes)).reshape(
            *word_addr.shape, c.entry_bytes(buf))

    def _dram_read(self, buf: str, word_addr: np.ndarray) -> np.ndarray:
        raw = self.dram[self._entry_bytes_index(buf, word_addr)]
        return raw.view(_LANE_DTYPE[buf]).reshape(*word_addr.shape, self._lanes(buf))

    def _dram_write(self, buf: str, word_addr: np.ndarray, entries: np.ndarray) -> None:
        raw = np.ascontiguousarray(entries.astype(_LANE_DTYPE[buf])).view(np.uint8)
        self.dram[self._entry_bytes_index(buf, word_addr)] = raw.reshape(
            *word_addr.shape, self.cfg.entry_bytes(buf))

    # ---- the instructions ----
    def LOAD(self, buf, sram, dram, y_size, x_size, y_stride, x_stride,
             pad_top, pad_bottom, pad_left, pad_right):
        name = isa.LOAD_TARGETS[buf]
        h, w = pad_top + y_size + pad_bottom, pad_left + x_size + pad_right
        region = np.zeros((h, w, self._lanes(name)), _LANE_DTYPE[name])
        addr = dram + np.arange(y_size)[:, None] * y_stride + np.arange(x_size)[None, :] * x_stride
        region[pad_top:pad_top + y_size, pad_left:pad_left + x_size] = self._dram_read(name, addr)
        self.buf[name][sram + np.arange(h * w)] = region.reshape(h * w, self._lanes(name))

    def STORE(self, sram, dram, y_size, x_size, y_stride, x_stride):
        entries = self.buf["obuf"][sram + np.arange(y_size * x_size)]
        addr = dram + np.arange(y_size)[:, None] * y_stride + np.arange(x_size)[None, :] * x_stride
        self._dram_write("obuf", addr, entries.reshape(y_size, x_size, self.cfg.cols))

    def GEMM(self, wgt, inp, acc, reset, n_outer, n_inner, inp_so, inp_si, acc_so, acc_si,
             inp_unsigned):
        weights = self.buf["wbuf"][wgt + np.arange(self.cfg.rows)]
        o, i = np.arange(n_outer)[:, None], np.arange(n_inner)[None, :]
        x = self.buf["ibuf"][(inp + o * inp_so + i * inp_si).ravel()]
        if inp_unsigned:
            x = x.view(np.uint8)
        a = (acc + o * acc_so + i * acc_si).ravel()
        if np.unique(a).size != a.size:
            raise IssError("GEMM writes one accumulator entry twice (the ISA requires distinct entries)")
        product = x.astype(np.int64) @ weights.astype(np.int64)
        if not reset:
            product += self.buf["abuf"][a]
        self.buf["abuf"][a] = product.astype(np.int32)  # two's-complement wrap, as the adders
        return a.size

    def POST(self, acc, out, bias, n, shift, round, lo, hi, lane_shifts, slope):
        if n == 0:                      # touches nothing, bbuf[bias] included (isa extents)
            return
        mode = _MODE_OF_CODE[round]
        accs = self.buf["abuf"][acc + np.arange(n)]
        total = (accs.astype(np.int64) + self.buf["bbuf"][bias]).astype(np.int32)
        if not lane_shifts:     # obuf keeps the byte; a uint8 one is viewed as int8
            self.buf["obuf"][out + np.arange(n)] = requantize(total, shift, mode, lo, hi, slope).view(np.int8)
            return
        # the lane's shift: shift + the offset in bbuf[bias + 1], modulo 64 into -32..31
        shifts = (shift + self.buf["bbuf"][bias + 1].astype(np.int64) + _SHIFT_HALF) \
            % (2 * _SHIFT_HALF) - _SHIFT_HALF
        result = np.empty(total.shape, np.int8)
        for s in np.unique(shifts):     # the one requantize, per group of equal shifts
            lanes = shifts == s
            result[:, lanes] = requantize(total[:, lanes], int(s), mode, lo, hi, slope).view(np.int8)
        self.buf["obuf"][out + np.arange(n)] = result

    def MAXPOOL(self, src, dst, out_h, out_w, in_w, k_h, k_w, stride, unsigned):
        if k_h == 0 or k_w == 0:
            return
        obuf = self.buf["obuf"].view(np.uint8) if unsigned else self.buf["obuf"]
        window = (np.arange(k_h)[:, None] * in_w + np.arange(k_w)[None, :]).ravel()
        for oy in range(out_h):
            for ox in range(out_w):
                base = src + oy * stride * in_w + ox * stride
                obuf[dst + oy * out_w + ox] = obuf[base + window].max(axis=0)

    # ---- fetch / decode / execute ----
    def fetch(self, pc: int) -> int:
        c = self.cfg
        words = (pc + np.arange(c.instr_words)) % c.dram_words
        raw = self.dram[(words[:, None] * c.bus_bytes + np.arange(c.bus_bytes)).ravel()]
        return int.from_bytes(raw.tobytes(), "little")

    def step(self, pc: int) -> Step:
        """Execute the instruction at `pc` (or stop on it, changing nothing)."""
        try:
            instr = isa.decode(self.fetch(pc))
        except isa.IsaError:
            return Step(None, "illegal_opcode")
        if isa.unsupported(instr, self.cfg) is not None:
            return Step(instr, "unsupported")
        if isa.range_violation(instr, self.cfg) is not None:
            return Step(instr, "address_range")
        if instr.op == "END":
            return Step(instr, "ok")
        vectors = getattr(self, instr.op)(**instr.fields)
        return Step(instr, None, vectors * self.cfg.rows * self.cfg.cols if instr.op == "GEMM" else 0)

    def run(self, start_pc: int = 0, max_instructions: int = 1_000_000) -> RunResult:
        cfg = self.cfg
        pc, starts = start_pc, []
        timeline = cycle_model.Timeline(cfg)
        instructions = macs = 0
        while instructions < max_instructions:
            try:
                st = self.step(pc)
            except IssError as e:
                raise IssError(f"pc {pc}: {e}") from None
            instructions += 1
            macs += st.macs
            if st.status is not None:
                cycles = timeline.stop()
                counters = {**timeline.counters, "instructions": instructions, "macs": macs,
                            "stall_mem": 0}   # the model's memory never stalls
                return RunResult(st.status, pc, instructions, cycles, starts, macs,
                                 {name: counters[name] for name in COUNTERS})
            starts.append(timeline.issue(st.instr))
            pc = (pc + cfg.instr_words) % cfg.dram_words
        raise IssError(f"no END after {max_instructions} instructions (pc={pc})")

    def read_dram(self, word_addr: int, n_bytes: int) -> bytes:
        start = word_addr * self.cfg.bus_bytes
        return self.dram[start:start + n_bytes].tobytes()


_MODE_OF_CODE = {code: name for name, code in ROUND_MODES.items()}
_SHIFT_HALF = 1 << (isa.BY_NAME["POST"].field("shift").bits - 1)     # 32: shifts -32..31
