"""The scoreboard: what the instruction in dispatch waits for (isa.py: "Instructions
overlap"; isa.hazard is the rule, evaluated here over registers).

Ports:
  op, extents   the instruction in dispatch: its op, one-hot in isa.OPS order, and its
                extents (RangeCheck.extents), steady from the check's last cycle on
  busy          each unit's busy, UNITS order; draining: GEMM's array still draining
  unit_busy     the instruction's own unit is busy
  port_hazard   it needs a memory port that a running unit uses
  data_hazard   it touches entries a running unit writes, or writes entries one reads
  active        which units are busy (GEMM: or its array draining), UNITS order
  all_idle      none is

Without overlap one instruction runs at a time (the front end waits for `all_idle`), so
nothing is held and both hazards are 0. With it, the scoreboard keeps the extents of the
instruction each unit runs, like the unit its fields (hwq/rtl/ports.py hold): copied in
every cycle the unit is idle, the start's among them, so the start, at the end of the
dispatch logic, stays out of these registers' enables. The array drains after GEMM is
free (cycles.py), and GEMM's held extents follow the next instruction from then on: its
abuf extents are kept for the drain, captured from the held ones in every cycle GEMM is
busy (from the cycle after the start; the hazard terms read them in a check's last
cycle, the fetch and the check later), and count, whatever their `when`, until the
array has drained.

The hazards are registered, a register per hazard kind and busy signal: whether the
instruction (its op) meets an extent of that unit's running instruction. The
instruction's extents and the running units' change only at a dispatch, so from the
check's last cycle the registers hold for every dispatch cycle, and the hazards only AND
each with its busy signal: `port_hazard` and `data_hazard` are valid from the cycle
after `op` and `extents` are.
"""
from __future__ import annotations

import dataclasses

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.check import extent_layout, extents_of
from hwq.rtl.decode import op_index
from hwq.rtl.ports import UNITS, capture, hold


class Scoreboard(wiring.Component):
    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        super().__init__({
            "op": In(len(isa.OPS)),
            "extents": In(extent_layout(cfg)),
            "busy": In(len(UNITS)),
            "draining": In(1),
            "unit_busy": Out(1),
            "port_hazard": Out(1),
            "data_hazard": Out(1),
            "active": Out(len(UNITS)),
            "all_idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        op = {name: self.op[op_index(name)] for name in UNITS}
        busy = {name: self.busy[k] for k, name in enumerate(UNITS)}
        m.d.comb += [
            self.unit_busy.eq(Cat(op[n] & busy[n] for n in UNITS).any()),
            self.active.eq(Cat(busy[n] | (self.draining if n == "GEMM" else 0) for n in UNITS)),
            self.all_idle.eq(~self.active.any()),
        ]
        if not cfg.overlap:
            return m

        running = {}                         # each unit's held extents
        for name in UNITS:
            ext = Signal(extent_layout(cfg), name=f"{name.lower()}_extents")
            hold(m, busy[name], cfg, [(ext, self.extents)])
            running[name] = extents_of(ext, isa.BY_NAME[name], cfg)
        drains = {}                          # GEMM's abuf extents, kept for the drain
        for k, f in enumerate(running["GEMM"]):
            if f.memory == "abuf":
                first = Signal.like(f.first, name=f"gemm_drain_{k}_first")
                last = Signal.like(f.last, name=f"gemm_drain_{k}_last")
                capture(m, busy["GEMM"], [(first, f.first), (last, f.last)])
                drains[k] = isa.Extent(f.memory, first, last, Const(1), f.access)

        blocks = {}                          # (kind, busy signal's name) -> (busy, terms)
        for new in UNITS:
            for e in extents_of(self.extents, isa.BY_NAME[new], cfg):
                for other in UNITS:
                    if other == new:
                        continue
                    for k, f in enumerate(running[other]):
                        if other == "GEMM" and k in drains:
                            # this extent counts while the array drains, or while the
                            # unit is busy where the running GEMM writes it
                            lives = [("gemm_draining", self.draining, drains[k], Const(1)),
                                     ("gemm", busy[other], dataclasses.replace(f, when=Const(1)),
                                      f.when)]
                        else:
                            lives = [(other.lower(), busy[other], f, Const(1))]
                        for name, b, g, when in lives:
                            h = isa.hazard(e, g)
                            if h is not None:
                                blocks.setdefault((h[0], name), (b, []))[1].append(
                                    op[new] & h[1] & when)
        terms = {"port": [], "data": []}
        for (kind, name), (b, meets) in blocks.items():
            block = Signal(name=f"{kind}_{name}")
            m.d.sync += block.eq(Cat(*meets).any())
            terms[kind].append(b & block)
        m.d.comb += [self.port_hazard.eq(Cat(*terms["port"]).any()),
                     self.data_hazard.eq(Cat(*terms["data"]).any())]
        return m
