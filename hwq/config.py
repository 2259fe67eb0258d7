"""The hardware config: the one object from which the RTL, the compiler and the ISS
all take the shape of the accelerator (DESIGN.md rule 3)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from math import lcm
from pathlib import Path

import yaml

from hwq.errors import HwqError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


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

    def __post_init__(self):
        from hwq.compiler import isa  # the ISA's field widths bound what a config may ask

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
        from hwq.compiler import isa
        return isa.INSTR_BITS // (8 * self.bus_bytes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def fingerprint(self) -> str:
        from hwq.compiler import isa
        blob = json.dumps({**self.to_dict(), "name": None, "isa": isa.ISA_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "HwConfig":
        if not isinstance(data, dict):
            raise HwqError(f"{source}: expected a mapping of hardware fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HwqError(f"{source}: unknown hardware field(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(known))}")
        for k, v in data.items():
            if k in _FLAGS:
                if not isinstance(v, bool):
                    raise HwqError(f"{source}: field '{k}' must be true or false, got {v!r}")
            elif k != "name" and (not isinstance(v, int) or isinstance(v, bool)):
                raise HwqError(f"{source}: field '{k}' must be an integer, got {v!r}")
        return cls(**data)


_FLAGS = {f.name for f in dataclasses.fields(HwConfig) if f.type in (bool, "bool")}


def read_named_yaml(name_or_path: str | Path, directory: Path, what: str) -> tuple[Path, dict]:
    """`<directory>/<name>.yaml`, or a YAML file path: its path and its mapping."""
    path = Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        raise HwqError(f"{what} '{name_or_path}' not found (looked for {path}); "
                       f"available: {', '.join(p.stem for p in sorted(directory.glob('*.yaml')))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HwqError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise HwqError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    return path, data


def load_hw_config(name_or_path: str | Path = "default") -> HwConfig:
    """Load `configs/<name>.yaml` or a YAML file path; a board file's `hardware:` section
    is accepted too."""
    path, data = read_named_yaml(name_or_path, CONFIG_DIR, "hardware config")
    data = data.get("hardware", data)
    data.setdefault("name", path.stem)
    return HwConfig.from_dict(data, source=str(path))
