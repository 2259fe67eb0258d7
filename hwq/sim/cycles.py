"""Cycle model of the accelerator: how many clock cycles each instruction takes in the
RTL (hwq/rtl), fetch included. The ISS sums it; tests hold it to the RTL's own cycle
counter. Change it together with the RTL's control FSMs.
"""
from __future__ import annotations

from hwq.compiler import isa
from hwq.config import HwConfig


def instr_cycles(instr: isa.Instr, cfg: HwConfig) -> int:
    f = instr.fields
    fetch = cfg.instr_words + 1  # one beat per instruction word, one to decode
    if instr.op == "LOAD":
        name = isa.LOAD_TARGETS[f["buf"]]
        h = f["pad_top"] + f["y_size"] + f["pad_bottom"]
        w = f["pad_left"] + f["x_size"] + f["pad_right"]
        pad = h * w - f["y_size"] * f["x_size"]
        return fetch + f["y_size"] * f["x_size"] * cfg.entry_words(name) + pad + 1
    if instr.op == "STORE":
        return fetch + f["y_size"] * f["x_size"] * cfg.entry_words("obuf") + 1
    if instr.op == "GEMM":
        vectors = f["n_outer"] * f["n_inner"]
        return fetch + cfg.rows + vectors + cfg.rows + cfg.cols + 2
    if instr.op == "POST":
        return fetch + f["n"] + 3
    if instr.op == "MAXPOOL":
        return fetch + f["out_h"] * f["out_w"] * f["k_h"] * f["k_w"] + 2
    return fetch  # END
