"""Cycle model of the accelerator: how many clock cycles each instruction takes in the
RTL (hwq/rtl), fetch included. The ISS sums it; tests hold it to the RTL's own cycle
counter, exactly. Change it together with the RTL's control FSMs.

The RTL (hwq/rtl/top.py) runs one instruction at a time, and the memory is assumed
never to stall (`ready` high; a read answers the next cycle):

  fetch     instr_words cycles issuing one DRAM read each, 1 cycle taking the last word
  check     CHECK_CYCLES computing the instruction's extents against the memory sizes
            (isa.range_violation): the products of counts and strides on two shared
            multipliers, three stages (hwq/rtl/check.py), then the verdict, registered
            for dispatch
  dispatch  1 cycle decoding and starting the unit (the unit's cycle 0, set-up); an
            illegal opcode, an address out of range and END stop here
  unit      the unit's own cycles up to and including the one that raises done
  (the next fetch starts the cycle after done)

so every instruction costs fetch + CHECK_CYCLES + 1 + (unit cycles after its start
cycle):

  LOAD     items + 1   items = y_size*x_size*entry_words (DRAM reads) + padding entries
                       (one zero-entry write each); +1: the last item's buffer write
  STORE    1 + n*entry_words   one obuf read ahead, then one DRAM write per word
  GEMM     1 + V + (R + C)     1: after the first wbuf read; V vectors streamed, one a cycle;
                               R + C: array latency R + C - 1 plus the abuf write
  POST     n + 3       one abuf read a cycle, each write 3 cycles later (the read, then
                       the requantizer's two pipeline stages; n = 0 takes 3 too)
  MAXPOOL  P*K + 1     one obuf read per window element (P = out_h*out_w, K = k_h*k_w)
  END      0           stops in dispatch (as do illegal and out-of-range instructions)
"""
from __future__ import annotations

from hwq.compiler import isa
from hwq.config import HwConfig

CHECK_CYCLES = 4


def fetch_cycles(cfg: HwConfig) -> int:
    """Fetch, check and dispatch of any instruction (one that stops the run costs just
    these)."""
    return cfg.instr_words + 1 + CHECK_CYCLES + 1


def instr_cycles(instr: isa.Instr, cfg: HwConfig) -> int:
    f = instr.fields
    base = fetch_cycles(cfg)
    if instr.op == "LOAD":
        name = isa.LOAD_TARGETS[f["buf"]]
        h = f["pad_top"] + f["y_size"] + f["pad_bottom"]
        w = f["pad_left"] + f["x_size"] + f["pad_right"]
        inside = f["y_size"] * f["x_size"]
        items = inside * cfg.entry_words(name) + (h * w - inside)
        return base + items + 1
    if instr.op == "STORE":
        return base + 1 + f["y_size"] * f["x_size"] * cfg.entry_words("obuf")
    if instr.op == "GEMM":
        vectors = f["n_outer"] * f["n_inner"]
        return base + 1 + vectors + cfg.rows + cfg.cols
    if instr.op == "POST":
        return base + f["n"] + 3
    if instr.op == "MAXPOOL":
        return base + f["out_h"] * f["out_w"] * f["k_h"] * f["k_w"] + 1
    return base  # END

