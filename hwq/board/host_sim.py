"""Run the host driver against the SoC's RTL on Verilator (the system test of the board
flow without a board): hwq/board/host_tb.py is the testbench.

The SoC (hwq/rtl/soc.py) is built for the package's hardware config with a UART of
`divisor` clocks per bit and the board's memory: where that is an SDRAM, the SoC's
controller drives the pins of a model of the chip (hwq/sim/sdram.py) that fails the run
at any timing its datasheet forbids. Builds are cached in hwq's cache directory keyed by
the Verilog.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hwq.cache import PACKAGE_ROOT
from hwq.errors import HwqError
from hwq.package import open_package

SOC_MODULE = "hwq_soc"
# the accelerator's `pc` readable from the testbench (the run's timeline, `pc_trace`)
SOC_VERILATOR_ARGS = ["--public-depth", "2"]


def run_host_sim(package: str | Path, divisor: int = 4, corrupt: tuple[int, ...] = (),
                 board: str | Path | None = None, preload: bool = False) -> dict:
    """The driver's results ({outputs, cycles, mismatches} or {error}, with the link's
    `sent` bytes, `retries` and block `frames`, `pc_trace`: [cycle, pc] at each change of
    the accelerator's pc, the cycle counted from the SoC's reset, and where the memory is
    an SDRAM the model's command counts, `sdram`); `corrupt`: the ordinals of the block frames to
    corrupt on the wire (one data bit each); `board`: whose memory the SoC has (default:
    the package's board, else its DRAM on chip); `preload`: the DRAM image is in the
    SDRAM before the run starts (as a board's earlier load leaves it), and the driver
    sends only the inputs -- for an image the simulated UART would take long over."""
    from amaranth.back import verilog
    from cocotb_tools import runner as cocotb_runner

    from hwq.board.spec import check_fits, load_board
    from hwq.package import check_hardware
    from hwq.rtl.soc import Soc
    from hwq.sim.rtl_sim import VERILATOR_ARGS, VERILATOR_MAKE_VARS, _check_sim, cache_root

    pkg = open_package(package)
    _check_sim("verilator")
    recorded = pkg.manifest.get("board") or {}
    board = board or recorded.get("name")
    sdram = None
    if board is not None:
        b = load_board(board)
        check_fits(pkg, b)
        check_hardware(pkg, b.cfg)
        sdram = b.memory.sdram(pkg.cfg, recorded.get("clock_mhz", b.clock_hz / 1e6) * 1e6)
    if preload and sdram is None:
        raise HwqError("only an SoC with its DRAM in SDRAM can start with the image "
                       "preloaded (the chip's model holds it); name an SDRAM board")
    text = verilog.convert(Soc(pkg.cfg, divisor, sdram), name=SOC_MODULE, emit_src=False)
    args = VERILATOR_ARGS + SOC_VERILATOR_ARGS
    key = hashlib.sha256("\n".join([text, *args]).encode()).hexdigest()[:16]
    build = cache_root() / f"soc-{pkg.cfg.name}-{key}"
    if str(PACKAGE_ROOT.parent) not in sys.path:   # the simulator's Python imports hwq.board.host_tb
        sys.path.append(str(PACKAGE_ROOT.parent))
    runner = cocotb_runner.get_runner("verilator")
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join([saved or ""] + [f"{k}={v}" for k, v in
                                                         VERILATOR_MAKE_VARS.items()]).strip()
    try:
        if not (build / "BUILD_OK").exists():
            shutil.rmtree(build, ignore_errors=True)
            (build / "src").mkdir(parents=True)
            src = build / "src" / f"{SOC_MODULE}.v"
            src.write_text(text)
            runner.build(sources=[src], hdl_toplevel=SOC_MODULE, build_dir=build / "sim",
                         build_args=args, timescale=("1ns", "1ps"), always=True,
                         log_file=build / "build.log")
            (build / "BUILD_OK").write_text("ok\n")
        work = Path(tempfile.mkdtemp(prefix="soc-run-", dir=build))
        spec = {"package": str(Path(package).resolve()), "divisor": divisor,
                "corrupt": list(corrupt), "results": str(work / "results.json"),
                "board": None if board is None else str(b.path),
                "sdram_mhz": sdram and sdram.clock_mhz, "preload": preload}
        (work / "spec.json").write_text(json.dumps(spec))
        runner.test(test_module="hwq.board.host_tb", hdl_toplevel=SOC_MODULE,
                    hdl_toplevel_lang="verilog", build_dir=build / "sim", test_dir=work,
                    extra_env={"HWQ_SOC_SPEC": str(work / "spec.json")},
                    results_xml=str(work / "results.xml"), log_file=work / "sim.log")
    except (RuntimeError, SystemExit, OSError) as e:
        raise HwqError(f"SoC simulation failed ({e}); see {build}") from None
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    results = work / "results.json"
    if not results.exists():
        raise HwqError(f"SoC simulation wrote no results; see {work / 'sim.log'}")
    out = json.loads(results.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return out
