"""`hwq` command line. User mistakes end as one line on stderr and a non-zero status."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwq.errors import HwqError

SIMS = ("verilator", "icarus", "iss")


def _compile(a) -> None:
    from hwq.flow import compile_package, parse_shape

    if a.board and a.hw:
        raise HwqError("give --board or --hw, not both (a board file carries its hardware config)")
    out = compile_package(a.model, parse_shape(a.input_shape), a.calib, a.output,
                          hw=a.hw or "default", quant=a.quant_config, weights=a.weights,
                          n_ref=a.ref_images, zip_too=a.zip, progress=not a.quiet, board=a.board,
                          batch=a.batch)
    print(f"wrote {out}")


def _quantize(a) -> None:
    from hwq.flow import parse_shape, quantize_to_report

    text, _ = quantize_to_report(a.model, parse_shape(a.input_shape), a.calib, a.output,
                                 quant=a.quant_config, weights=a.weights, progress=not a.quiet)
    print(text)
    print(f"wrote {Path(a.output) / 'summary.md'} and {Path(a.output) / 'calibration.png'}")


def _inputs(a):
    """The array of --inputs (floats; int8 with --raw)."""
    from hwq.compiler.datasets import load_array
    return load_array(a.inputs, "inputs")


def _outputs_path(path: str) -> Path:
    """The --outputs file, checked before any work: a .npy name in a directory."""
    target = Path(path)
    if target.suffix != ".npy":
        raise HwqError(f"outputs {target}: give a .npy file name")
    if target.is_dir():
        raise HwqError(f"outputs {target} is a directory; give a .npy file name")
    if not target.parent.is_dir():
        raise HwqError(f"outputs {target}: directory {target.parent} does not exist")
    return target


def _save_outputs(target: Path, y) -> None:
    """Write the outputs whole or not at all."""
    import os
    import tempfile

    import numpy as np
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, y)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise HwqError(f"cannot write outputs {target}: {e.strerror or e}") from None


def _simulate(a) -> None:
    from hwq.arch.config import load_hw_config
    from hwq.package import check_hardware, open_package

    pkg = open_package(a.package)
    if a.hw is not None:
        check_hardware(pkg, load_hw_config(a.hw))
    if a.inputs is not None:
        target = _outputs_path(a.outputs)
        y = pkg.predict(_inputs(a), sim=a.sim, raw=a.raw, progress=not a.quiet)
        _save_outputs(target, y)
        print(f"{a.sim}: {len(y) if y.ndim == 4 else 1} inputs; outputs {y.dtype} {y.shape} "
              f"in {a.outputs}")
        return
    result = pkg.simulate(a.sim, progress=not a.quiet)
    cycles = sum(result.cycles) / len(result.cycles) / result.batch
    images = len(next(iter(result.activations.values())))
    print(f"{a.sim}: {images} images, status {', '.join(sorted(set(result.status)))}, "
          f"{cycles:.0f} cycles/inference; results in {pkg.path / 'runs'}; "
          f"check them with 'hwq compare {a.package}'")


def _run(a) -> None:
    from hwq.board.host import Link, SerialTransport, load_package, run_inputs, run_package
    from hwq.board.spec import check_fits, load_board
    from hwq.errors import MismatchError
    from hwq.package import check_hardware, open_package

    pkg = open_package(a.package)
    name = a.board or pkg.manifest.get("board", {}).get("name")
    if name is None:
        raise HwqError(f"{pkg.path} was compiled without --board; name the board with --board")
    board = load_board(name)
    check_fits(pkg, board)
    check_hardware(pkg, board.cfg)
    if a.sim:
        _run_simulated(a, pkg, board)
        return
    target = _outputs_path(a.outputs) if a.inputs is not None else None
    x = _inputs(a) if a.inputs is not None else None
    link = Link(SerialTransport(a.port, a.baud or board.baud), pkg.cfg.bus_bytes)
    if x is None:
        run = run_package(pkg, link, progress=not a.quiet)
    else:
        qmodel = pkg.qmodel()
        x_q, _ = pkg.quantize_inputs(x, raw=a.raw)
        load_package(pkg, link, progress=not a.quiet)
        run = run_inputs(pkg, link, x_q, progress=not a.quiet,
                         golden=pkg.predict(x_q, "golden", raw=True))
        _save_outputs(target, run.outputs if a.raw else qmodel.dequantize_output(run.outputs))
    n = len(run.outputs)
    if run.mismatches:
        raise MismatchError(f"{len(run.mismatches)}/{n} inputs differ from the golden outputs "
                            f"on {board.name} (first: input {run.mismatches[0]})")
    print(f"{board.name}: {n}/{n} inputs bit-exact with the golden model; "
          f"{sum(run.cycles) / (len(run.cycles) * pkg.batch):.0f} cycles/inference"
          f"{f'; outputs in {a.outputs}' if x is not None else ''}")


def _run_simulated(a, pkg, board) -> None:
    from hwq.board.host_sim import run_host_sim
    from hwq.errors import MismatchError

    if a.inputs is not None:
        raise HwqError("--sim runs the package's reference inputs; run other inputs with "
                       "'hwq simulate' (the accelerator alone) or on the board with --port")
    if not a.quiet:
        print(f"  {board.name} simulated on {a.sim}: the driver loads {len(pkg.image()):,} bytes "
              f"through a simulated UART and runs {len(pkg.reference()['input_int8'])} inputs "
              "(about a minute per 40 KiB)", file=sys.stderr, flush=True)
    r = run_host_sim(a.package, board=board.path)
    if "error" in r:
        raise HwqError(f"{board.name} (simulated): {r['error']}")
    n = len(r["outputs"])
    if r["mismatches"]:
        raise MismatchError(f"{len(r['mismatches'])}/{n} inputs differ from the golden outputs "
                            f"on {board.name} (simulated; first: input {r['mismatches'][0]})")
    memory = (f"; SDRAM model: {r['sdram']['refreshes']} refreshes, {r['sdram']['activates']} "
              f"row activations, no timing violated" if "sdram" in r else "")
    print(f"{board.name} (SoC simulated on {a.sim}): {n}/{n} inputs bit-exact with the golden "
          f"model; {sum(r['cycles']) / (len(r['cycles']) * pkg.batch):.0f} cycles/inference; "
          f"{r['sent']} bytes over the link{memory}")


def _compare(a) -> None:
    from hwq.package import open_package

    for line in open_package(a.package).compare():
        print(line)


def _debug(a) -> None:
    from hwq.errors import MismatchError
    from hwq.package import open_package

    d = open_package(a.package).debug(a.sim, a.image, waves=not a.no_waves)
    if d is None:
        print(f"{a.sim}: image {a.image}: the RTL and the ISS agree after every instruction")
        return
    raise MismatchError(f"{a.sim}: image {a.image}: first divergence at {d}")


def _disasm(a) -> None:
    from hwq.arch import isa
    from hwq.package import open_package

    pkg = open_package(a.package)
    sys.stdout.write((pkg.path / "program.asm").read_text() if not a.raw
                     else isa.disassemble(pkg.program()))


def _isa_doc(a) -> None:
    from hwq.arch import isa

    sys.stdout.write(isa.reference_markdown())


class _PointsFailed(HwqError):
    """Some points of a sweep failed: the sweep's results are written, the status is 1."""

    exit_code = 1


def _sweep(a) -> None:
    from hwq.sweeps.engine import sweep

    r = sweep(a.spec, a.output, scheduler=a.scheduler, workers=a.workers, progress=not a.quiet)
    print(f"sweep {r.spec.name}: {len(r.rows)} points, {len(r.rows) - len(r.failed)} ok "
          f"({r.ran} run, {r.cached} from the cache) in {r.seconds:.1f} s; "
          f"{r.out / 'results.csv'}, pareto.png, summary.md")
    for row in r.failed:
        seed = f" seed {row['seed']}" if row["seed"] != "" else ""
        print(f"  {row['status']}: {row['model']} on {row['config']}{seed}: {row['error']}")
    if r.failed:
        raise _PointsFailed(f"{len(r.failed)} of {len(r.rows)} points failed or mismatched; "
                            f"see {r.out / 'summary.md'}")


def _demo(a) -> None:
    from hwq.demo import run_demo

    run_demo(sim=a.sim, out=Path(a.output))


def _count(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be at least 1")
    return n


def _io_arguments(p: argparse.ArgumentParser, where: str) -> None:
    """--inputs / --outputs / --raw of `simulate` and `run`."""
    p.add_argument("--inputs", help=f"a .npy of inputs (N, C, H, W) to run {where} instead of the "
                   "package's reference inputs (floats; int8 with --raw)")
    p.add_argument("--outputs", help="the .npy to write their outputs to (with --inputs)")
    p.add_argument("--raw", action="store_true", help="inputs and outputs as int8 at the "
                   "package's fix positions, not floats")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """What `compile` and `quantize` both need to load and calibrate a model."""
    p.add_argument("model", help="path/to/file.py:ClassName, package.module:ClassName or "
                   "path/to/model.onnx")
    p.add_argument("--input-shape", required=True, help="CxHxW, e.g. 1x8x8")
    p.add_argument("--calib", required=True, help="calibration data: 'digits' or a .npy file")
    p.add_argument("--quant-config", help="quantization config: a name in hwq/configs/quant/ or a YAML path (default: default)")
    p.add_argument("--weights", help="state_dict file to load into the model")
    p.add_argument("-q", "--quiet", action="store_true")


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the arguments told in one line (not the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hwq", description="PyTorch model -> power-of-two int8 "
                                "systolic accelerator, proven bit-exact in RTL simulation")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="quantize and compile a model into a package")
    _model_arguments(c)
    c.add_argument("-o", "--output", required=True, help="package directory to write")
    c.add_argument("--hw", help="hardware config: a name in hwq/configs/hw/ or a YAML path (default: default)")
    c.add_argument("--board", help="board: a name in hwq/boards/ or a board YAML; its hardware config, "
                   "and a bitstream in the package")
    c.add_argument("--ref-images", type=_count, default=32,
                   help="sample inputs carried in the package (at least 1; default 32)")
    c.add_argument("--batch", type=_count, default=1,
                   help="inputs one run of the program takes (default 1): a Linear's weight "
                        "tiles then serve that many vectors each")
    c.add_argument("--zip", action="store_true", help="also write PACKAGE.zip")
    c.set_defaults(run=_compile)

    qz = sub.add_parser("quantize", help="quantize a model in software and report fix positions, "
                        "thresholds, SQNR and accuracy (no hardware limits)")
    _model_arguments(qz)
    qz.add_argument("-o", "--output", default="build/quant", help="report directory")
    qz.set_defaults(run=_quantize)

    s = sub.add_parser("simulate", help="run a package's reference inputs (or --inputs) on a simulator")
    s.add_argument("package")
    s.add_argument("--sim", choices=("golden", *SIMS), default="verilator",
                   help="golden (with --inputs), iss, verilator or icarus (default verilator)")
    _io_arguments(s, "on the simulator")
    s.add_argument("--hw", help="hardware config to run on (refused unless it is the package's)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(run=_simulate)

    r = sub.add_parser("run", help="run a package's reference inputs (or --inputs) on a board over its UART")
    r.add_argument("package")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB0")
    where.add_argument("--sim", choices=SIMS[:1], help="no board: the SoC's RTL on this "
                       "simulator, its memory the board's (an SDRAM as a model of the chip), "
                       "the reference inputs through a simulated UART")
    r.add_argument("--board", help="board: a name in hwq/boards/ or a board YAML (default: the one the package was built for)")
    r.add_argument("--baud", type=_count, help="override the board file's baud rate")
    _io_arguments(r, "on the board")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(run=_run)

    m = sub.add_parser("compare", help="check simulation runs against the golden model (exit 1 on mismatch)")
    m.add_argument("package")
    m.set_defaults(run=_compare)

    g = sub.add_parser("debug", help="step the ISS and the RTL together; report the first "
                       "instruction after which their buffers or DRAM differ (exit 1)")
    g.add_argument("package")
    g.add_argument("--sim", choices=SIMS[:2], default="verilator")
    g.add_argument("--image", type=int, default=0, help="reference image to run (default 0)")
    g.add_argument("--no-waves", action="store_true", help="skip the waveform of the diverging instruction")
    g.set_defaults(run=_debug)

    d = sub.add_parser("disasm", help="print a package's program")
    d.add_argument("package")
    d.add_argument("--raw", action="store_true", help="decode program.bin without the compiler's notes")
    d.set_defaults(run=_disasm)

    i = sub.add_parser("isa-doc", help="print the ISA reference (docs/isa.md)")
    i.set_defaults(run=_isa_doc)

    w = sub.add_parser("sweep", help="run a design-space sweep (models x hardware x boards x "
                       "seeds) on a Dask cluster; results.csv, pareto.png, summary.md")
    w.add_argument("spec", help="sweep spec: a YAML file, or a name in hwq/configs/sweeps/ "
                   "(regression)")
    w.add_argument("-o", "--output", default="build/sweep", help="results directory; its "
                   "points/ keeps finished points, so a re-run does only new work "
                   "(default build/sweep)")
    w.add_argument("--scheduler", help="a running Dask scheduler's address, e.g. "
                   "tcp://host:8786 (default: a local cluster)")
    w.add_argument("--workers", type=_count, help="worker processes of the local cluster "
                   "(default: one per core)")
    w.add_argument("-q", "--quiet", action="store_true")
    w.set_defaults(run=_sweep)

    e = sub.add_parser("demo", help="train, compile, simulate and compare the digits LeNet")
    e.add_argument("--sim", choices=SIMS[:2], default="verilator")
    e.add_argument("-o", "--output", default="build/lenet.hwq")
    e.set_defaults(run=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if getattr(args, "inputs", None) is not None and not args.outputs:
        p.error(f"{args.command} --inputs needs --outputs FILE.npy")
    if getattr(args, "outputs", None) and args.inputs is None:
        p.error(f"{args.command} --outputs needs --inputs FILE.npy")
    if args.command == "simulate" and args.sim == "golden" and args.inputs is None:
        p.error("simulate --sim golden runs --inputs; the reference run needs iss, verilator "
                "or icarus")
    try:
        args.run(args)
    except HwqError as e:
        print(f"hwq {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"hwq {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
