"""Images per second of hwq's golden model against PyTorch's own int8 CPU inference
(torch.ao, x86 fbgemm) on the same models and inputs, measured in one run.

    .venv/bin/python bench/golden_speed.py [--batch 64] [--repeat 5] [--threads N]

Both sides run with the same torch thread count (default: torch's, one per core, which
the golden model uses as its own threads) and are timed on the same batch, in turns,
each after a pause and a warm-up call; the best of `repeat` runs counts. Each side is
prepared first, outside the timing: torch.ao's convert packs its weights, hwq's
GoldenModel packs its own. The golden model keeps every layer's int8 output (how `hwq
compile` runs it, to check the hardware layer by layer); torch.ao returns the logits.
The last column is the golden model keeping only the output (every_layer=False).
Target: ratio >= 1.0.
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
from hwq.compiler.quant.pipeline import quantize  # noqa: E402
from hwq.compiler.quant.config import load_quant_config  # noqa: E402
from hwq.sim.golden import GoldenModel  # noqa: E402

TARGET = 1.0
PAUSE = 0.05     # s before each function's turn: OpenMP threads left spinning go to sleep


def best_of(repeat: int, *fns) -> list[float]:
    """The best time of each function over `repeat` rounds. A round runs each function
    twice after a pause and times the second call: each is timed in its own steady state
    (warm, with torch's OpenMP threads, which spin for milliseconds after their work,
    spinning for it alone), and a machine busy for a while slows all alike."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t_fn in zip(fns, times):
            time.sleep(PAUSE)
            fn()
            t = time.perf_counter()
            fn()
            t_fn.append(time.perf_counter() - t)
    return [min(t_fn) for t_fn in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    cases = [("digits LeNet", lenet(), (1, 8, 8), calibration_set("digits", (1, 8, 8))),
             ("ResNet-18-style 32x32", PlainResNet18(), (3, 32, 32),
              rng.normal(size=(32, 3, 32, 32)).astype(np.float32))]
    print(f"batch {args.batch}, best of {args.repeat}, torch threads {torch.get_num_threads()} "
          f"on both sides; golden: every layer's output kept")
    print(f"{'model':<24}{'golden img/s':>14}{'torch.ao img/s':>16}{'ratio':>8}   target >= {TARGET}"
          f"{'output only img/s':>20}")
    for name, model, shape, calib in cases:
        model.eval()
        x = np.resize(calib, (args.batch, *shape)).astype(np.float32)
        q = quantize(trace(model, shape, name), calib, load_quant_config(), progress=False)
        x_q = q.quantize_input(x)
        ao = torch_ao_int8(model, calib[:32])
        xt = torch.from_numpy(x)
        golden = GoldenModel(q)
        with torch.no_grad():
            t_golden, t_ao, t_out = best_of(args.repeat, lambda: golden(x_q), lambda: ao(xt),
                                            lambda: golden(x_q, every_layer=False))
        ratio = t_ao / t_golden
        print(f"{name:<24}{args.batch / t_golden:>14.0f}{args.batch / t_ao:>16.0f}{ratio:>8.2f}   "
              f"{'met' if ratio >= TARGET else 'MISSED':<13}{args.batch / t_out:>20.0f}")


if __name__ == "__main__":
    main()
