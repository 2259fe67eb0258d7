"""The hardware config: the one object from which the RTL, the compiler and the ISS
all take the shape of the accelerator.

`HwConfig()` is the default, written once (the dataclass's defaults, grouped by what
they size); every other config is a delta of it: a YAML file in hwq/configs/hw/ (or a
board file's `hardware:` section) lists only the fields that differ, over the default
or over the config its `base:` names, as Gemmini's configs are `.copy(...)`s of one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from math import lcm
from pathlib import Path

from hwq.arch import isa
from hwq.errors import HwqError
from hwq.schema import Rule, check_fields, read_yaml

CONFIGS = resources.files("hwq") / "configs" / "hw"


@dataclass(frozen=True)
class HwConfig:
    """Shape of one accelerator instance.

    The array is weight-stationary: `rows` input channels meet `cols` output channels,
    so an input vector is `rows` int8 lanes and an accumulator entry is `cols` int32.
    """

    name: str = "default"
    rows: int = 8
    cols: int = 8
    ibuf_depth: int = 2048   # entries of `rows` int8 (input activations)
    wbuf_depth: int = 1024   # entries of `cols` int8 (one weight-tile row each)
    bbuf_depth: int = 64     # entries of `cols` int32 (biases)
    abuf_depth: int = 512    # entries of `cols` int32 (accumulators)
    obuf_depth: int = 1024   # entries of `cols` int8 (requantized outputs)
    bus_bytes: int = 8       # DRAM word: the memory port moves one word per beat
    dram_words: int = 1 << 16
    acc_bits: int = 32
    # units run concurrently (decoupled load / compute / store, hazards checked in
    # hardware); False runs one instruction at a time and saves the per-unit instruction
    # registers and hazard comparators, for the smallest FPGAs
    overlap: bool = True
    # POST multiplies negative sums by a slope (LeakyReLU, the ISA's POST `slope`); False
    # leaves the multipliers out, for FPGAs without the DSPs, and such a POST stops the
    # run with status `unsupported`
    leaky_relu: bool = True
    # DRAM reads the memory port keeps in flight. 1: a memory that answers every read in
    # the next cycle (on-chip block RAM), the port a plain one-cycle read; more: a memory
    # of any latency (an SDRAM controller), each read's destination queued until its data
    # comes back with `rvalid` (hwq/rtl/ports.py), as many at once as this says
    dram_reads: int = 1

    def __post_init__(self):
        def need(cond, what):
            if not cond:
                raise HwqError(f"hardware config '{self.name}': {what}")

        need(2 <= self.rows <= 16 and 2 <= self.cols <= 16,
             f"array {self.rows}x{self.cols} is outside 2x2..16x16")
        need(self.bus_bytes in (1, 2, 4, 8, 16), f"bus_bytes={self.bus_bytes} must be 1, 2, 4, 8 or 16")
        need(self.rows % self.bus_bytes == 0 and self.cols % self.bus_bytes == 0,
             f"bus_bytes={self.bus_bytes} must divide rows={self.rows} and cols={self.cols} "
             "(a buffer entry is a whole number of bus words)")
        need(self.acc_bits == 32, "acc_bits must be 32 (int32 accumulators)")
        need(1 <= self.dram_reads <= 64, f"dram_reads={self.dram_reads} must be 1..64")
        for buf in isa.BUFFERS:
            depth = getattr(self, f"{buf}_depth")
            need(depth >= 1 and depth & (depth - 1) == 0, f"{buf}_depth={depth} must be a power of two")
            need(depth <= 1 << isa.ADDR_BITS[buf], f"{buf}_depth={depth} exceeds the ISA's "
                 f"{isa.ADDR_BITS[buf]}-bit {buf} address")
        need(self.dram_words & (self.dram_words - 1) == 0 and
             self.dram_words <= 1 << isa.DRAM_ADDR_BITS,
             f"dram_words={self.dram_words} must be a power of two within the ISA's "
             f"{isa.DRAM_ADDR_BITS}-bit DRAM address")

    # ---- derived views: the software's picture of the hardware ----
    def entry_bytes(self, buf: str) -> int:
        return {"ibuf": self.rows, "wbuf": self.cols, "bbuf": 4 * self.cols,
                "obuf": self.cols, "abuf": 4 * self.cols}[buf]

    def entry_words(self, buf: str) -> int:
        return self.entry_bytes(buf) // self.bus_bytes

    @property
    def channel_block(self) -> int:
        """Channels of a stored activation are padded to a multiple of this, so that a
        pixel splits into whole `rows`-wide loads and whole `cols`-wide stores."""
        return lcm(self.rows, self.cols)

    @property
    def instr_words(self) -> int:
        return isa.INSTR_BITS // (8 * self.bus_bytes)

    def to_dict(self) -> dict:
        """Every field, but those added since at the value that keeps what configs were
        before them (so their fingerprints, and the boards' identities, stay as they were)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _ADDED or v != _ADDED[k]}

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({**self.to_dict(), "name": None, "isa": isa.ISA_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "HwConfig":
        """A config from all of its fields or some (the others default), checked."""
        return cls(**check_fields(data, FIELDS, source, defaults=False))


# Fields added after configs were in use, with the value that keeps their hardware as it was.
_ADDED = {"dram_reads": 1}
# The keys a config file may give: every field, by its type.
FIELDS = {f.name: Rule({"bool": bool, "int": int, "str": str}[str(f.type)], default=f.default)
          for f in dataclasses.fields(HwConfig)}
_MAX_BASES = 8       # `base:` chains longer than this are a loop


def named_file(name_or_path: str | Path, directory: Traversable, what: str) -> Traversable:
    """The YAML file `name_or_path` names: `<directory>/<name>.yaml` for a bare name, else
    the path itself. Fails naming what is available."""
    text = str(name_or_path)
    if Path(text).suffix in (".yaml", ".yml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise HwqError(f"{what} file {path} not found")
        return path
    found = directory / f"{text}.yaml"
    if not found.is_file():
        raise HwqError(f"{what} '{text}' not found; available: {', '.join(available(directory))}"
                       f" (or give a path to a .yaml file)")
    return found


def available(directory: Traversable) -> list[str]:
    """The names of the YAML files shipped in `directory`."""
    return sorted(f.name[:-5] for f in directory.iterdir() if f.name.endswith(".yaml"))


def hardware_fields(data: dict, source: str, depth: int = 0) -> dict:
    """The fields a config file's mapping (or a board file's `hardware:` section) sets,
    its `base:` chain resolved: every field it sets over those of the config it names.
    Each file's fields are a mapping: the file itself, or its `hardware:` section."""
    if not isinstance(data, dict):
        raise HwqError(f"{source}: hardware: must be a mapping of hardware fields, got "
                       f"{type(data).__name__}")
    data = dict(data)
    base = data.pop("base", "default")
    if not isinstance(base, str):
        raise HwqError(f"{source}: base: {base!r} must name a hardware config")
    fields = check_fields(data, FIELDS, source, "hardware" if depth == 0 else "", defaults=False)
    if depth:
        fields.pop("name", None)      # a base lends its fields, not its name
    if base == "default":
        return fields
    if depth >= _MAX_BASES:
        raise HwqError(f"{source}: base: the chain of bases is a loop")
    if Path(base).suffix in (".yaml", ".yml") and not Path(base).is_absolute():
        base = str(Path(source).parent / base)      # a path is relative to the file naming it
    path = named_file(base, CONFIGS, "hardware config")
    under = read_yaml(path, "hardware config")
    return {**hardware_fields(under.get("hardware", under), str(path), depth + 1), **fields}


def load_hw_config(name_or_path: str | Path = "default") -> HwConfig:
    """A config shipped in hwq/configs/hw/ by name, or a YAML file by path; a board
    file's `hardware:` section is read too."""
    path = named_file(name_or_path, CONFIGS, "hardware config")
    data = read_yaml(path, "hardware config")
    return HwConfig(**{"name": Path(str(path)).stem,
                       **hardware_fields(data.get("hardware", data), str(path))})
