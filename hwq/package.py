"""The package: the directory `hwq compile` writes, and what runs it.

    manifest.yaml    format, model, hardware config + fingerprint, ISA version, quant
                     config, memory map, tensor layouts, tool versions, sha256 of each file
    manifest.sha256  the sha256 of manifest.yaml, so that no byte of the package goes
                     unchecked
    program.bin      the instruction stream (+ program.asm, annotated)
    dram.bin         DRAM words 0 .. start_pc-1: weights, biases, activation slots
    qmodel.npz       the quantized model, which the golden model runs on new inputs
    reference.npz    sample inputs, float outputs, golden activations of every layer
    rtl/             the accelerator's Verilog
    reports/         what a person reads
    runs/            simulation results added later (not covered by the hashes)

Written atomically: built in a temporary sibling directory and renamed into place. An
existing directory is replaced only if it is empty or an hwq package; nothing else of the
user's is ever overwritten.

`Package` is also the Python API's handle on a package: `predict` runs inputs of the
user's on the golden model, the ISS or an RTL simulator; `simulate` records a run of the
reference inputs and `compare` checks the recorded runs against the golden model.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.compiler.ir import QModel, qmodel_from_npz
from hwq.compiler.layout import TensorLayout
from hwq.errors import HwqError, MismatchError
from hwq.sim.runner import SIMULATORS, SimResult, batches, first_mismatch, simulate

FORMAT_VERSION = 2
MANIFEST, DIGEST = "manifest.yaml", "manifest.sha256"
PREDICTORS = ("golden", *SIMULATORS)
# What every manifest holds, section by section (a crafted or truncated one is refused).
_REQUIRED = {"model": (), "hardware": ("config", "fingerprint"), "isa_version": (),
             "quantization": (), "memory": ("bus_bytes", "start_pc", "regions"), "tensors": (),
             "input": ("tensor", "shape", "fix"), "output": ("tensor", "shape", "fix"),
             "program": ("instructions", "useful_macs", "iss_cycles"), "files": ()}


# What may hold the accelerator's DRAM on a board (a board file's `memory.kind`, recorded
# in a package compiled for it), and what a message calls it.
MEMORY_KINDS = {"block_ram": "block RAM", "spram": "SPRAM", "sdram": "SDRAM"}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _umask() -> int:
    """The process's umask, read without setting it where the OS allows (setting it, even
    for a moment, would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_package(path: Path) -> bool:
    """Whether `path` is a directory hwq wrote: its manifest says so."""
    try:
        manifest = yaml.safe_load((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest and "files" in manifest


def check_target(out: Path) -> None:
    """Refuse, before any work, an output path hwq must not replace: a file, the current
    directory or one above it, or a directory that holds anything but an hwq package."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise HwqError(f"{out} is a file, not a package directory; choose another output "
                       "path (-o)")
    if not out.exists():
        return
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise HwqError(f"{out} is the current directory or holds it; write the package to a "
                       "directory of its own (e.g. -o model.hwq)")
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise HwqError(f"cannot read {out} ({e.strerror}); choose another output path") from None
    if not empty and not is_package(out):
        raise HwqError(f"{out} exists and is not an hwq package; hwq replaces only a package "
                       "it wrote: choose another output path (-o) or remove it yourself")


def write_package(out: Path, manifest: dict, files: dict[str, bytes], zip_too: bool = False) -> Path:
    """Write `files` (relative path -> bytes) and the manifest, with hashes, atomically."""
    out = Path(out)
    check_target(out)
    manifest = {**manifest, "format_version": FORMAT_VERSION,
                "files": {rel: hashlib.sha256(blob).hexdigest()
                          for rel, blob in sorted(files.items())}}
    text = yaml.safe_dump(manifest, sort_keys=False, width=100).encode()
    files = {**files, MANIFEST: text, DIGEST: (hashlib.sha256(text).hexdigest() + "\n").encode()}
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o777 & ~_umask())            # mkdtemp's 0700 would hide it from others
        for rel, blob in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise HwqError(f"cannot write the package {out}: {e.strerror or e}"
                       f"{f' ({e.filename})' if e.filename else ''}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if zip_too:
        _zip(out)
    return out


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write `files` (name -> bytes) into `directory` (made if need be), each whole or not
    at all: each is written to a temporary beside its target and renamed into place once
    all are written, so a failure or an interrupt leaves no file half-written and no
    temporary, and concurrent writers each leave whole files (the last one's stay).
    Raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    temps = []
    try:
        for name, blob in files.items():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.chmod(tmp, 0o666 & ~_umask())   # mkstemp's 0600 would hide them from others
        for name, tmp in zip(files, temps):
            os.replace(tmp, directory / name)
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)


def _zip(out: Path) -> None:
    target = out.with_suffix(out.suffix + ".zip")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(out.rglob("*")):
                if path.is_file() and not str(path.relative_to(out)).startswith("runs/"):
                    info = zipfile.ZipInfo(str(Path(out.name) / path.relative_to(out)),
                                           date_time=(2020, 1, 1, 0, 0, 0))
                    z.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise HwqError(f"the package {out} is written, but its zip {target} is not: "
                       f"{e.strerror or e}") from None


@dataclass
class Package:
    path: Path
    manifest: dict

    @property
    def cfg(self) -> HwConfig:
        return HwConfig.from_dict(self.manifest["hardware"]["config"], source=f"{self.path}/{MANIFEST}")

    @property
    def start_pc(self) -> int:
        return self.manifest["memory"]["start_pc"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def output_name(self) -> str:
        return self.manifest["output"]["tensor"]

    @property
    def batch(self) -> int:
        """The inputs one run of the program takes."""
        return self.manifest["program"].get("batch", 1)

    def image(self) -> bytes:
        """The whole DRAM image the accelerator starts from: data, then the program."""
        return (self.path / "dram.bin").read_bytes() + self.program()

    def program(self) -> bytes:
        return (self.path / "program.bin").read_bytes()

    def tensors(self) -> dict[str, TensorLayout]:
        return {name: TensorLayout.from_dict(t["layout"])
                for name, t in self.manifest["tensors"].items()}

    def shapes(self) -> dict[str, tuple[int, int, int]]:
        return {name: tuple(t["shape"]) for name, t in self.manifest["tensors"].items()}

    def layer_order(self) -> list[str]:
        return [n for n in self.manifest["tensors"] if n != "input"]

    def _npz(self, rel: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path / rel, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise HwqError(f"{self.path}: {rel} is not a readable .npz ({e}); recompile the "
                           "package") from None

    def reference(self) -> dict[str, np.ndarray]:
        return self._npz("reference.npz")

    def golden(self) -> dict[str, np.ndarray]:
        ref = self.reference()
        return {k.removeprefix("golden/"): v for k, v in ref.items() if k.startswith("golden/")}

    def qmodel(self) -> QModel:
        try:
            return qmodel_from_npz((self.path / "qmodel.npz").read_bytes())
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            raise HwqError(f"{self.path}: qmodel.npz is not readable ({e}); recompile the "
                           "package") from None

    # ---- running it ----
    def check_memory(self, board: str, memory: dict) -> None:
        """Refuse to run on `board` if its `memory` ({kind, bytes}: a board file's, as the
        manifest records it) does not hold the DRAM image."""
        need = len(self.image())
        if need > memory["bytes"]:
            raise HwqError(f"{self.path}: its DRAM image is {need} bytes and {board}'s memory "
                           f"({MEMORY_KINDS.get(memory['kind'], memory['kind'])}) holds "
                           f"{memory['bytes']}; compile the model for a board with more memory")

    def check_rtl(self) -> None:
        """Refuse to simulate RTL that is not what this hwq generates for the package's
        hardware (the package would be tested against a design it was not built for)."""
        from hwq.rtl.export import generate_verilog
        rtl = hashlib.sha256(generate_verilog(self.cfg).encode()).hexdigest()
        if rtl != self.manifest["files"]["rtl/hwq_accelerator.v"]:
            raise HwqError(f"{self.path}: its rtl/ is not what this hwq generates for hardware "
                           f"{self.cfg.fingerprint}; recompile the package")

    def run(self, x_int8: np.ndarray, sim: str, every_layer: bool = True,
            progress: bool = False) -> SimResult:
        """The int8 inputs `x_int8` (N, C, H, W) run on simulator `sim` (iss, verilator,
        icarus), `batch` per run: every stored tensor's values, or the input's and
        output's alone."""
        if sim not in SIMULATORS:
            raise HwqError(f"unknown simulator '{sim}'; choose one of {', '.join(SIMULATORS)}")
        board = self.manifest.get("board") or {}
        if "memory" in board:              # a package compiled for a board runs in its memory
            self.check_memory(board["name"], board["memory"])
        if sim != "iss":
            self.check_rtl()
        tensors = self.tensors()
        if not every_layer:
            tensors = {k: tensors[k] for k in ("input", self.output_name)}
        return simulate(self.cfg, self.image(), self.start_pc, tensors, self.shapes(), x_int8,
                        sim, progress)

    def predict(self, x, sim: str = "golden", raw: bool = False,
                progress: bool = False) -> np.ndarray:
        """The model's outputs for inputs `x` of shape (N, C, H, W) or one (C, H, W), run on
        `sim`: the golden model, the ISS or an RTL simulator (verilator, icarus). Float
        inputs are quantized at the package's input fix position and the outputs come back
        as floats; with raw=True both are int8."""
        if sim not in PREDICTORS:
            raise HwqError(f"unknown simulator '{sim}'; choose one of {', '.join(PREDICTORS)}")
        x_q, one = self.quantize_inputs(x, raw)
        qmodel = self.qmodel()
        if sim == "golden":
            from hwq.sim.golden import run_golden
            y = run_golden(qmodel, x_q, every_layer=False)[self.output_name]
        else:
            result = self.run(x_q, sim, every_layer=False, progress=progress)
            bad = [(i, s) for i, s in enumerate(result.status) if s != "ok"]
            if bad:
                raise HwqError(f"{sim}: {result.inputs_of(bad[0][0])}: the accelerator stopped "
                               f"with status {bad[0][1]}")
            y = result.activations[self.output_name]
        y = y if raw else qmodel.dequantize_output(y)
        return y[0] if one else y

    def quantize_inputs(self, x, raw: bool = False) -> tuple[np.ndarray, bool]:
        """Inputs (N, C, H, W), or one (C, H, W), checked and as int8 at the input fix
        position: float ones quantized as the package's quantization config says, raw
        ones (raw=True) taken as they are. Also whether one input was given."""
        x = np.asarray(x)
        one = x.shape == self.input_shape
        if one:
            x = x[None]
        want = ", ".join(map(str, self.input_shape))
        if x.ndim != 4 or x.shape[1:] != self.input_shape or len(x) == 0:
            raise HwqError(f"inputs of shape {x.shape}; {self.path} takes ({want}) or (N, {want})")
        if raw:
            if x.dtype != np.int8:
                raise HwqError(f"raw inputs are {x.dtype}; raw ones are int8 values at the "
                               f"input fix position {self.manifest['input']['fix']}")
            return x, one
        if x.dtype.kind not in "fiu":
            raise HwqError(f"inputs are {x.dtype}; give real numbers (float32)")
        if not np.isfinite(x).all():
            raise HwqError("inputs hold NaN or infinity")
        return self.qmodel().quantize_input(x.astype(np.float32)), one

    def simulate(self, sim: str = "verilator", progress: bool = False) -> SimResult:
        """Run the reference inputs on `sim` and record the run in runs/ (see compare)."""
        result = self.run(self.reference()["input_int8"], sim, progress=progress)
        cfg = self.cfg
        useful = self.manifest["program"]["useful_macs"]
        cycles = float(np.mean(result.cycles))
        # status and cycles per run of the program, a batch of `batch` images
        meta = {"sim": sim, "status": result.status, "cycles": [int(c) for c in result.cycles],
                "images": len(result.activations["input"]), "batch": result.batch,
                "mac_utilization": useful / (cfg.rows * cfg.cols * cycles) if cycles else 0.0,
                # performance counters (hwq/arch/perf.py), summed over the images
                "counters": {k: int(sum(c[k] for c in result.counters)) for k in
                             (result.counters[0] if result.counters else {})}}
        self.save_run(sim, result.activations, meta)
        return result

    def compare(self) -> list[str]:
        """Check every recorded run against the golden activations: a line per run, or
        MismatchError saying where the first difference is."""
        runs = self.runs()
        if not runs:
            raise HwqError(f"{self.path} has no simulation runs; run 'hwq simulate {self.path}' "
                           "first (or Package.simulate)")
        golden = self.golden()
        lines, failures = [], []
        for sim, (acts, meta) in runs.items():
            bad_status = [s for s in meta["status"] if s != "ok"]
            if bad_status:
                failures.append(f"{sim}: the accelerator stopped with status {bad_status[0]}")
                continue
            result = SimResult(sim, meta["status"], meta["cycles"], acts, batch=meta.get("batch", 1))
            where = first_mismatch(result, golden, self.layer_order(), self.cfg.cols)
            if where:
                hint = (f"; find the first diverging instruction with 'hwq debug {self.path} "
                        f"--sim {sim} --image {where.image}'" if sim != "iss" else "")
                failures.append(f"{sim}: mismatch at {where}{hint}")
            else:
                n = meta["images"]
                lines.append(f"{sim}: {n}/{n} images bit-exact with the golden model on all "
                             f"{len(self.layer_order())} layers; "
                             f"{np.mean(meta['cycles']) / result.batch:.0f} cycles/inference, MAC utilization {100 * meta['mac_utilization']:.1f}%")
        if failures:
            raise MismatchError("; ".join(failures))
        return lines

    def debug(self, sim: str = "verilator", image: int = 0, waves: bool = True):
        """Run reference image `image` (with the rest of its batch) on the ISS and the RTL
        side by side, comparing every buffer and DRAM after each instruction; the first
        divergence (a hwq.sim.difftest.Divergence, with a waveform of that instruction) or
        None."""
        from hwq.sim.difftest import first_divergence

        if sim not in SIMULATORS[1:]:
            raise HwqError("debug compares the ISS with an RTL simulator; choose verilator or icarus")
        x = self.reference()["input_int8"]
        if not 0 <= image < len(x):
            raise HwqError(f"{self.path} carries {len(x)} reference images; image {image} is not one")
        self.check_rtl()
        inp = self.tensors()["input"]
        notes = isa.disassembly_notes((self.path / "program.asm").read_text())
        return first_divergence(self.cfg, self.image(), self.start_pc,
                                [(inp.region.word, inp.pack(batches(x, self.batch)[image // self.batch]))], sim=sim,
                                notes=notes, waves=waves)

    # ---- recorded runs ----
    def save_run(self, sim: str, arrays: dict[str, np.ndarray], meta: dict) -> Path:
        """Record a run; concurrent runs each write whole files and the last one stays."""
        runs = self.path / "runs"
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        try:
            write_files(runs, {f"{sim}.npz": buf.getvalue(),
                               f"{sim}.yaml": yaml.safe_dump(meta, sort_keys=False).encode()})
        except OSError as e:
            raise HwqError(f"cannot record the run in {runs}: {e.strerror or e}") from None
        return runs / f"{sim}.npz"

    def runs(self) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
        out = {}
        for meta_path in sorted((self.path / "runs").glob("*.yaml")):
            try:
                meta = yaml.safe_load(meta_path.read_text())
                with np.load(meta_path.with_suffix(".npz"), allow_pickle=False) as z:
                    out[meta_path.stem] = ({k: z[k] for k in z.files}, meta)
            except (OSError, ValueError, yaml.YAMLError, zipfile.BadZipFile) as e:
                raise HwqError(f"{meta_path.parent}: the {meta_path.stem} run is not readable "
                               f"({e}); run 'hwq simulate' again") from None
        return out

    def save(self, out: str | Path, zip_too: bool = False) -> "Package":
        """A copy of this package at `out` (the same rules as `hwq compile -o`); the copy."""
        files = {str(p.relative_to(self.path)): p.read_bytes() for p in sorted(self.path.rglob("*"))
                 if p.is_file() and not str(p.relative_to(self.path)).startswith(("runs/", MANIFEST, DIGEST))}
        manifest = {k: v for k, v in self.manifest.items() if k not in ("format_version", "files")}
        return open_package(write_package(Path(out), manifest, files, zip_too))


def open_package(path: str | Path) -> Package:
    """Open and verify a package: the manifest against its digest, every file against its
    manifest hash, and the hardware fingerprint against the config it records."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        hint = ("; unzip it first" if zipfile.is_zipfile(path) else
                "; create one with 'hwq compile'")
        raise HwqError(f"{path} is not an hwq package (no {MANIFEST}){hint}")
    try:
        text = mf.read_bytes()
        manifest = yaml.safe_load(text.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise HwqError(f"{mf} is not readable YAML; recompile the package") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else "?"
        raise HwqError(f"{path}: package format {version} is not {FORMAT_VERSION}; recompile it "
                       "with this hwq")
    digest = path / DIGEST
    if not digest.is_file() or digest.read_text().strip() != hashlib.sha256(text).hexdigest():
        raise HwqError(f"{path}: {MANIFEST} does not match {DIGEST} (modified or corrupted); "
                       "recompile the package")
    for key, inner in _REQUIRED.items():
        section = manifest.get(key)
        missing = [key] if section is None else \
            [f"{key}.{k}" for k in inner if not isinstance(section, dict) or k not in section]
        if missing:
            raise HwqError(f"{path}: {MANIFEST} lacks {', '.join(missing)}; recompile the package")
    if manifest["isa_version"] != isa.ISA_VERSION:
        raise HwqError(f"{path}: built for ISA v{manifest['isa_version']}, this hwq runs "
                       f"v{isa.ISA_VERSION}; recompile the package")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise HwqError(f"{path}: {MANIFEST} files must map paths to sha256; recompile the package")
    for rel, want in files.items():
        f = path / str(rel)
        if not f.is_file():
            raise HwqError(f"{path}: file {rel} listed in the manifest is missing; recompile the package")
        if sha256_file(f) != want:
            raise HwqError(f"{path}: {rel} does not match its sha256 in the manifest "
                           "(modified or corrupted); recompile the package")
    pkg = Package(path, manifest)
    if pkg.cfg.fingerprint != manifest["hardware"]["fingerprint"]:
        raise HwqError(f"{path}: hardware fingerprint {manifest['hardware']['fingerprint']} does not "
                       f"match its recorded config ({pkg.cfg.fingerprint}); recompile the package")
    return pkg


def check_hardware(pkg: Package, cfg: HwConfig) -> None:
    """Refuse to run a package on hardware it was not compiled for."""
    want = pkg.manifest["hardware"]["fingerprint"]
    if cfg.fingerprint != want:
        raise HwqError(f"package {pkg.path} was compiled for hardware {want} "
                       f"({pkg.manifest['hardware']['config']['name']}), but the RTL asked for is "
                       f"{cfg.fingerprint} ({cfg.name}); recompile the package for that hardware")
