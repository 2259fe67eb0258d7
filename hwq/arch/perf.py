"""The accelerator's performance counters, named once: the RTL exposes them on its
`perf` port (a StructLayout in this order), the ISS computes the same ones from the
cycle model, and `hwq simulate` records them in the run metadata.

  cycles        cycles from start to the stop (the `cycles` port)
  instructions  instructions executed, the stopping one included
  macs          rows x cols per input vector streamed through the array (the `macs` port)
  fetch         cycles fetching and range-checking instructions, and the cycle each one
                starts its unit (or stops the run)
  stall_unit    cycles an instruction waits for its unit, busy with the one before
  stall_port    cycles it waits for a memory port another unit is using
  stall_data    cycles it waits for another unit to finish with entries it touches
  stall_idle    cycles the front end waits for every unit to go idle (END; and every
                instruction when the config has no overlap)
  load .. pool  cycles each execution unit is busy (LOAD, STORE, GEMM, POST, MAXPOOL);
                they overlap each other and the front end
  stall_mem     cycles a DRAM request waited for `ready` (memory back-pressure)

Every run cycle is counted once in the front end's five (fetch .. stall_idle), so those
sum to `cycles`; hwq/sim/cycles.py models them all.
"""
from __future__ import annotations

COUNTER_BITS = 64
# what the counters hold: 2^40 cycles is 3 h at 100 MHz (macs get log2(rows x cols) more
# bits); the ports stay COUNTER_BITS wide. 24 bits x 9 counters fewer is ~5% of an iCE40UP5K.
RUN_BITS = 40
UNIT_OF_OP = {"LOAD": "load", "STORE": "store", "GEMM": "gemm", "POST": "post",
              "MAXPOOL": "pool"}
FRONT_END = ("fetch", "stall_unit", "stall_port", "stall_data", "stall_idle")
COUNTERS = ("cycles", "instructions", "macs", *FRONT_END, *UNIT_OF_OP.values(), "stall_mem")

