"""Per-instruction differential checking of the RTL against the ISS.

The RTL runs once on its trace build (hwq/rtl/export.py: every buffer write, DRAM write
and instruction issue logged to trace.txt, each write with the unit that made it). The
units overlap, so the writes are grouped by the instruction whose unit made them, and
replayed onto a copy of the machine state in program order while the ISS steps through
the same program; after every instruction the two states -- all five buffers and the
whole DRAM -- must be equal. (The hazard rules make any order of non-conflicting writes
give the same state; a unit that read data too early shows in what it writes.) The
first instruction after which they differ is reported with its index, disassembly and
the compiler's note (layer and tile), the memory, address and lane, both values, and a
waveform of that instruction alone (a second run of the trace build).

The normal simulation path (run_rtl without trace) is untouched by any of this.
"""
from __future__ import annotations

import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.buffers import write_lanes
from hwq.rtl.ports import UNITS
from hwq.sim.iss import IssError, Machine
from hwq.sim.rtl_sim import cache_root, run_rtl


@dataclass
class Divergence:
    index: int                  # instruction index from the start pc
    pc: int
    text: str                   # disassembly
    note: str                   # the compiler's "layer: tile", or ""
    what: str                   # where the states differ, and how
    window: Path | None = None  # waveform of this instruction

    def __str__(self) -> str:
        note = f" ({self.note})" if self.note else ""
        wave = f"; waveform of this instruction: {self.window}" if self.window else ""
        return f"instruction {self.index} at pc {self.pc}: {self.text}{note}: {self.what}{wave}"


def _parse_trace(path: Path, unit_at):
    """The RTL's run as (issued, writes): the pc of every instruction in issue order, and
    per issue index the writes it made, ('w', buf, addr, en, data) or ('d', addr, data),
    all ints, in the order the RTL made them. `unit_at(pc)` gives the unit of the
    instruction at pc (None: it stops the run) and how many writes it makes (None: any).
    A write belongs to the oldest instruction of the unit that made it with writes to
    come -- the GEMM unit starts the next GEMM while the array still drains the last --
    and DRAM writes are STORE's."""
    issued, writes, owners = [], {}, {u: deque() for u in UNITS}
    with open(path) as f:
        for line in f:
            tok = line.split()
            if not tok:
                continue
            if tok[0] == "i":
                pc = int(tok[1], 16)
                writes[len(issued)] = []
                unit, count = unit_at(pc)
                if unit is not None and count != 0:
                    if count is None:
                        owners[unit].clear()
                    owners[unit].append([len(issued), count])
                issued.append(pc)
                continue
            if tok[0] == "w":
                unit = UNITS[int(tok[5], 16)]
                w = ("w", isa.BUFFERS[int(tok[1])], int(tok[2], 16), int(tok[3], 16),
                     int(tok[4], 16))
            elif tok[0] == "d":
                unit, w = "STORE", ("d", int(tok[1], 16), int(tok[2], 16))
            else:
                continue
            owner = owners[unit][0]
            writes[owner[0]].append(w)
            if owner[1] is not None:
                owner[1] -= 1
                if owner[1] == 0:
                    owners[unit].popleft()
    return issued, writes


class _Shadow:
    """The machine state as the RTL's writes leave it."""

    def __init__(self, m: Machine):
        self.cfg = m.cfg
        self.buf = {b: a.copy() for b, a in m.buf.items()}
        self.dram = m.dram.copy()

    def apply(self, w) -> None:
        cfg = self.cfg
        if w[0] == "d":
            _, addr, data = w
            self.dram[addr * cfg.bus_bytes:(addr + 1) * cfg.bus_bytes] = np.frombuffer(
                data.to_bytes(cfg.bus_bytes, "little"), np.uint8)
            return
        _, buf, addr, en, data = w
        entry = self.buf[buf][addr]
        raw = entry.view(np.uint8)
        new = np.frombuffer(data.to_bytes(raw.size, "little"), np.uint8)
        lanes = write_lanes(self.cfg, buf)
        chunk = raw.size // lanes
        for k in range(lanes):
            if en >> k & 1:
                raw[k * chunk:(k + 1) * chunk] = new[k * chunk:(k + 1) * chunk]

    def differs(self, m: Machine) -> str | None:
        for b in isa.BUFFERS:
            bad = np.argwhere(self.buf[b] != m.buf[b])
            if bad.size:
                e, lane = (int(v) for v in bad[0])
                return (f"{b} entry {e} lane {lane}: rtl={int(self.buf[b][e, lane])} "
                        f"iss={int(m.buf[b][e, lane])} ({len(bad)} lanes differ)")
        bad = np.flatnonzero(self.dram != m.dram)
        if bad.size:
            byte = int(bad[0])
            word, k = divmod(byte, self.cfg.bus_bytes)
            return (f"DRAM word {word} byte {k}: rtl={int(self.dram[byte])} iss={int(m.dram[byte])} "
                    f"({bad.size} bytes differ)")
        return None


def first_divergence(cfg: HwConfig, image: bytes, start_pc: int,
                     writes: list[tuple[int, bytes]] = (), *, sim: str = "verilator",
                     notes: dict[int, str] | None = None, work_dir: Path | None = None,
                     waves: bool = True, fault: str | None = None) -> Divergence | None:
    """Run the program at `start_pc` over `image` (plus the DRAM `writes`, as a job's)
    on the ISS and the RTL, comparing the state after every instruction; None if they
    agree to the end (same stopping status and pc). `notes` maps instruction index to
    the compiler's note; `fault` builds the broken RTL variant (tests)."""
    if work_dir is None:
        root = cache_root() / "runs"
        root.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=f"{cfg.name}-diff-", dir=root))
    work_dir = Path(work_dir)
    job = {"writes": list(writes), "reads": []}
    rtl = run_rtl(cfg, image, [job], sim=sim, start_pc=start_pc, trace=True, fault=fault,
                  work_dir=work_dir)[0]
    m = Machine(cfg, image)
    bus = cfg.bus_bytes
    for word, blob in writes:
        idx = (word * bus + np.arange(len(blob))) % m.dram.size
        m.dram[idx] = np.frombuffer(bytes(blob), np.uint8)
    shadow = _Shadow(m)
    notes = notes or {}
    pc, index = start_pc, 0

    def where(k, at):
        try:
            text = isa.format_instr(isa.decode(m.fetch(at)))
        except isa.IsaError as e:
            text = f".word ({e})"
        note = next((notes[j] for j in range(k, -1, -1) if j in notes), "")
        return text, note

    def report(k, at, what):
        text, note = where(k, at)
        window = None
        if waves:
            run_rtl(cfg, image, [job], sim=sim, start_pc=start_pc, wave_window=(k, k),
                    wave_unit=unit_at(at)[0], fault=fault, work_dir=work_dir / "window")
            vcd = work_dir / "window" / "window.vcd"
            window = vcd if vcd.exists() else None
        return Divergence(k, at, text, note, what, window)

    def unit_at(at):
        try:
            instr = isa.decode(m.fetch(at))
        except isa.IsaError:
            return None, None
        if instr.op == "GEMM":     # one accumulator write per vector
            return "GEMM", instr["n_outer"] * instr["n_inner"]
        return (instr.op, None) if instr.op in UNITS else (None, None)

    issued, rtl_writes = _parse_trace(work_dir / "trace.txt", unit_at)
    for k, rtl_pc in enumerate(issued):
        if rtl_pc != pc:
            return report(index, pc, f"the RTL executed pc {rtl_pc} instead")
        try:
            step = m.step(pc)
        except IssError as e:
            return report(index, pc, f"the ISS refuses it: {e}")
        for w in rtl_writes[k]:
            shadow.apply(w)
        what = shadow.differs(m)
        if what:
            return report(index, pc, what)
        if step.status is not None:
            if rtl.status != step.status:
                return report(index, pc, f"stops with status {step.status} on the ISS, "
                                         f"{rtl.status} on the RTL")
            return None
        pc = (pc + cfg.instr_words) % cfg.dram_words
        index += 1
    return report(index, pc, f"the RTL stopped before it (status {rtl.status}) while the ISS "
                             "goes on")
