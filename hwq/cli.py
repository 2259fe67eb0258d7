"""`hwq` command line. User mistakes end as one line on stderr and a non-zero status."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwq.errors import HwqError

SIMS = ("verilator", "icarus", "iss")


def _compile(a) -> None:
    from hwq.flow import compile_package, parse_shape

    out = compile_package(a.model, parse_shape(a.input_shape), a.calib, a.output, hw=a.hw,
                          quant=a.quant_config, weights=a.weights, n_ref=a.ref_images,
                          zip_too=a.zip, progress=not a.quiet)
    print(f"wrote {out}")


def _simulate(a) -> None:
    from hwq.flow import simulate_package

    pkg, result = simulate_package(a.package, a.sim, hw=a.hw, progress=not a.quiet)
    cycles = sum(result.cycles) / len(result.cycles)
    print(f"{a.sim}: {len(result.status)} images, status {', '.join(sorted(set(result.status)))}, "
          f"{cycles:.0f} cycles/inference; results in {pkg.path / 'runs'}; "
          f"check them with 'hwq compare {a.package}'")


def _compare(a) -> None:
    from hwq.flow import compare_package

    for line in compare_package(a.package):
        print(line)


def _disasm(a) -> None:
    from hwq.compiler import isa
    from hwq.package import open_package

    pkg = open_package(a.package)
    sys.stdout.write((pkg.path / "program.asm").read_text() if not a.raw
                     else isa.disassemble(pkg.program()))


def _isa_doc(a) -> None:
    from hwq.compiler import isa

    sys.stdout.write(isa.reference_markdown())


def _demo(a) -> None:
    from hwq.demo import run_demo

    run_demo(sim=a.sim, out=Path(a.output))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwq", description="PyTorch model -> power-of-two int8 "
                                "systolic accelerator, proven bit-exact in RTL simulation")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="quantize and compile a model into a package")
    c.add_argument("model", help="path/to/file.py:ClassName")
    c.add_argument("--input-shape", required=True, help="CxHxW, e.g. 1x8x8")
    c.add_argument("--calib", required=True, help="calibration data: 'digits' or a .npy file")
    c.add_argument("-o", "--output", required=True, help="package directory to write")
    c.add_argument("--hw", default="default", help="hardware config name in configs/ or a YAML path")
    c.add_argument("--quant-config", help="quantization YAML (default configs/quant_default.yaml)")
    c.add_argument("--weights", help="state_dict file to load into the model")
    c.add_argument("--ref-images", type=int, default=32, help="sample inputs carried in the package")
    c.add_argument("--zip", action="store_true", help="also write PACKAGE.zip")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(run=_compile)

    s = sub.add_parser("simulate", help="run a package's reference inputs on a simulator")
    s.add_argument("package")
    s.add_argument("--sim", choices=SIMS, default="verilator")
    s.add_argument("--hw", help="hardware config to run on (refused unless it is the package's)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(run=_simulate)

    m = sub.add_parser("compare", help="check simulation runs against the golden model (exit 1 on mismatch)")
    m.add_argument("package")
    m.set_defaults(run=_compare)

    d = sub.add_parser("disasm", help="print a package's program")
    d.add_argument("package")
    d.add_argument("--raw", action="store_true", help="decode program.bin without the compiler's notes")
    d.set_defaults(run=_disasm)

    i = sub.add_parser("isa-doc", help="print the ISA reference (docs/isa.md)")
    i.set_defaults(run=_isa_doc)

    e = sub.add_parser("demo", help="train, compile, simulate and compare the digits LeNet")
    e.add_argument("--sim", choices=SIMS[:2], default="verilator")
    e.add_argument("-o", "--output", default="build/lenet.hwq")
    e.set_defaults(run=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
