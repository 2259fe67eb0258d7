"""FPGA benchmark: per board, resource use, achieved Fmax, peak GOPS and inferences/s of
the digits LeNet at that clock (cycles from the ISS cycle model), against the targets.

    .venv/bin/python bench/fpga.py [BOARD ...] [--seeds 1,2,3] [--clock MHZ]   # default: the three boards, seed 1

With --seeds, each board is placed and routed at each nextpnr seed (a clock met at one
seed alone is luck, not margin), a line per seed and the lowest Fmax against the target.

Bitstreams come from hwq.board.build_bitstream (cached under build/bitstream/).
Reference point: TVM VTA on a Zynq-7020 at 100 MHz, 16x16 array: 51.2 GOPS peak (Vivado).
"""
from __future__ import annotations

import argparse
import dataclasses
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


def bench(name: str, seeds: list[int], clock_mhz: float | None = None) -> None:
    board = load_board(name)
    if clock_mhz is not None:        # placed against another clock than the board file's
        board = dataclasses.replace(board, clock_hz=clock_mhz * 1e6)
    cfg = board.cfg
    b = build(LENET, (1, 8, 8), "digits", n_ref=1, progress=False, board=name)
    cycles = int(b.iss.cycles[0])
    fmax = []
    for seed in seeds:
        # another seed than the board file's is measured, not shipped: nextpnr may miss
        # the clock there and still report (the board file's own seed is the cached build)
        bs = build_bitstream(dataclasses.replace(board, seed=seed), progress=True,
                             timing_allow_fail=seed != board.seed or clock_mhz is not None)
        if bs.report is None:
            print(f"{name} seed {seed}: {bs.message}")
            continue
        s = summarize(bs.report, board, bs.f_sync)
        fmax.append(s["fmax_mhz"])
        f = min(s["fmax_mhz"], s["target_mhz"]) * 1e6
        util = ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in s["utilization"].items())
        print(f"{name} seed {seed}: {cfg.rows}x{cfg.cols} array; {util}")
        print(f"  Fmax {s['fmax_mhz']:.1f} MHz (clock {s['target_mhz']:.1f} MHz); peak "
              f"{s['peak_gops']:.2f} GOPS; LeNet {cycles} cycles = {f / cycles:.0f} inferences/s"
              f"{' (a memory that never stalls: from SDRAM, bench/sdram.py)' if board.memory.kind == 'sdram' else ''}; "
              f"P&R {bs.seconds:.0f} s{' (cached)' if bs.cached else ''}")
        print(f"  critical path: {s['critical_path'] or 'not reported'}")
    if not fmax:
        return
    what, mhz = TARGETS.get(name, (f"{name}: its board file's clock", None))
    mhz = mhz or s["target_mhz"]
    met = sum(f >= mhz for f in fmax)
    spread = f"Fmax {min(fmax):.1f}-{max(fmax):.1f} MHz over seeds {', '.join(map(str, seeds))}"
    print(f"  target {'met' if met == len(fmax) else 'MISSED'} at {met} of {len(fmax)} seeds "
          f"({spread}; lowest {min(fmax) - mhz:+.1f} MHz from {mhz:.0f}): {what}")
    print(f"  (VTA on Zynq-7020: 16x16 at 100 MHz = 51.2 GOPS peak; this board "
          f"{100 * s['peak_gops'] / 51.2:.1f}% of it)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("boards", nargs="*", default=["icebreaker", "orangecrab-25f", "ulx3s-85f"])
    ap.add_argument("--seeds", default="1", help="nextpnr seeds, comma-separated (default 1)")
    ap.add_argument("--clock", type=float, help="MHz to place against instead of the board "
                    "file's clock (measured, not shipped: a missed clock still reports)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for board_name in args.boards:
        bench(board_name, seeds, args.clock)


if __name__ == "__main__":
    main()
