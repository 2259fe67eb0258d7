"""Board files: hwq/boards/<name>.yaml (or a YAML path).

A board file has a `board:` section -- the amaranth-boards platform class, the clock the
design targets (a PLL is made when it is not the oscillator's), the UART baud rate, the
nextpnr seed, optional `uart_pins` for a board without a UART, optional `synth_opts` for
yosys, the `memory` that holds the accelerator's DRAM -- and a `hardware:` section, the
board's hardware config as a delta of the default (hwq/arch/config.py).

`memory: {kind, bytes}`: the SoC's memory for the accelerator's DRAM and its size, the
hardware config's whole DRAM, so its bytes are dram_words x bus_bytes (the default when
the key is absent). On chip: `block_ram`, or `spram` (the iCE40UP's single-port RAM). Off
chip: `sdram`, the board's `sdram` resource, an MT48LC16M16A2 (hwq/arch/sdram.py) behind
hwq/rtl/sdram.py's controller. A package compiled for the board records it, and `hwq
run` refuses a package whose DRAM image it does not hold.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hwq.arch.config import HwConfig, available, hardware_fields, named_file
from hwq.arch.sdram import MT48LC16M16A2, SdramTiming, check_serves
from hwq.errors import HwqError
from hwq.package import MEMORY_KINDS, Package
from hwq.rtl.uart import MAX_BAUD_ERROR, baud_error, uart_divisor
from hwq.schema import Rule, check_fields, read_yaml

BOARDS = resources.files("hwq") / "boards"
OPEN_FAMILIES = ("iCE40", "ecp5")
# The `board:` section's keys.
FIELDS = {
    "platform": Rule(str),                              # module:Class in amaranth_boards
    "clock_mhz": Rule(float, bounds=(0, 1000)),
    "baud": Rule(int, default=115200, bounds=(0, 100_000_000)),
    "seed": Rule(int, default=1, bounds=(0, 1 << 31)),
    "uart_pins": Rule(dict, default=None),              # {rx, tx, connector}
    "synth_opts": Rule(str, default=""),
    "memory": Rule(dict, default=None),                 # {kind, bytes}; default: block RAM
}
MEMORY = {"kind": Rule(str, values=tuple(MEMORY_KINDS)), "bytes": Rule(int, bounds=(0, 1 << 40))}
# `uart_pins`: the pins of a UART the board lacks, on one of its connectors.
UART_PINS = {"rx": Rule(str), "tx": Rule(str), "connector": Rule(str)}


def available_boards() -> list[str]:
    return available(BOARDS)


@dataclass(frozen=True)
class BoardMemory:
    kind: str                # a key of MEMORY_KINDS
    bytes: int

    def __str__(self) -> str:
        return f"{self.bytes} bytes of {MEMORY_KINDS[self.kind]}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bytes": self.bytes}

    def sdram(self, cfg: HwConfig, clock_hz: float) -> SdramTiming | None:
        """The SDRAM's timing at the SoC's clock, where the memory is one."""
        if self.kind != "sdram":
            return None
        timing = SdramTiming(MT48LC16M16A2, clock_hz / 1e6, cfg.bus_bytes)
        check_serves(cfg, timing)
        return timing


@dataclass(frozen=True)
class Board:
    name: str
    path: Path
    platform_ref: str        # "module:Class" in amaranth_boards
    clock_hz: float          # the sync clock the design targets
    baud: int
    seed: int
    uart_pins: dict | None
    synth_opts: str          # extra yosys synth_<family> options
    memory: BoardMemory      # what holds the accelerator's DRAM
    cfg: HwConfig

    def platform(self):
        mod, _, cls = self.platform_ref.partition(":")
        try:
            plat = getattr(importlib.import_module(mod), cls)()
        except (ImportError, AttributeError) as e:
            raise HwqError(f"board {self.name}: platform {self.platform_ref} not found ({e}); "
                           "pip install amaranth-boards") from None
        if self.uart_pins:
            from amaranth.build import Attrs
            from amaranth_boards.resources import UARTResource
            p = self.uart_pins
            attrs = Attrs(IO_TYPE="LVCMOS33") if plat.family == "ecp5" else Attrs()
            plat.add_resources([UARTResource(0, rx=p["rx"], tx=p["tx"],
                                             conn=(p["connector"], 0), attrs=attrs)])
        return plat

    @property
    def family(self) -> str:
        return self.platform().family

    @property
    def open_toolchain(self) -> bool:
        return self.family in OPEN_FAMILIES

    def uart_divisor(self, f_sync: float) -> int:
        return uart_divisor(f_sync, self.baud)


def load_board(name_or_path: str | Path) -> Board:
    path = named_file(name_or_path, BOARDS, "board")
    data = read_yaml(path, "board file")
    unknown = sorted(set(data) - {"board", "hardware"})
    if unknown or "board" not in data or "hardware" not in data:
        raise HwqError(f"{path}: a board file has a 'board:' and a 'hardware:' section"
                       + (f", not {', '.join(map(str, unknown))}" if unknown else ""))
    b = check_fields(data["board"], FIELDS, str(path), "board")
    if b["uart_pins"] is not None:
        check_fields(b["uart_pins"], UART_PINS, str(path), "board.uart_pins")
    name = Path(str(path)).stem
    clock_hz = b["clock_mhz"] * 1e6
    if uart_divisor(clock_hz, b["baud"]) < 4 or baud_error(clock_hz, b["baud"]) > MAX_BAUD_ERROR:
        div = max(4, round(clock_hz / b["baud"]))
        raise HwqError(f"{path}: board.baud {b['baud']} is not a rate the {b['clock_mhz']:g} MHz "
                       f"clock makes within {MAX_BAUD_ERROR:.0%} (it divides to "
                       f"{clock_hz / div:.0f} baud); choose a baud near clock / n, n >= 4")
    cfg = HwConfig(**{"name": name, **hardware_fields(data["hardware"], str(path))})
    on_chip = cfg.dram_words * cfg.bus_bytes
    mem = (check_fields(b["memory"], MEMORY, str(path), "board.memory")
           if b["memory"] is not None else {"kind": "block_ram", "bytes": on_chip})
    if mem["bytes"] != on_chip:
        raise HwqError(f"{path}: board.memory.bytes {mem['bytes']} is not the hardware's DRAM "
                       f"(dram_words x bus_bytes = {on_chip}), which the SoC builds in "
                       f"{MEMORY_KINDS[mem['kind']]}; make them equal")
    memory = BoardMemory(mem["kind"], mem["bytes"])
    try:
        memory.sdram(cfg, clock_hz)
    except HwqError as e:
        raise HwqError(f"{path}: {e}") from None
    return Board(name=name, path=Path(str(path)), platform_ref=b["platform"],
                 clock_hz=clock_hz, baud=b["baud"], seed=b["seed"],
                 uart_pins=b["uart_pins"], synth_opts=b["synth_opts"], memory=memory, cfg=cfg)


def check_fits(pkg: Package, board: Board) -> None:
    """Refuse a package whose DRAM image the board's memory does not hold."""
    pkg.check_memory(board.name, board.memory.to_dict())
