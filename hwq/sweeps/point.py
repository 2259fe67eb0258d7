"""One point of a sweep -- a model on one hardware config (on a board, with a seed) -- and
what a worker does with it.

Its steps: `compile` (trace, quantize, lower, and run the reference images on the ISS,
each checked bit-exact against the golden model: one image, or the spec's `images` when
`iss` or `rtl` is asked), `rtl` (the package on Verilator or Icarus, compared with the
golden model layer by layer, its cycles with the ISS cycle model's) and `bitstream` (the
board's SoC with the point's config, placed and routed with the point's seed). A step
that fails ends the point as a row with status `failed` (or `mismatch`) and the one-line
reason; it never raises.

A point's cache key is a hash of everything its row depends on: the model's bytes, input
shape, calibration data, weights and quantization config, the resolved hardware config,
the board file and seed, the stages, and `code_digest()`, the hwq sources this module
reads -- so a finished row goes stale when hwq's compiler, simulators or RTL change, not
when the sweep's scheduling or reports do.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from hwq.arch.config import HwConfig
from hwq.cache import cache_dir, source_digest
from hwq.compiler.quant.config import QuantConfig
from hwq.errors import HwqError, MismatchError

if TYPE_CHECKING:
    from hwq.board.spec import Board

STAGES = ("compile", "iss", "rtl", "bitstream")
HARDWARE_FIELDS = tuple(f.name for f in dataclasses.fields(HwConfig) if f.name != "name")
# nextpnr's cell types per resource column: iCE40 (a logic cell is a LUT4 and its flip-flop,
# so it has no FF count of its own), ECP5
RESOURCES = {"lut": ("ICESTORM_LC", "TRELLIS_COMB"), "ff": ("TRELLIS_FF",),
             "dsp": ("ICESTORM_DSP", "MULT18X18D"), "bram": ("ICESTORM_RAM", "DP16KD")}
BITSTREAM_FIGURES = (*RESOURCES, "fmax_mhz", "clock_mhz", "peak_gops", "bitstream_s")
# A row of results.csv: the point, then what it measured.
COLUMNS = ("point", "model", "board", "config", *HARDWARE_FIELDS, "seed", "stages", "status",
           "failed_stage", "error", "instructions", "program_bytes", "dram_bytes",
           "useful_macs", "cycles", "utilization", "images", "rtl_cycles", *BITSTREAM_FIGURES,
           "gops", "inferences_s", "wall_s", "cached")

Report = Callable[[str, str], None]      # (step, "start" | "ok" | "failed")


def _silent(step: str, state: str) -> None:
    pass


@dataclass(frozen=True, eq=False)
class ModelSource:
    """A model as the sweep ships it to a worker: the bytes it is built from travel with
    it, so a worker on another machine needs none of the client's files."""

    label: str                      # its name in the results
    spec: str                       # file.py:Name (the client's path) or module:Name
    source: bytes | None            # the model file's bytes (None: an importable module)
    digest: str                     # sha256 of the file, or the module's source digest
    input_shape: tuple[int, int, int]
    calib: str | np.ndarray         # "digits" or the calibration inputs
    calib_digest: str
    quant: QuantConfig
    weights: bytes | None = None    # a state_dict file's bytes

    def identity(self) -> dict:
        """What the model's results depend on (not where its file lies)."""
        name = self.spec.rpartition(":")[2] if self.source is not None else self.spec
        return {"name": name, "digest": self.digest, "input_shape": list(self.input_shape),
                "calib": self.calib_digest, "quant": self.quant.as_dict(),
                "weights": hashlib.sha256(self.weights).hexdigest() if self.weights else None}


@dataclass(frozen=True, eq=False)
class Point:
    model: ModelSource
    fields: dict                    # its config's fields (name included), valid or not
    cfg: HwConfig | None            # None: the fields make no valid config
    refused: str                    # why not (HwConfig's one line), when cfg is None
    board: Board | None             # with this cfg and seed
    board_digest: str | None        # sha256 of the board file
    stages: tuple[str, ...]         # in STAGES order; compile always
    images: int                     # reference images on the ISS (and the RTL)
    sim: str | None                 # the RTL simulator (with rtl)

    @property
    def seed(self) -> int | None:
        return self.board.seed if self.board is not None and "bitstream" in self.stages else None

    def columns(self) -> dict:
        """The row's columns that say what the point is."""
        return {"model": self.model.label, "board": self.board.name if self.board else "",
                "config": self.fields["name"], **{k: self.fields[k] for k in HARDWARE_FIELDS},
                "seed": self.seed if self.seed is not None else "",
                "stages": "+".join(self.stages)}

    def key(self, code: str) -> str:
        """The hash of the point's inputs and of the code that runs it (`code_digest()`):
        its row's name in the cache."""
        return _hash({"model": self.model.identity(), "hardware": self.fields,
                      "board": [self.board.name, self.board_digest] if self.board else None,
                      "seed": self.seed, "stages": self.stages, "images": self.images,
                      "sim": self.sim, "code": code})

    def compile_key(self, code: str) -> str:
        """The hash of what its compile task computes: the points that differ only in
        their seed share it."""
        return _hash({"model": self.model.identity(), "hardware": self.cfg.to_dict(),
                      "stages": [s for s in self.stages if s != "bitstream"],
                      "images": self.images, "sim": self.sim, "code": code})

    def bitstream_key(self, code: str) -> str:
        """The hash of what its bitstream task computes: the models on one board, config
        and seed share it."""
        return _hash({"board": [self.board.name, self.board_digest],
                      "hardware": self.cfg.to_dict(), "seed": self.seed, "code": code})


def _hash(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def code_digest() -> str:
    """The hwq sources a point runs: this module and everything it imports."""
    return source_digest(__name__)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _outcome(step: str, e: BaseException | None) -> dict:
    """The status columns: ok, or why the step failed. A HwqError is the point's own
    (its model refused, its config too large for a buffer...), so its row is final; any
    other exception says as much about the machine as about the point: the row is not
    kept, and a re-run tries the point again (`retry`)."""
    if e is None:
        return {"status": "ok", "failed_stage": "", "error": "", "retry": False}
    if isinstance(e, HwqError):
        return {"status": "mismatch" if isinstance(e, MismatchError) else "failed",
                "failed_stage": step, "error": f"{step}: {_one_line(e)}", "retry": False}
    return {"status": "failed", "failed_stage": step,
            "error": f"{step}: {type(e).__name__}: {_one_line(e)}", "retry": True}


def _local_file(name: str, data: bytes, digest: str) -> Path:
    """A file on this machine holding `data`: `name` itself when it does, else a copy in
    hwq's cache directory (a worker on another machine, or a file changed since the sweep
    hashed it)."""
    path = Path(name)
    if path.is_file() and path.read_bytes() == data:
        return path
    copy = cache_dir("sweep", "files", digest[:16]) / path.name
    if not copy.is_file():
        fd, tmp = tempfile.mkstemp(dir=copy.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, copy)
    return copy


def _build(p: Point):
    from hwq.flow import build

    m = p.model
    spec = m.spec
    if m.source is not None:
        path, _, attr = spec.rpartition(":")
        spec = f"{_local_file(path, m.source, m.digest)}:{attr}"
    weights = None
    if m.weights is not None:
        digest = hashlib.sha256(m.weights).hexdigest()
        weights = str(_local_file(f"weights-{digest[:16]}.pt", m.weights, digest))
    return build(spec, m.input_shape, m.calib, hw=p.cfg, quant=m.quant, weights=weights,
                 n_ref=p.images, progress=False)


def compile_figures(b) -> dict:
    c = b.compiled
    cycles = round(float(np.mean(b.iss.cycles)))
    return {"instructions": len(c.program), "program_bytes": len(c.program_bytes),
            "dram_bytes": c.memmap.next_word * c.cfg.bus_bytes, "useful_macs": c.useful_macs,
            "cycles": cycles, "utilization": c.useful_macs / (c.cfg.rows * c.cfg.cols * cycles),
            "images": len(b.iss.cycles)}


def rtl_figures(b, sim: str, iss_cycles: int) -> dict:
    """The package on the RTL simulator: every layer compared with the golden model, and
    the cycles with the ISS cycle model's, which is exact."""
    from hwq.flow import write
    from hwq.package import open_package

    with tempfile.TemporaryDirectory(prefix="hwq-sweep-") as tmp:
        pkg = open_package(write(b, Path(tmp) / "point.hwq", progress=False))
        result = pkg.simulate(sim)
        pkg.compare()
    cycles = round(float(np.mean(result.cycles)))
    if cycles != iss_cycles:
        raise MismatchError(f"{sim} takes {cycles} cycles/inference, the ISS cycle model "
                            f"{iss_cycles}")
    return {"rtl_cycles": cycles}


def run_point(p: Point, report: Report = _silent) -> dict:
    """The point's figures and status (the bitstream is `run_bitstream`'s, shared by the
    points with one config, board and seed)."""
    t0 = time.perf_counter()
    figures, step, error = {}, "compile", None
    try:
        report(step, "start")
        b = _build(p)
        figures = compile_figures(b)
        report(step, "ok")
        if "rtl" in p.stages:
            step = "rtl"
            report(step, "start")
            figures |= rtl_figures(b, p.sim, figures["cycles"])
            report(step, "ok")
    except Exception as e:          # every failure is a row: the sweep goes on
        error = e
        report(step, "failed")
    return {**figures, **_outcome(step, error), "wall_s": time.perf_counter() - t0}


def run_bitstream(board: Board, report: Report = _silent) -> dict:
    """Utilization, Fmax, the clock and peak GOPS of the board's SoC (its cfg and seed the
    point's), an Fmax below the clock included; the build is cached in hwq's cache
    directory (hwq/board/bitstream.py)."""
    from hwq.board.bitstream import build_bitstream, summarize

    report("bitstream", "start")
    try:
        bs = build_bitstream(board, progress=False, timing_allow_fail=True)
        s = summarize(bs.report, board, bs.f_sync)
    except Exception as e:
        report("bitstream", "failed")
        return _outcome("bitstream", e)
    used = {k: v["used"] for k, v in s["utilization"].items()}
    figures = {col: next((used[n] for n in names if n in used), None)
               for col, names in RESOURCES.items()}
    report("bitstream", "ok")
    return {**figures, "fmax_mhz": s["fmax_mhz"], "clock_mhz": s["target_mhz"],
            "peak_gops": s["peak_gops"], "bitstream_s": bs.seconds, **_outcome("bitstream", None)}


def with_bitstream(row: dict, bs: dict) -> dict:
    """The point's row with its bitstream's figures: inferences/s at the lower of Fmax and
    the board's clock, and the GOPS the model's useful MACs make of it."""
    out = {**row, **{k: bs.get(k) for k in BITSTREAM_FIGURES}}
    if bs["status"] != "ok" and row["status"] == "ok":
        out |= {k: bs[k] for k in ("status", "failed_stage", "error", "retry")}
    if out.get("fmax_mhz") and out.get("cycles"):
        out["inferences_s"] = min(out["fmax_mhz"], out["clock_mhz"]) * 1e6 / out["cycles"]
        out["gops"] = 2 * out["useful_macs"] * out["inferences_s"] / 1e9
    return out


# ---- the Dask tasks: the functions above, reporting their steps to the client ----

def _reporter(topic: str, task: str) -> Report:
    from distributed import get_worker

    worker = get_worker()
    return lambda step, state: worker.log_event(topic, {"task": task, "step": step,
                                                        "state": state})


def _other_code(code: str, step: str) -> dict | None:
    """A failed row when this worker's hwq is not the client's: its row would be kept
    under a key that promises the client's code."""
    if code_digest() == code:
        return None
    return {"status": "failed", "failed_stage": step, "retry": True,
            "error": f"{step}: this worker runs other hwq sources than the client "
                     f"(digest {code_digest()[:12]}, client {code[:12]}); install the same "
                     "hwq on every worker"}


def point_task(p: Point, code: str, topic: str, task: str) -> dict:
    return _other_code(code, "compile") or run_point(p, _reporter(topic, task))


def bitstream_task(board: Board, code: str, topic: str, task: str) -> dict:
    return _other_code(code, "bitstream") or run_bitstream(board, _reporter(topic, task))
