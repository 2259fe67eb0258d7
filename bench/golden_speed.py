"""Images per second of hwq's golden model against PyTorch's own int8 CPU inference
(torch.ao, x86 fbgemm) on the same models and inputs, measured in one run.

    .venv/bin/python bench/golden_speed.py [--batch 64] [--repeat 3]

Both sides are timed on the same batch after one warm-up pass; the best of `repeat`
runs counts. The golden model computes every layer's int8 output (what it is used for:
checking hardware layer by layer); torch.ao returns the logits. Target: ratio >= 1.0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets import PlainResNet18, lenet  # noqa: E402
from torch_ao import torch_ao_int8  # noqa: E402

from hwq.compiler.datasets import calibration_set  # noqa: E402
from hwq.compiler.frontend import trace  # noqa: E402
from hwq.compiler.quant.calibrate import quantize  # noqa: E402
from hwq.compiler.quant.config import load_quant_config  # noqa: E402
from hwq.sim.golden import quantize_input, run_golden  # noqa: E402

TARGET = 1.0


def best_of(repeat: int, fn) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [("digits LeNet", lenet(), (1, 8, 8), calibration_set("digits", (1, 8, 8))),
             ("ResNet-18-style 32x32", PlainResNet18(), (3, 32, 32),
              rng.normal(size=(32, 3, 32, 32)).astype(np.float32))]
    print(f"batch {args.batch}, best of {args.repeat}, torch threads {torch.get_num_threads()}")
    print(f"{'model':<24}{'golden img/s':>14}{'torch.ao img/s':>16}{'ratio':>8}   target >= {TARGET}")
    for name, model, shape, calib in cases:
        model.eval()
        x = np.resize(calib, (args.batch, *shape)).astype(np.float32)
        q = quantize(trace(model, shape, name), calib, load_quant_config(), progress=False)
        x_q = quantize_input(q, x)
        ao = torch_ao_int8(model, calib[:32])
        xt = torch.from_numpy(x)
        t_golden = best_of(args.repeat, lambda: run_golden(q, x_q))
        with torch.no_grad():
            t_ao = best_of(args.repeat, lambda: ao(xt))
        ratio = t_ao / t_golden
        print(f"{name:<24}{args.batch / t_golden:>14.0f}{args.batch / t_ao:>16.0f}{ratio:>8.2f}   "
              f"{'met' if ratio >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
