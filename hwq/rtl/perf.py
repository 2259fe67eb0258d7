"""The performance counters of hwq/arch/perf.py, and the `perf` port's layout."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.arch.config import HwConfig
from hwq.arch.perf import COUNTER_BITS, COUNTERS, RUN_BITS


def perf_layout():
    """The `perf` port: every counter, COUNTER_BITS wide, LSB first in COUNTERS order."""
    return data.StructLayout({name: unsigned(COUNTER_BITS) for name in COUNTERS})


class PerfCounters(wiring.Component):
    """The counters of a run: `clear` (a run starts) zeroes them all; otherwise each
    counts the cycles in which its `events` bit is high, `macs` rows x cols a cycle (an
    input vector streamed through the array). Each holds RUN_BITS bits (macs
    log2(rows x cols) more); `perf` shows them COUNTER_BITS wide.

    Without overlap nothing waits in dispatch: stall_unit, stall_port and stall_data
    stay 0, and their adders are left out (~5% of the iCE40 that runs that way)."""

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        super().__init__({
            "clear": In(1),
            "events": In(data.StructLayout({name: 1 for name in COUNTERS})),
            "perf": Out(perf_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        macs = self.cfg.rows * self.cfg.cols
        never = () if self.cfg.overlap else ("stall_unit", "stall_port", "stall_data")
        bits = {"macs": RUN_BITS + (macs - 1).bit_length()}
        step = {"macs": macs}
        count = {name: Signal(bits.get(name, RUN_BITS), name=f"perf_{name}")
                 for name in COUNTERS if name not in never}
        m.d.comb += [getattr(self.perf, name).eq(sig) for name, sig in count.items()]
        with m.If(self.clear):
            m.d.sync += [sig.eq(0) for sig in count.values()]
        with m.Else():
            for name, sig in count.items():
                with m.If(getattr(self.events, name)):
                    m.d.sync += sig.eq(sig + step.get(name, 1))
        return m
