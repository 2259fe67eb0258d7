"""Wall time of hwq's compiler front to back -- trace, quantize (calibration included),
lower to the program and DRAM image -- for the digits LeNet and the ResNet-18-style
32x32 nets (without and with the residual adds), against the targets (3 s and 20 s).

    .venv/bin/python bench/compile_time.py

Each stage is timed once, cold, in one process (trained LeNet weights come from the
example's cache, built first so training is not counted). The ResNet-style net needs
more DRAM than the default config's 512 KiB, so it is lowered for the default array with
16 MiB, as bench/utilization.py does. The last columns are the DRAM the compiled model
takes (data and program, KiB) as compiled, and with activation space reused by liveness
(compile_model's reuse_activations; the activations' share in brackets).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets import PlainResNet18, ResNet18, lenet  # noqa: E402

from hwq.compiler.datasets import calibration_set  # noqa: E402
from hwq.compiler.frontend import trace  # noqa: E402
from hwq.compiler.lower import compile_model  # noqa: E402
from hwq.compiler.quant.pipeline import quantize  # noqa: E402
from hwq.compiler.quant.config import load_quant_config  # noqa: E402
from hwq.arch.config import load_hw_config  # noqa: E402


def timed(fn):
    """fn's result, wall time and CPU time (the process's, every thread's: on a machine
    other jobs load, the figure the wall time inflates least)."""
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    cfg = load_hw_config("default")
    big = dataclasses.replace(cfg, name="default-16MiB", dram_words=1 << 22)
    rng = np.random.default_rng(0)
    cases = [("digits LeNet", lenet(), (1, 8, 8), calibration_set("digits", (1, 8, 8)), cfg, 3.0),
             ("ResNet-18-style 32x32", PlainResNet18(), (3, 32, 32),
              rng.normal(size=(32, 3, 32, 32)).astype(np.float32), big, 20.0),
             ("ResNet-18 32x32 (adds)", ResNet18(), (3, 32, 32),
              rng.normal(size=(32, 3, 32, 32)).astype(np.float32), big, 20.0)]
    print(f"{'model':<24}{'trace s':>9}{'quantize s':>12}{'(cpu s)':>9}{'lower s':>9}{'instrs':>9}"
          f"{'total s':>9}{'target s':>10}{'ratio':>7}   {'DRAM KiB':>9}{'reused':>8}  (activations)")
    for name, model, shape, calib, hw, target in cases:
        graph, t_trace, _ = timed(lambda: trace(model.eval(), shape, name))
        qmodel, t_quant, cpu_quant = timed(lambda: quantize(graph, calib, load_quant_config(), progress=False))
        compiled, t_lower, _ = timed(lambda: compile_model(qmodel, hw))
        total = t_trace + t_quant + t_lower
        reused = compile_model(qmodel, hw, reuse_activations=True)
        kib = lambda c: c.memmap.next_word * hw.bus_bytes / 1024  # noqa: E731
        acts = lambda c: sum(r.words for r in c.memmap.regions  # noqa: E731
                             if r.kind in ("activation", "output")) * hw.bus_bytes / 1024
        print(f"{name:<24}{t_trace:>9.2f}{t_quant:>12.2f}{cpu_quant:>9.2f}{t_lower:>9.2f}{len(compiled.program):>9}"
              f"{total:>9.2f}{target:>10.1f}{total / target:>7.2f}   "
              f"{kib(compiled):>9.0f}{kib(reused):>8.0f}  ({acts(compiled):.0f} -> "
              f"{acts(compiled) - (kib(compiled) - kib(reused)):.0f} KiB)   "
              f"{'met' if total < target else 'MISSED'}")


if __name__ == "__main__":
    main()
