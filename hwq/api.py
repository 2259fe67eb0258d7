"""hwq's Python API: compile a PyTorch model into a package, load one, run inputs on it.

    import hwq
    pkg = hwq.compile(model, (1, 8, 8), calib)     # calib: (N, 1, 8, 8) floats or "digits"
    y = pkg.predict(x, sim="iss")                  # or "golden", "verilator", "icarus"
    pkg.save("lenet.hwq")
    pkg = hwq.load("lenet.hwq")

The CLI (hwq/cli.py) runs the same functions.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from hwq.errors import HwqError
from hwq.flow import REFERENCE_IMAGES, compile_package
from hwq.package import Package, open_package

_SCRATCH: list[Path] = []          # packages compiled without `out`, removed at exit


def _remove_scratch() -> None:
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_scratch)


def compile(model: torch.nn.Module | str | Path, input_shape, calib: np.ndarray | str = "digits",
            hw: str = "default", quant: str | None = None, board: str | None = None,
            out: str | Path | None = None, n_ref: int = REFERENCE_IMAGES,
            progress: bool = False, batch: int = 1) -> Package:
    """Quantize and compile `model` (an nn.Module, a `path/to/model.onnx`, or a spec
    `file.py:Name` / `module:Name`) for inputs of `input_shape` (C, H, W),
    calibrated on `calib` (an array (N, C, H, W) of float inputs, a .npy path, or
    "digits"); `hw` names a hardware config (or a YAML path), `quant` a quantization
    config, `board` a board (its config, and a bitstream in the package); `batch` the
    inputs one run of the program takes (a Linear's weight tiles then serve `batch`
    vectors each; predict and the host driver run inputs `batch` at a time). The package is
    written to `out`, or to a temporary directory removed at exit (keep it with
    Package.save)."""
    if board is not None and hw != "default":
        raise HwqError("give board or hw, not both (a board file carries its hardware config)")
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix="hwq-"))
        _SCRATCH.append(scratch)
        name = type(model).__name__ if isinstance(model, torch.nn.Module) else \
            Path(str(model).rpartition(":")[2]).stem
        out = scratch / f"{name}.hwq"
    path = compile_package(model if isinstance(model, torch.nn.Module) else str(model), tuple(input_shape), calib, out, hw=hw, quant=quant,
                           n_ref=n_ref, progress=progress, board=board, batch=batch)
    return open_package(path)


def load(path: str | Path) -> Package:
    """The package at `path`, every file checked against its manifest."""
    return open_package(path)
