"""The facts every layer shares: the ISA, the hardware config, the requantization rule,
the timing the RTL and the cycle model obey, the performance counters' names."""
