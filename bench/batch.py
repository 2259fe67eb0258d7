"""Batched inference on the default 8x8 array (its DRAM raised to the ULX3S's 32 MiB, which
a batch of ResNet-8's activations needs): cycles per input and MAC utilization
against the batch a program is compiled for (`hwq compile --batch N`), each model's
batch-1 program the reference measured in the same run.

    .venv/bin/python bench/batch.py [--sim verilator]

At batch 1 a Linear streams one vector per weight tile, so the array waits on weight
loads; compiled for N inputs a run, it streams N. Cycles are the ISS's cycle model, which
equals the RTL's; with --sim verilator the largest batch of each model runs on the RTL
too, which must agree bit for bit and cycle for cycle. "linear" is the layers over one
pixel per input (Linear layers, and what follows a global pool): their MACs over their
cycles. Every run is checked against the golden model on every layer.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from hwq.arch.config import load_hw_config
from hwq.compiler.datasets import calibration_set
from hwq.compiler.frontend import trace
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.pipeline import quantize
from hwq.examples.extras import LeNet300100
from hwq.examples.lenet_digits import pretrained
from hwq.examples.mlperf_tiny import AutoEncoder, ResNet8
from hwq.sim.cycles import schedule, span_cycles
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

BATCHES = (1, 2, 4, 8, 16)


def models():
    """(name, quantized model, inputs) of each benchmark model."""
    qcfg = load_quant_config()
    yield "digits LeNet", quantize(trace(pretrained(), (1, 8, 8), "LeNet"),
                                   calibration_set("digits", (1, 8, 8)), qcfg, progress=False), \
        calibration_set("digits", (1, 8, 8), n=16)
    rng = np.random.default_rng(0)
    for cls in (LeNet300100, AutoEncoder, ResNet8):
        x = rng.standard_normal((64, *cls.input_shape)).astype(np.float32)
        q = quantize(trace(cls.pretrained(), cls.input_shape, cls.__name__), x, qcfg, progress=False)
        yield cls.__name__, q, x[:16]


def measure(qmodel, x_float, batch: int, sim: str | None) -> dict:
    cfg = dataclasses.replace(load_hw_config("default"), name="default-32MiB", dram_words=1 << 22)
    compiled = compile_model(qmodel, cfg, batch=batch)
    x = qmodel.quantize_input(x_float[:batch])
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    golden = run_golden(qmodel, x)
    sims = ["iss"] + ([sim] if sim else [])
    results = {s: simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, s)
               for s in sims}
    for s, r in results.items():
        where = first_mismatch(r, golden, list(golden), cfg.cols)
        assert r.ok and where is None, f"{s}: {where or r.status}"
    cycles = results["iss"].cycles[0]
    if sim:
        assert results[sim].cycles == results["iss"].cycles, (sim, results[sim].cycles, cycles)
    starts, total = schedule(compiled.program, cfg)
    assert total == cycles
    per_layer = span_cycles(compiled.layer_of, starts, total)
    single = [l.name for l in qmodel.layers if l.in_shape[1:] == (1, 1) and l.name in per_layer]
    lin_macs = sum(compiled.layer_macs.get(n, 0) for n in single)
    lin_cycles = sum(per_layer[n] for n in single)
    peak = cfg.rows * cfg.cols
    return {"cycles": cycles, "per_input": cycles / batch,
            "util": compiled.useful_macs / (peak * cycles),
            "linear": lin_macs / (peak * lin_cycles) if lin_cycles else None,
            "linear_share": lin_cycles / cycles}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", choices=["verilator", "icarus"], help="also run the largest batch on the RTL")
    args = ap.parse_args()
    print("Batched inference, 8x8 array (default config, 32 MiB DRAM), cycles of the ISS's cycle model")
    print(f"{'model':<14}{'batch':>6}{'cycles/run':>12}{'cycles/input':>14}{'vs batch 1':>12}"
          f"{'MAC util':>10}{'linear util':>13}{'linear share':>14}")
    for name, qmodel, x in models():
        base = None
        for batch in BATCHES:
            t = time.perf_counter()
            m = measure(qmodel, x, batch, args.sim if batch == BATCHES[-1] else None)
            base = base or m["per_input"]
            lin = "-" if m["linear"] is None else f"{100 * m['linear']:.1f}%"
            print(f"{name:<14}{batch:>6}{m['cycles']:>12}{m['per_input']:>14.0f}"
                  f"{base / m['per_input']:>11.2f}x{100 * m['util']:>9.1f}%{lin:>13}"
                  f"{100 * m['linear_share']:>13.1f}%   ({time.perf_counter() - t:.1f} s)", flush=True)
    if args.sim:
        print(f"{args.sim}: the largest batch of every model bit-exact and cycle-equal with the ISS")


if __name__ == "__main__":
    sys.exit(main())
