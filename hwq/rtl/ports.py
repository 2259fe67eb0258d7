"""Interface signatures shared by the accelerator's blocks.

DRAM port protocol (`DramPort`, the accelerator is the initiator):
  * one request per cycle at most: `re` (read) or `we` (write) with `addr` (a word
    address) and, for writes, `wdata`;
  * the request is accepted at a rising edge where `ready` is high; while `ready` is low
    the initiator holds the request unchanged (back-pressure);
  * read data comes back on `rdata` with `rvalid` high, one cycle after the read's
    acceptance or later, the reads answered in the order they were accepted. A config
    with `dram_reads` = 1 is built for a memory that answers in the very next cycle (on-
    chip block RAM): its units take the data then and look at no `rvalid`. With more,
    the units queue each read's destination (as many reads in flight as `dram_reads`)
    and take the data whenever `rvalid` brings it.
A memory that never stalls ties `ready` high and answers every read in the next cycle;
the cycle model (hwq/sim/cycles.py) assumes it does, whatever `dram_reads`.

Buffer ports follow amaranth.lib.memory: synchronous reads (data the cycle after `en`,
held while `en` is low), writes with one enable bit per `granularity` chunk.
"""
from __future__ import annotations

from amaranth.hdl import Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwq.arch.perf import UNIT_OF_OP

# the ops that run on a unit of their own, in the order of every per-unit vector and
# index (the units' busy bits, the trace's unit of a buffer write)
UNITS = tuple(UNIT_OF_OP)


class DramPort(wiring.Signature):
    """The port (above); `rvalid` only where the config keeps reads in flight
    (`dram_reads` > 1): a next-cycle memory's port has none."""

    def __init__(self, addr_bits: int, data_bits: int, rvalid: bool = False):
        self.addr_bits, self.data_bits = addr_bits, data_bits
        super().__init__({
            "addr": Out(unsigned(addr_bits)),
            "re": Out(1),
            "we": Out(1),
            "wdata": Out(unsigned(data_bits)),
            "rdata": In(unsigned(data_bits)),
            **({"rvalid": In(1)} if rvalid else {}),
            "ready": In(1),
        })


def dram_port(cfg, addr_bits: int) -> DramPort:
    """The DRAM port of `cfg`'s accelerator and of its units."""
    return DramPort(addr_bits, 8 * cfg.bus_bytes, rvalid=cfg.dram_reads > 1)


class SramRead(wiring.Signature):
    def __init__(self, addr_bits: int, data_bits: int):
        super().__init__({
            "addr": Out(unsigned(addr_bits)),
            "en": Out(1),
            "data": In(unsigned(data_bits)),
        })


class SramWrite(wiring.Signature):
    def __init__(self, addr_bits: int, data_bits: int, lanes: int = 1):
        super().__init__({
            "addr": Out(unsigned(addr_bits)),
            "en": Out(unsigned(lanes)),
            "data": Out(unsigned(data_bits)),
        })


def unit_members(args_layout) -> dict:
    """What every execution unit has: a start pulse (taken while `busy` is low), the
    decoded fields of its instruction (valid in the start cycle; `held_args` keeps them),
    `busy` from the cycle after the start up to its last cycle, and a done pulse in that
    last cycle."""
    return {"start": In(1), "args": In(args_layout), "busy": Out(1), "done": Out(1)}


def capture(m, when, pairs):
    """Drive each (register, value) pair: the register takes a copy of the value in every
    cycle `when` is high and keeps it while `when` is low."""
    with m.If(when):
        m.d.sync += [r.eq(v) for r, v in pairs]


def hold(m, busy, cfg, pairs):
    """Drive each (register, value) pair, values made from a unit's fields: with
    overlap the register takes a copy in every cycle the unit is idle (`busy` low), the
    start's among them, and keeps it while the unit is busy (the start, the end of the
    dispatch logic, would otherwise run on into the enables of all these registers);
    without overlap the instruction register holds until every unit is idle, and the
    value is used as is."""
    if cfg.overlap:
        capture(m, ~busy, pairs)
    else:
        m.d.comb += [r.eq(v) for r, v in pairs]


def held_args(m, unit, cfg):
    """The unit's fields for the cycles after its start. With overlap the top moves on to
    the next instruction at once, so the unit keeps a copy (`hold`); that copy also keeps
    the dispatch logic off every path through the unit's datapath."""
    if not cfg.overlap:
        return unit.args
    held = Signal(unit.args.shape(), name="held_args")
    hold(m, unit.busy, cfg, [(held, unit.args)])
    return held
