"""The MLPerf Tiny models from the ULX3S-85F's SDRAM: each compiled for
hwq/boards/ulx3s-85f-sdram.yaml, loaded and run by the host driver against the SoC's
RTL on Verilator (`hwq run PKG --sim verilator`), its controller driving the model of
the MT48LC16M16A2 that fails the run at any timing the datasheet forbids. Per model: the
outputs against the golden model, cycles per inference from the accelerator's counter
against the same hardware's cycles from an ideal memory (the ISS's cycle model, exact
for one), so the throughput the SDRAM keeps (the issue's target: >= 60% on ResNet-8),
and per layer where the cycles went (the layer's share of the loss to memory).

    .venv/bin/python bench/sdram.py [MODEL ...] [--preload] [--layers N]

--preload: the DRAM image starts in the SDRAM (as a board's earlier load leaves it) and
the driver sends only the input, instead of the whole image over the simulated UART.
Per-layer cycles come from the accelerator's pc over the run (the cycle each layer's
first instruction enters the front end), the ideal ones from the cycle model's start
cycles.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hwq  # noqa: E402
from hwq.arch import isa  # noqa: E402
from hwq.board.host_sim import run_host_sim  # noqa: E402
from hwq.examples.mlperf_tiny import MODELS  # noqa: E402
from hwq.sim.iss import Machine  # noqa: E402

BOARD = ROOT / "hwq" / "boards" / "ulx3s-85f-sdram.yaml"
TARGET = 0.60               # ResNet-8's throughput from SDRAM against an ideal memory
CALIB = 16


def layer_spans(first: dict[str, int], at, end: int) -> dict[str, int]:
    """Cycles per layer: from `at(i)`, the cycle its first instruction i enters the front
    end, to the next layer's (the last layer's to `end`)."""
    names = sorted(first, key=first.get)
    bounds = [at(first[n]) for n in names] + [end]
    return {n: bounds[k + 1] - bounds[k] for k, n in enumerate(names)}


def first_instructions(pkg) -> dict[str, int]:
    """Each layer's first instruction, from the program's notes ("layer: what")."""
    out: dict[str, int] = {}
    notes = isa.disassembly_notes((pkg.path / "program.asm").read_text())
    for index in sorted(notes):
        out.setdefault(notes[index].split(":")[0], index)
    return out


def measure(cls, preload: bool, work: Path) -> dict:
    calib = np.random.default_rng(0).normal(size=(CALIB, *cls.input_shape)).astype(np.float32)
    pkg = hwq.compile(cls.pretrained(), cls.input_shape, calib, hw=str(BOARD),
                      out=work / f"{cls.__name__}.hwq", n_ref=1)
    iss = Machine(pkg.cfg, pkg.image()).run(pkg.start_pc)
    t0 = time.perf_counter()
    r = run_host_sim(pkg.path, board=BOARD, preload=preload)
    seconds = time.perf_counter() - t0
    if "error" in r:
        return {"name": cls.__name__, "error": r["error"]}
    first = first_instructions(pkg)
    # the run: from the pc's move to the program's start to its last change (END's fetch)
    trace = [(int(c), pc) for c, pc in r["pc_trace"]]
    begin = next(k for k, (_, pc) in enumerate(trace) if pc == pkg.start_pc)
    trace = trace[begin:]
    reached: dict[int, int] = {}
    for cycle, pc in trace:
        reached.setdefault((pc - pkg.start_pc) // pkg.cfg.instr_words, cycle)
    start = trace[0][0]
    rtl = layer_spans(first, lambda i: reached[i] - start, r["cycles"][0])
    ideal = layer_spans(first, lambda i: iss.starts[i - 1] + 1 if i else 0, iss.cycles)
    return {"name": cls.__name__, "ideal": iss.cycles, "sdram": r["cycles"][0],
            "exact": r["mismatches"] == [], "sent": r["sent"], "seconds": seconds,
            "counts": r["sdram"], "layers": {n: (ideal[n], rtl[n]) for n in ideal},
            "image": len(pkg.image())}


def report(row: dict, layers: int) -> None:
    name = row["name"]
    if "error" in row:
        print(f"{name}: FAILED: {row['error']}")
        return
    kept = row["ideal"] / row["sdram"]
    c = row["counts"]
    verdict = ""
    if name == "ResNet8":
        verdict = f" (target >= {TARGET:.0%}: {'met' if kept >= TARGET else 'MISSED'})"
    print(f"{name}: {'bit-exact' if row['exact'] else 'MISMATCH'} with the golden model; "
          f"{row['sdram']:,} cycles/inference from SDRAM, {row['ideal']:,} from an ideal memory: "
          f"{kept:.1%} of its throughput{verdict}")
    print(f"  image {row['image']:,} bytes; {row['sent']:,} bytes over the link; SDRAM model: "
          f"{c['reads']:,} reads, {c['writes']:,} writes, {c['activates']:,} row activations, "
          f"{c['refreshes']:,} refreshes, no timing violated; simulated in {row['seconds']:.0f} s")
    loss = row["sdram"] - row["ideal"]
    worst = sorted(row["layers"].items(), key=lambda kv: kv[1][0] - kv[1][1])[:layers]
    print(f"  the {len(worst)} layers that lose most to memory (of {len(row['layers'])}):")
    print(f"    {'layer':<28}{'ideal':>10}{'SDRAM':>10}{'lost':>10}{'of loss':>9}")
    for layer, (ideal, sdram) in worst:
        print(f"    {layer:<28}{ideal:>10,}{sdram:>10,}{sdram - ideal:>10,}"
              f"{(sdram - ideal) / loss:>9.1%}")


def main() -> None:
    names = {cls.__name__: cls for cls in MODELS}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", metavar="MODEL",
                    help=f"of {', '.join(names)} (default: all)")
    ap.add_argument("--preload", action="store_true")
    ap.add_argument("--layers", type=int, default=5, help="layers to list per model")
    a = ap.parse_args()
    unknown = sorted(set(a.models) - set(names))
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(names)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models or names:
            report(measure(names[name], a.preload, Path(tmp)), a.layers)


if __name__ == "__main__":
    main()
