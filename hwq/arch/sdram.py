"""The SDR SDRAM a board carries, as the facts its controller (hwq/rtl/sdram.py) and the
chip model that checks it (hwq/sim/sdram.py) both take: the chip's geometry and
datasheet timings, its commands, the mode register, the timings in cycles of a clock, and
where a DRAM word lives (bank, row, column).

The ULX3S carries a Micron MT48LC16M16A2 (256 Mbit: 4 banks x 8192 rows x 512 columns
of 16 bits, 32 MiB); its -6A speed grade's figures are the default. A DRAM word of
`bus_bytes` is one burst of `bus_bytes / 2` beats: reads and writes move whole words, so
the mode register holds that burst length and no access needs a data mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from hwq.errors import HwqError

# Commands: (ras_n, cas_n, we_n) with cs_n low; a deselected chip (cs_n high) and NOP
# both do nothing.
COMMANDS = {
    "NOP": (1, 1, 1),
    "ACTIVE": (0, 1, 1),
    "READ": (1, 0, 1),
    "WRITE": (1, 0, 0),
    "BURST_TERMINATE": (1, 1, 0),
    "PRECHARGE": (0, 1, 0),             # address bit 10 high: every bank
    "AUTO_REFRESH": (0, 0, 1),
    "LOAD_MODE": (0, 0, 0),
}
COMMAND_OF = {pins: name for name, pins in COMMANDS.items()}
ALL_BANKS_BIT = 10                      # PRECHARGE's address bit for every bank
# The mode register (LOAD MODE's address bits): field -> (lowest bit, width). Burst length
# 2**code beats; burst type 0 sequential; CAS latency in cycles; the rest (operating mode,
# write burst mode, reserved) 0 for standard operation with programmed write bursts.
MODE_FIELDS = {"burst_code": (0, 3), "interleaved": (3, 1), "cas_latency": (4, 3),
               "rest": (7, 6)}


def mode_field(mode: int, name: str) -> int:
    """Field `name` of mode register value `mode`."""
    low, width = MODE_FIELDS[name]
    return mode >> low & ((1 << width) - 1)


@dataclass(frozen=True)
class SdramChip:
    """One chip: geometry, and the datasheet's timings in nanoseconds (clock cycles
    where it gives them so)."""

    name: str = "MT48LC16M16A2-6A"
    banks: int = 4
    row_bits: int = 13
    col_bits: int = 9
    data_bits: int = 16
    t_ck_cl2: float = 7.5       # the shortest clock period at CAS latency 2 (3: 6 ns)
    t_ck_cl3: float = 6.0
    t_rcd: float = 18           # ACTIVE to READ or WRITE
    t_rp: float = 18            # PRECHARGE to ACTIVE or AUTO REFRESH
    t_ras: float = 42           # ACTIVE to PRECHARGE (at least)
    t_ras_max: float = 120_000  # ACTIVE to PRECHARGE (at most)
    t_rc: float = 60            # ACTIVE to ACTIVE in one bank, AUTO REFRESH to AUTO REFRESH
    t_rrd: float = 12           # ACTIVE to ACTIVE in different banks
    t_rfc: float = 60           # AUTO REFRESH to any command
    t_wr: float = 12            # a write's last data to PRECHARGE
    mrd_cycles: int = 2         # LOAD MODE to any command
    refresh_ms: float = 64      # every row refreshed this often:
    refreshes: int = 8192       # ... by this many AUTO REFRESHes
    power_up_us: float = 100    # clock running, commands NOP, before the first PRECHARGE
    init_refreshes: int = 2     # AUTO REFRESHes between that PRECHARGE and LOAD MODE

    @property
    def nbytes(self) -> int:
        return (self.banks << (self.row_bits + self.col_bits)) * self.data_bits // 8

    @property
    def bank_bits(self) -> int:
        return (self.banks - 1).bit_length()

    @property
    def t_refi(self) -> float:
        """The average interval between AUTO REFRESHes, ns."""
        return self.refresh_ms * 1e6 / self.refreshes


MT48LC16M16A2 = SdramChip()


class _InCycles:
    """An SdramTiming attribute named x: the chip's t_x in cycles of the timing's clock."""

    def __set_name__(self, owner, name: str):
        self.field = "t_" + name

    def __get__(self, timing, owner=None) -> int:
        return timing.cycles(getattr(timing.chip, self.field))


@dataclass(frozen=True)
class SdramTiming:
    """`chip` driven at `clock_mhz` with DRAM words of `word_bytes`: every timing as the
    cycles that must pass between two commands' edges (a command at edge k, the next at
    edge k + n or later), rounded up."""

    chip: SdramChip
    clock_mhz: float
    word_bytes: int

    def __post_init__(self):
        beats, rest = divmod(8 * self.word_bytes, self.chip.data_bits)
        if rest or beats not in (1, 2, 4, 8):
            raise HwqError(f"a DRAM word of {self.word_bytes} bytes is not a burst of 1, 2, 4 "
                           f"or 8 beats of the {self.chip.name}'s {self.chip.data_bits} bits; "
                           "use bus_bytes 2, 4, 8 or 16")
        if self.period_ns < self.chip.t_ck_cl3:
            raise HwqError(f"{self.clock_mhz} MHz is faster than the {self.chip.name} runs "
                           f"(a {self.chip.t_ck_cl3} ns clock at the least)")

    @property
    def period_ns(self) -> float:
        return 1000 / self.clock_mhz

    def cycles(self, ns: float) -> int:
        return max(1, ceil(ns / self.period_ns - 1e-9))

    @property
    def cas_latency(self) -> int:
        """READ at edge k: the first beat is on the pins for edge k + cas_latency."""
        return 2 if self.period_ns >= self.chip.t_ck_cl2 else 3

    @property
    def burst(self) -> int:
        """Beats of one word (the mode register's burst length)."""
        return 8 * self.word_bytes // self.chip.data_bits

    # the datasheet's timings in cycles; wr: a WRITE's last beat (edge k + burst - 1) to
    # PRECHARGE (edge k + burst - 1 + wr)
    rcd, rp, ras, rc, rrd, rfc, wr = (_InCycles() for _ in range(7))

    @property
    def ras_max(self) -> int:
        return int(self.chip.t_ras_max / self.period_ns)

    @property
    def mrd(self) -> int:
        return self.chip.mrd_cycles

    @property
    def refi(self) -> int:
        """The most cycles from one AUTO REFRESH to the next (the model holds a controller
        to every interval, stricter than the datasheet's count per 64 ms)."""
        return int(self.chip.t_refi / self.period_ns)

    @property
    def power_up(self) -> int:
        return self.cycles(self.chip.power_up_us * 1000)

    @property
    def mode(self) -> int:
        """The mode register (MODE_FIELDS): this burst, sequential, this CAS latency."""
        fields = {"burst_code": self.burst.bit_length() - 1, "cas_latency": self.cas_latency}
        return sum(v << MODE_FIELDS[k][0] for k, v in fields.items())

    # ---- where a word lives: its column's low bits are the beat, then the word within
    # the row, then the bank, then the row, so a stream of words fills a row of every
    # bank before it needs another row in any ----
    @property
    def word_cols_bits(self) -> int:
        """Address bits of the word within a row."""
        return self.chip.col_bits - (self.burst.bit_length() - 1)

    @property
    def words(self) -> int:
        return self.chip.nbytes // self.word_bytes

    def locate(self, word: int) -> tuple[int, int, int]:
        """(bank, row, column of the first beat) of DRAM word `word`."""
        wc, bb = self.word_cols_bits, self.chip.bank_bits
        col = (word & ((1 << wc) - 1)) * self.burst
        bank = (word >> wc) & ((1 << bb) - 1)
        row = word >> (wc + bb)
        return bank, row, col


def check_serves(cfg, timing: SdramTiming) -> None:
    """Refuse, in one line, a hardware config (hwq/arch/config.py) that an SDRAM at
    `timing` cannot be the DRAM of."""
    if cfg.dram_reads < 2:
        raise HwqError(f"hardware config '{cfg.name}': an SDRAM answers reads late; set "
                       "dram_reads to 2 or more (8 keeps its bursts streaming)")
    if cfg.dram_words * cfg.bus_bytes > timing.chip.nbytes:
        raise HwqError(f"hardware config '{cfg.name}': its DRAM of {cfg.dram_words} x "
                       f"{cfg.bus_bytes} bytes is larger than the {timing.chip.name}'s "
                       f"{timing.chip.nbytes}; lower dram_words")
