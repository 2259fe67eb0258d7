"""The `perf` port's layout: the counters of hwq/arch/perf.py, in that order."""
from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

from hwq.arch.perf import COUNTER_BITS, COUNTERS


def perf_layout():
    """The `perf` port: every counter, COUNTER_BITS wide, LSB first in COUNTERS order."""
    return data.StructLayout({name: unsigned(COUNTER_BITS) for name in COUNTERS})
