"""The package: the directory `hwq compile` writes and everything else reads.

    manifest.yaml   format, model, hardware config + fingerprint, ISA version, quant
                    config, memory map, tensor layouts, tool versions, sha256 of each file
    program.bin     the instruction stream (+ program.asm, annotated)
    dram.bin        DRAM words 0 .. start_pc-1: weights, biases, activation slots
    reference.npz   sample inputs, float outputs, golden activations of every layer
    rtl/            the accelerator's Verilog
    reports/        what a person reads
    runs/           simulation results added later (not covered by the hashes)

Written atomically: built in a temporary sibling directory and renamed into place.
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
from hwq.compiler.layout import TensorLayout
from hwq.arch.config import HwConfig
from hwq.errors import HwqError

FORMAT_VERSION = 1
UNHASHED = ("manifest.yaml", "runs/")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_package(out: Path, manifest: dict, files: dict[str, bytes], zip_too: bool = False) -> Path:
    """Write `files` (relative path -> bytes) and the manifest, with hashes, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, blob in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        manifest = {**manifest, "format_version": FORMAT_VERSION,
                    "files": {rel: hashlib.sha256(blob).hexdigest()
                              for rel, blob in sorted(files.items())}}
        (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False, width=100))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if zip_too:
        _zip(out)
    return out


def _zip(out: Path) -> None:
    target = out.with_suffix(out.suffix + ".zip")
    with tempfile.NamedTemporaryFile(dir=out.parent, delete=False, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(out.rglob("*")):
                if path.is_file() and not str(path.relative_to(out)).startswith("runs/"):
                    info = zipfile.ZipInfo(str(Path(out.name) / path.relative_to(out)),
                                           date_time=(2020, 1, 1, 0, 0, 0))
                    z.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    os.replace(tmp.name, target)


@dataclass
class Package:
    path: Path
    manifest: dict

    @property
    def cfg(self) -> HwConfig:
        return HwConfig.from_dict(self.manifest["hardware"]["config"], source=f"{self.path}/manifest.yaml")

    @property
    def start_pc(self) -> int:
        return self.manifest["memory"]["start_pc"]

    def image(self) -> bytes:
        """The whole DRAM image the accelerator starts from: data, then the program."""
        data = (self.path / "dram.bin").read_bytes()
        return data + (self.path / "program.bin").read_bytes()

    def program(self) -> bytes:
        return (self.path / "program.bin").read_bytes()

    def tensors(self) -> dict[str, TensorLayout]:
        return {name: TensorLayout.from_dict(t["layout"])
                for name, t in self.manifest["tensors"].items()}

    def shapes(self) -> dict[str, tuple[int, int, int]]:
        return {name: tuple(t["shape"]) for name, t in self.manifest["tensors"].items()}

    def layer_order(self) -> list[str]:
        return [n for n in self.manifest["tensors"] if n != "input"]

    def reference(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "reference.npz") as z:
            return {k: z[k] for k in z.files}

    def golden(self) -> dict[str, np.ndarray]:
        ref = self.reference()
        return {k.removeprefix("golden/"): v for k, v in ref.items() if k.startswith("golden/")}

    def save_run(self, sim: str, arrays: dict[str, np.ndarray], meta: dict) -> Path:
        runs = self.path / "runs"
        runs.mkdir(exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        target = runs / f"{sim}.npz"
        tmp = runs / f".{sim}.npz.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, target)
        tmp_meta = runs / f".{sim}.yaml.tmp"
        tmp_meta.write_text(yaml.safe_dump(meta, sort_keys=False))
        os.replace(tmp_meta, runs / f"{sim}.yaml")
        return target

    def runs(self) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
        out = {}
        for meta_path in sorted((self.path / "runs").glob("*.yaml")):
            with np.load(meta_path.with_suffix(".npz")) as z:
                out[meta_path.stem] = ({k: z[k] for k in z.files}, yaml.safe_load(meta_path.read_text()))
        return out


def open_package(path: str | Path) -> Package:
    """Open and verify a package: every file against its manifest hash, and the
    hardware fingerprint against the config it records."""
    path = Path(path)
    mf = path / "manifest.yaml"
    if not mf.is_file():
        raise HwqError(f"{path} is not an hwq package (no manifest.yaml); create one with 'hwq compile'")
    try:
        manifest = yaml.safe_load(mf.read_text())
    except yaml.YAMLError:
        raise HwqError(f"{mf} is not valid YAML; recompile the package") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise HwqError(f"{path}: package format {manifest.get('format_version') if isinstance(manifest, dict) else '?'} "
                       f"is not {FORMAT_VERSION}; recompile it with this hwq")
    if manifest.get("isa_version") != isa.ISA_VERSION:
        raise HwqError(f"{path}: built for ISA v{manifest.get('isa_version')}, this hwq runs "
                       f"v{isa.ISA_VERSION}; recompile the package")
    for rel, digest in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise HwqError(f"{path}: file {rel} listed in the manifest is missing; recompile the package")
        if sha256_file(f) != digest:
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
