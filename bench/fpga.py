"""FPGA benchmark: per board, resource use, achieved Fmax, peak GOPS and inferences/s of
the digits LeNet at that clock (cycles from the ISS cycle model), against the targets.

    .venv/bin/python bench/fpga.py [BOARD ...]      # default: icebreaker orangecrab-25f ulx3s-85f

Bitstreams come from hwq.board.build_bitstream (cached under build/bitstream/).
Reference point: TVM VTA on a Zynq-7020 at 100 MHz, 16x16 array: 51.2 GOPS peak (Vivado).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hwq.board.bitstream import build_bitstream, summarize  # noqa: E402
from hwq.board.spec import load_board  # noqa: E402
from hwq.flow import build  # noqa: E402

# board -> (what the issue asks, Fmax target in MHz; None: the board file's clock)
TARGETS = {"ulx3s-85f": ("ECP5-85F, 8x8 array, >= 100 MHz", 100.0),
           "icebreaker": ("iCE40UP5K, largest array that fits, >= 24 MHz", 24.0),
           "orangecrab-25f": ("ECP5-25F, 4x4 array, its board file's clock (no target in the "
                              "issue)", None)}
LENET = str(ROOT / "hwq" / "examples" / "lenet_digits.py") + ":LeNet"


def bench(name: str) -> None:
    board = load_board(name)
    cfg = board.cfg
    b = build(LENET, (1, 8, 8), "digits", n_ref=1, progress=False, board=name)
    cycles = int(b.iss.cycles[0])
    bs = build_bitstream(board, progress=True)
    if bs.report is None:
        print(f"{name}: {bs.message}")
        return
    s = summarize(bs.report, board, bs.f_sync)
    f = min(s["fmax_mhz"], s["target_mhz"]) * 1e6
    util = ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in s["utilization"].items())
    print(f"{name}: {cfg.rows}x{cfg.cols} array; {util}")
    print(f"  Fmax {s['fmax_mhz']:.1f} MHz (clock {s['target_mhz']:.1f} MHz); peak "
          f"{s['peak_gops']:.2f} GOPS; LeNet {cycles} cycles = {f / cycles:.0f} inferences/s; "
          f"P&R {bs.seconds:.0f} s{' (cached)' if bs.cached else ''}")
    if name in TARGETS:
        what, mhz = TARGETS[name]
        mhz = mhz or s["target_mhz"]
        if s["fmax_mhz"] >= mhz:
            print(f"  target met: {what}")
        else:
            print(f"  target missed: {what}; short by {mhz - s['fmax_mhz']:.1f} MHz; "
                  f"critical path {s['critical_path'] or 'not reported'}")
    print(f"  (VTA on Zynq-7020: 16x16 at 100 MHz = 51.2 GOPS peak; this board "
          f"{100 * s['peak_gops'] / 51.2:.1f}% of it)")


if __name__ == "__main__":
    for board_name in sys.argv[1:] or ["icebreaker", "orangecrab-25f", "ulx3s-85f"]:
        bench(board_name)
