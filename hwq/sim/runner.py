"""Run a compiled network on a simulator -- the ISS or the RTL -- for a batch of images,
and read every layer's activations back out of DRAM."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.compiler.layout import TensorLayout
from hwq.arch.config import HwConfig
from hwq.errors import HwqError
from hwq.progress import Progress
from hwq.sim.iss import IssError, Machine

SIMULATORS = ("iss", "verilator", "icarus")


@dataclass
class SimResult:
    sim: str
    status: list[str]                     # per run of the program (a batch of inputs)
    cycles: list[int]                     # per run
    activations: dict[str, np.ndarray]    # layer name -> (N, C, H, W) int8, per input
    counters: list[dict[str, int]] = field(default_factory=list)   # per run (hwq/arch/perf.py)
    batch: int = 1                        # inputs per run

    @property
    def ok(self) -> bool:
        return all(s == "ok" for s in self.status)

    def inputs_of(self, run: int) -> str:
        """Which inputs run `run` took, for a message."""
        if self.batch == 1:
            return f"input {run}"
        return f"batch {run} (inputs {run * self.batch}..{(run + 1) * self.batch - 1})"


def batches(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """The inputs of each run of a program compiled for `batch` inputs: x in order,
    `batch` at a time (the last run takes the rest)."""
    return [x[i:i + batch] for i in range(0, len(x), batch)]


def simulate(cfg: HwConfig, image: bytes, start_pc: int, tensors: dict[str, TensorLayout],
             shapes: dict[str, tuple[int, int, int]], x: np.ndarray, sim: str = "iss",
             progress: bool = False, late_memory: bool = False) -> SimResult:
    """`tensors` maps every stored activation (the input included) to its layout; the
    input slot is written with the images of `x` (N, C, H, W int8), as many per run as
    the layouts' batch (the last run's batch filled up with zero images, whose results
    are dropped). `late_memory`: the RTL's DRAM answers reads 1-8 cycles late and drops
    `ready` a quarter of the cycles (hwq/rtl/export.py; a config with dram_reads > 1)."""
    if sim not in SIMULATORS:
        raise HwqError(f"unknown simulator '{sim}'; choose one of {', '.join(SIMULATORS)}")
    if late_memory and sim == "iss":
        raise HwqError("the ISS's memory answers every read in the next cycle; a late one "
                       "is the RTL simulators'")
    inp = tensors["input"]
    n, batch = x.shape[0], inp.batch
    bus = cfg.bus_bytes
    reads = [(t.region.word, t.nbytes) for t in tensors.values()]
    jobs = [{"writes": [(inp.region.word, inp.pack(xb))], "reads": reads} for xb in batches(x, batch)]
    described = SimResult(sim, [], [], {}, batch=batch)
    if sim == "iss":
        # One machine for all runs, as the RTL keeps its buffers and DRAM between jobs.
        try:
            m = Machine(cfg, image)
        except IssError as e:
            raise HwqError(f"iss: {e}") from None
        runs = []
        bar = Progress("iss", len(jobs), "runs" if batch > 1 else "images", enabled=progress)
        for i, job in enumerate(jobs):
            for word, blob in job["writes"]:
                m.dram[word * bus: word * bus + len(blob)] = np.frombuffer(blob, np.uint8)
            try:
                r = m.run(start_pc)
            except IssError as e:          # a program that breaks a rule the ISA states
                raise HwqError(f"iss: {described.inputs_of(i)}: {e}; the program is not one hwq "
                               "compiles") from None
            runs.append((r.status, r.cycles, [m.read_dram(w, nb) for w, nb in reads], r.counters))
            bar.update(i + 1)
    else:
        from hwq.sim.rtl_sim import run_rtl
        runs = [(r.status, r.cycles, r.reads, r.counters)
                for r in run_rtl(cfg, image, jobs, sim=sim, start_pc=start_pc, progress=progress,
                                 stall=late_memory, latency=late_memory)]
    activations = {}
    for k, name in enumerate(tensors):
        activations[name] = np.concatenate(
            [tensors[name].unpack(run[2][k], shapes[name]) for run in runs])[:n] if runs else None
    return SimResult(sim, [r[0] for r in runs], [r[1] for r in runs], activations,
                     [r[3] for r in runs], batch)


@dataclass(frozen=True)
class Mismatch:
    """The first element where a simulator departs from the golden model."""

    sim: str
    layer: str
    image: int
    element: tuple[int, int, int]     # (c, y, x)
    block: int                        # the output-channel block (tile) that computed it
    got: int
    want: int
    differing: int
    total: int

    def __str__(self) -> str:
        c, y, x = self.element
        return (f"layer '{self.layer}' image {self.image} element (c={c}, y={y}, x={x}) in output "
                f"block {self.block}: {self.sim}={self.got} golden={self.want} "
                f"({self.differing} of {self.total} elements differ)")


def first_mismatch(result: SimResult, golden: dict[str, np.ndarray], order: list[str],
                   cols: int) -> Mismatch | None:
    """Where the simulator first departs from the golden model, in execution order."""
    for name in order:
        got, want = result.activations[name], golden[name]
        bad = np.argwhere(got != want)
        if bad.size:
            i, c, y, x = (int(v) for v in bad[0])
            return Mismatch(result.sim, name, i, (c, y, x), c // cols, int(got[i, c, y, x]),
                            int(want[i, c, y, x]), len(bad), got.size)
    return None
