"""`make demo`: the digits LeNet from PyTorch to bit-exact RTL, ending in a ledger."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hwq.compiler.datasets import DIGITS_TEST_SIZE
from hwq.flow import accuracy_ledger, build, write
from hwq.package import open_package

EXAMPLE = "hwq.examples.lenet_digits:LeNet"
IMAGES = 64


def _step(text: str) -> float:
    print(f"==> {text}", flush=True)
    return time.perf_counter()


def run_demo(sim: str = "verilator", out: Path = Path("build/lenet.hwq")) -> None:
    t0 = _step("training (or loading the cached) LeNet on scikit-learn digits, then compiling")
    b = build(EXAMPLE, (1, 8, 8), "digits", n_ref=IMAGES)
    pkg = open_package(write(b, out))
    print(f"    package {out}: {len(b.compiled.program)} instructions "
          f"({time.perf_counter() - t0:.1f} s)")
    t1 = _step(f"simulating the RTL on {sim} for {IMAGES} test images")
    result = pkg.simulate(sim, progress=True)
    print(f"    ({time.perf_counter() - t1:.1f} s)")
    _step("comparing RTL with the golden model")
    for line in pkg.compare():
        print(f"    {line}")

    acc = accuracy_ledger(b.model, b.qmodel)
    cfg = b.compiled.cfg
    cycles = float(np.mean(result.cycles))
    util = b.compiled.useful_macs / (cfg.rows * cfg.cols * cycles)
    golden_out = b.reference[f"golden/{b.qmodel.layers[-1].name}"]
    rtl_out = result.activations[b.qmodel.layers[-1].name]
    exact = int(sum(np.array_equal(g, r) for g, r in zip(golden_out, rtl_out)))
    rows = [
        ("float accuracy (digits test split)", f"{100 * acc['float']:.2f}%  ({acc['images']} images)"),
        ("int8 golden accuracy", f"{100 * acc['int8']:.2f}%"),
        ("top-1 agreement int8 vs float", f"{100 * acc['agreement']:.2f}%"),
        (f"RTL ({sim}) == golden, bit for bit", f"{exact}/{len(rtl_out)} images, every layer"),
        ("cycles per inference (RTL)", f"{cycles:.0f}  (ISS model: {b.iss.cycles[0]})"),
        ("MAC utilization (RTL)", f"{100 * util:.1f}%  of a {cfg.rows}x{cfg.cols} array"),
    ]
    assert acc["images"] == DIGITS_TEST_SIZE
    width = max(len(k) for k, _ in rows)
    print("\n" + "ledger".center(width + 30, "-"))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 30))
