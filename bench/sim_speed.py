"""Simulation speed of the generated RTL: cycles per second of whole-network runs.

    .venv/bin/python bench/sim_speed.py [--images N] [--sims verilator,icarus]

Compiles two networks for the default 8x8 array -- the digits LeNet and a VGG-style
32x32 net (conv/relu/maxpool/linear, 196 k cycles: ResNet-18's 9.3 M would take hours on
Icarus) -- and runs each on Verilator and Icarus in this one process. Build time is
shown apart (a cache hit shows 0); the rate counts the accelerator's own cycle counter
over the wall time of the simulator run minus its start-up (measured with a one-
instruction program); `cpu c/s` is the same over the simulator process's CPU time (user +
system), the figure to read on a shared, loaded machine. A run not at least twice as long
as the start-up shows no rate ("-": LeNet's few thousand cycles on Verilator are over
before the start-up's noise). The reference point is the published TVM VTA
cycle-accurate simulator: ResNet-18, 31 M cycles in 228 s, ~136 k cycles/s.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VTA_CYCLES_PER_S = 31e6 / 228


class VggSmall(nn.Module):
    """A VGG-style CIFAR-size net: 32x32x3 -> 10, about 20 M MACs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                    nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def _compile(spec, shape, calib, n):
    from hwq.flow import build
    b = build(spec, shape, calib, n_ref=n, progress=False)
    return b.compiled, b.qmodel, b.reference["input_int8"]


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _rate(compiled, x, sim):
    from hwq.arch import isa
    from hwq.sim.rtl_sim import ensure_build, run_rtl
    cfg = compiled.cfg
    info = ensure_build(cfg, sim)
    t0, c0 = time.time(), _child_cpu()
    run_rtl(cfg, isa.to_bytes([isa.Instr.make("END")]), [{"writes": [], "reads": []}], sim=sim)
    startup, cpu_startup = time.time() - t0, _child_cpu() - c0
    inp = compiled.layouts["input"]
    jobs = [{"writes": [(inp.region.word, inp.pack(x[i:i + 1]))], "reads": []} for i in range(len(x))]
    t0, c0 = time.time(), _child_cpu()
    runs = run_rtl(cfg, compiled.image, jobs, sim=sim, start_pc=compiled.start_pc)
    wall, cpu = time.time() - t0, _child_cpu() - c0
    assert all(r.status == "ok" for r in runs), [r.status for r in runs]
    cycles = sum(r.cycles for r in runs)
    measurable = wall > 2 * startup
    return (info, cycles, wall, startup, cycles / (wall - startup) if measurable else None,
            cycles / max(cpu - cpu_startup, 1e-9) if measurable else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4, help="images per network and simulator")
    ap.add_argument("--icarus-images", type=int, default=1, help="images on Icarus (slow)")
    ap.add_argument("--sims", default="verilator,icarus")
    ap.add_argument("--cached", action="store_true", help="use the build cache (default: build "
                    "afresh in a temporary cache, so that the build time is measured)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hwq-bench-"))
    if not a.cached:
        os.environ["HWQ_CACHE_DIR"] = str(tmp / "rtl-cache")
    calib = tmp / "calib32.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32))
    nets = {
        "digits LeNet (1x8x8)": _compile(str(ROOT / "hwq/examples/lenet_digits.py") + ":LeNet",
                                         (1, 8, 8), "digits", a.images),
        "VGG-style 32x32 (ResNet-18's 9.3 M cycles take hours on Icarus)":
            _compile(f"{__file__}:VggSmall", (3, 32, 32), str(calib), a.images),
    }
    print(f"array 8x8 (config 'default'); reference: TVM VTA simulator, ResNet-18, "
          f"{VTA_CYCLES_PER_S / 1e3:.0f} k cycles/s")
    print(f"{'network':<64} {'sim':<10} {'build s':>8} {'images':>6} {'cycles/img':>11} "
          f"{'wall s':>7} {'start s':>7} {'cycles/s':>10} {'x VTA':>6} {'cpu c/s':>10}")
    for name, (compiled, qmodel, x) in nets.items():
        for sim in a.sims.split(","):
            xs = x[:a.icarus_images] if sim == "icarus" else x
            info, cycles, wall, startup, rate, cpu_rate = _rate(compiled, xs, sim)
            build = f"{info.seconds:.1f}" if info.built else "cached"
            rates = (f"{rate:>10.3g} {rate / VTA_CYCLES_PER_S:>6.2f} {cpu_rate:>10.3g}" if rate
                     else f"{'-':>10} {'-':>6} {'-':>10}")
            print(f"{name:<64} {sim:<10} {build:>8} {len(xs):>6} {cycles // len(xs):>11} "
                  f"{wall:>7.2f} {startup:>7.2f} {rates}", flush=True)


if __name__ == "__main__":
    main()
