"""Timing facts the RTL and the cycle model both obey: how many cycles the front end
takes to fetch and check an instruction, how long each unit is busy, and which pipeline
registers a hardware config has. hwq/rtl builds its pipelines from these; hwq/sim/cycles.py
schedules instructions with them; the compiler's cost estimates read them too.

Unit busy time after the start cycle, memory never stalling and nothing fetched:

  LOAD     items + 1   items = y_size*x_size*entry_words (DRAM reads) + padding entries
           + o         (zero entries), one per cycle the DRAM port is free; +1: the last
                       item's buffer write, o (read_regs) cycles later from registers
  STORE    1 + n*entry_words   one obuf read ahead, then one DRAM write per word
  GEMM     O - 1       O = max(V + 1, rows, cols), V = n_outer*n_inner: the unit takes the
                       next GEMM in cycle O while the array drains; its last accumulator
                       write is in cycle V + rows + cols + 3 + m (none for V = 0; m =
                       mul_regs: 1 where the multipliers register their operands)
  POST     n + 4 + o   one abuf read a cycle, each write 4 + o + l + d cycles later; o = 1
           + l + d     with `overlap` (read_regs: POST and MAXPOOL register their buffers'
                       read data); l = 3 with the slope multipliers (`leaky_relu`,
                       slope_regs); d = 3 with `overlap` (lane_regs: more stages in
                       POST's lanes)
  MAXPOOL  P*K + 1     one obuf read per window element (P = out_h*out_w, K = k_h*k_w),
           + 2*o       each folded in 1 + o cycles later, a window's result written o
                       cycles after its last element's (from a register)
"""
from __future__ import annotations

from hwq.arch import isa
from hwq.arch.config import HwConfig

# A multiplier's product comes LATENCY cycles after its operands (hwq/rtl/mul.py: operands
# and product registered, inside the DSP blocks on an ECP5).
MUL_LATENCY = 2
CHECK_CYCLES = 8


def read_regs(cfg: HwConfig) -> int:
    """1 where POST, MAXPOOL and GEMM's accumulate register their buffers' read data
    before their adders and comparators, and MAXPOOL and LOAD their buffer writes
    (hwq/rtl/post.py, pool.py, gemm.py, dma.py): with `overlap`; the builds without it
    are the nearly full small FPGAs."""
    return 1 if cfg.overlap else 0


def mul_regs(cfg: HwConfig) -> int:
    """1 where the array's multipliers register their operands as well as their product
    (hwq/rtl/mul.py: inside the DSP blocks on an ECP5), one cycle more through the
    array: where read_regs is 1, for the same FPGAs."""
    return read_regs(cfg)


def lane_regs(cfg: HwConfig) -> int:
    """The stages POST's lanes add halfway through their shifter, after it and after
    their rounding (hwq/rtl/post.py): 3 where read_regs is 1, for the same FPGAs."""
    return 3 * read_regs(cfg)


def slope_regs(cfg: HwConfig) -> int:
    """The stages of POST's LeakyReLU multiply (hwq/rtl/post.py): its multipliers'
    registered operands and product (hwq/rtl/mul.py), then the sum; 0 without it."""
    return (MUL_LATENCY + 1) * cfg.leaky_relu


def front_end_cycles(cfg: HwConfig) -> int:
    """Fetch and check of an instruction, up to its first dispatch cycle."""
    return cfg.instr_words + 1 + CHECK_CYCLES


def fetch_cycles(cfg: HwConfig) -> int:
    """Cycles of a run that stops at its first instruction (END alone)."""
    return front_end_cycles(cfg) + 1


def gemm_occupancy(instr: isa.Instr, cfg: HwConfig) -> int:
    v = instr["n_outer"] * instr["n_inner"]
    return max(v + 1, cfg.rows, cfg.cols)


def dram_items(instr: isa.Instr, cfg: HwConfig) -> int:
    """DRAM-port cycles a LOAD or STORE needs (a LOAD's padding entries included)."""
    f = instr.fields
    if instr.op == "STORE":
        return f["y_size"] * f["x_size"] * cfg.entry_words("obuf")
    h = f["pad_top"] + f["y_size"] + f["pad_bottom"]
    w = f["pad_left"] + f["x_size"] + f["pad_right"]
    inside = f["y_size"] * f["x_size"]
    return inside * cfg.entry_words(isa.LOAD_TARGETS[f["buf"]]) + (h * w - inside)


def unit_cycles(instr: isa.Instr, cfg: HwConfig) -> int:
    """Busy cycles after the start cycle with nothing fetched meanwhile."""
    f = instr.fields
    if instr.op == "LOAD":
        return dram_items(instr, cfg) + 1 + read_regs(cfg)
    if instr.op == "STORE":
        return 1 + dram_items(instr, cfg)
    if instr.op == "GEMM":
        return gemm_occupancy(instr, cfg) - 1
    if instr.op == "POST":
        return f["n"] + 4 + read_regs(cfg) + slope_regs(cfg) + lane_regs(cfg)
    if instr.op == "MAXPOOL":
        return f["out_h"] * f["out_w"] * f["k_h"] * f["k_w"] + 1 + 2 * read_regs(cfg)
    raise ValueError(f"{instr.op} runs on no unit")


def instr_cycles(instr: isa.Instr, cfg: HwConfig) -> int:
    """Cycles of one instruction run alone: front end, dispatch and its unit."""
    return fetch_cycles(cfg) + unit_cycles(instr, cfg)
