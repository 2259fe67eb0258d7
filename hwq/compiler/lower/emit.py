"""What the lowerings write: the program (each instruction with its layer, and a note
where one helps reading it), the DRAM bytes of the constant regions, and the error for a
layer the hardware cannot hold."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.compiler.ir import QLayer
from hwq.compiler.layout import MemoryMap, Region
from hwq.errors import HwqError


@dataclass
class Emitter:
    """The program so far: `emit(op, note, **fields)` appends an instruction of `layer`."""
    cfg: HwConfig
    program: list[isa.Instr] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    layer_of: list[str] = field(default_factory=list)
    layer: str = ""

    def __call__(self, op: str, note: str = "", **fields: int) -> None:
        try:
            instr = isa.Instr.make(op, **fields)
        except isa.IsaError as e:
            raise HwqError(f"layer '{self.layer}' does not fit the ISA: {e}; "
                           "use smaller tiles or a larger hardware config") from None
        if note:
            self.notes[len(self.program)] = f"{self.layer}: {note}"
        self.layer_of.append(self.layer)
        self.program.append(instr)


def require(cond: bool, layer: QLayer, what: str) -> None:
    """Refuse `layer` unless `cond`, saying `what` does not fit."""
    if not cond:
        raise HwqError(f"layer '{layer.name}' does not fit the hardware: {what}")


class Image:
    """The DRAM bytes of the constant regions (weights, biases)."""

    def __init__(self, memmap: MemoryMap):
        self.memmap, self.chunks = memmap, []
        self.named: dict[str, tuple[Region, bytes]] = {}

    def put(self, name: str, kind: str, data: np.ndarray) -> Region:
        """The region holding `data` under `name`: put once, however many images of a
        batch a layer is lowered for."""
        blob = data.tobytes()
        if name in self.named:
            region, held = self.named[name]
            assert held == blob, f"{name} put twice with different bytes"
            return region
        region = self.memmap.allocate(name, kind, data.nbytes)
        self.chunks.append((region, blob))
        self.named[name] = (region, blob)
        return region

    def assemble(self, total_words: int) -> bytearray:
        bus = self.memmap.cfg.bus_bytes
        out = bytearray(total_words * bus)
        for region, blob in self.chunks:
            out[region.word * bus: region.word * bus + len(blob)] = blob
        return out
