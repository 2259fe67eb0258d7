"""The command line end to end, and every user mistake it must refuse cleanly."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hwq.cli import main
from hwq.arch import isa

ROOT = Path(__file__).resolve().parent.parent

TINY = textwrap.dedent("""
    import torch, torch.nn as nn, torch.nn.functional as F

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(6 * 3 * 3, 5)
        def forward(self, x):
            x = self.pool(F.relu(self.bn(self.conv(x))))
            return self.fc(torch.flatten(x, 1))

    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
        def forward(self, x):
            return F.gelu(self.conv(x))

    class Dead(Tiny):
        def __init__(self):
            super().__init__()
            with torch.no_grad():
                self.fc.weight.fill_(1e-30)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
        def forward(self, x, y):
            return self.conv(x) + self.conv(y)
""")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "tiny.py").write_text(TINY)
    np.save(d / "calib.npy", np.random.default_rng(0).normal(size=(40, 3, 6, 6)).astype(np.float32))
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def compile_tiny(capsys, model_file, out, *extra):
    return run(capsys, "compile", f"{model_file / 'tiny.py'}:Tiny", "--input-shape", "3x6x6",
               "--calib", model_file / "calib.npy", "-o", out, "-q", *extra)


@pytest.fixture(scope="module")
def package(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "tiny.hwq"
    assert main(["compile", f"{model_file / 'tiny.py'}:Tiny", "--input-shape", "3x6x6", "--calib",
                 str(model_file / "calib.npy"), "-o", str(out), "-q"]) == 0
    return out


def test_package_has_what_the_design_lists(package):
    manifest = yaml.safe_load((package / "manifest.yaml").read_text())
    for f in ("program.bin", "program.asm", "dram.bin", "reference.npz", "rtl/hwq_accelerator.v",
              "reports/summary.md", "reports/layer_error.png"):
        assert f in manifest["files"]
    assert manifest["hardware"]["fingerprint"]
    assert manifest["isa_version"] == isa.ISA_VERSION
    assert manifest["output"]["shape"] == [5, 1, 1]
    assert not list(package.parent.glob(".tiny.hwq*")), "temporary directory left behind"


def test_iss_simulate_and_compare(capsys, package):
    code, out, err = run(capsys, "simulate", package, "--sim", "iss", "-q")
    assert code == 0, err
    code, out, err = run(capsys, "compare", package)
    assert code == 0, err
    assert "bit-exact" in out and "iss: 32/32" in out


def test_disasm_lists_the_program(capsys, package):
    code, out, _ = run(capsys, "disasm", package)
    assert code == 0
    lines = out.strip().splitlines()
    assert "END" in lines[-1] and "GEMM" in out and "conv: rows" in out


def test_compare_reports_where_a_run_departs(capsys, package, tmp_path):
    import shutil
    pkg = tmp_path / "p.hwq"
    shutil.copytree(package, pkg)
    assert run(capsys, "simulate", pkg, "--sim", "iss", "-q")[0] == 0
    runs = dict(np.load(pkg / "runs" / "iss.npz"))
    layer = [k for k in runs if k not in ("input",)][0]
    runs[layer][3, 1, 0, 2] ^= 1
    np.savez(pkg / "runs" / "iss.npz", **runs)
    code, _, err = run(capsys, "compare", pkg)
    assert code == 1
    assert f"layer '{layer}' image 3 element (c=1, y=0, x=2)" in err
    assert len(err.strip().splitlines()) == 1


def test_tampered_package_is_refused(capsys, package, tmp_path):
    import shutil
    pkg = tmp_path / "p.hwq"
    shutil.copytree(package, pkg)
    blob = bytearray((pkg / "dram.bin").read_bytes())
    blob[5] ^= 0xFF
    (pkg / "dram.bin").write_bytes(bytes(blob))
    code, _, err = run(capsys, "simulate", pkg, "--sim", "iss")
    assert code == 2 and "dram.bin does not match its sha256" in err


def test_package_for_other_hardware_is_refused(capsys, package):
    code, _, err = run(capsys, "simulate", package, "--sim", "iss", "--hw", "small")
    assert code == 2 and "was compiled for hardware" in err


def test_unsupported_op_leaves_no_package(capsys, model_file, tmp_path):
    out = tmp_path / "gelu.hwq"
    code, _, err = run(capsys, "compile", f"{model_file / 'tiny.py'}:Gelu", "--input-shape",
                       "3x6x6", "--calib", model_file / "calib.npy", "-o", out, "-q")
    assert code == 2
    assert "unsupported op gelu at node 'gelu'" in err and "forward line" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--input-shape", "3x6"], "input shape '3x6'"),
    (["--calib", "nope"], "unknown calibration set 'nope'"),
    (["--hw", "nonexistent"], "hardware config 'nonexistent' not found"),
    (["--input-shape", "3x7x7"], "calibration file"),
])
def test_bad_compile_arguments(capsys, model_file, tmp_path, argv, message):
    args = {"--input-shape": "3x6x6", "--calib": str(model_file / "calib.npy")}
    args.update(dict(zip(argv[::2], argv[1::2])))
    flat = [x for kv in args.items() for x in kv]
    code, _, err = run(capsys, "compile", f"{model_file / 'tiny.py'}:Tiny", *flat, "-o",
                       tmp_path / "x.hwq", "-q")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.hwq").exists()


def test_missing_model_and_package(capsys, tmp_path):
    code, _, err = run(capsys, "compile", tmp_path / "none.py:Net", "--input-shape", "1x8x8",
                       "--calib", "digits", "-o", tmp_path / "o")
    assert code == 2 and "model file" in err and "not found" in err
    code, _, err = run(capsys, "simulate", tmp_path, "--sim", "iss")
    assert code == 2 and "not an hwq package" in err
    code, _, err = run(capsys, "compare", tmp_path)
    assert code == 2


def test_compare_without_runs(capsys, package, tmp_path):
    import shutil
    pkg = tmp_path / "p.hwq"
    shutil.copytree(package, pkg, ignore=shutil.ignore_patterns("runs"))
    code, _, err = run(capsys, "compare", pkg)
    assert code == 2 and "no simulation runs" in err


def test_recompiling_is_reproducible(capsys, model_file, package, tmp_path):
    out = tmp_path / "again.hwq"
    assert compile_tiny(capsys, model_file, out)[0] == 0
    a = yaml.safe_load((package / "manifest.yaml").read_text())["files"]
    b = yaml.safe_load((out / "manifest.yaml").read_text())["files"]
    for f in ("program.bin", "dram.bin", "rtl/hwq_accelerator.v"):
        assert a[f] == b[f]


def test_console_script_exit_status(tmp_path):
    hwq = Path(sys.executable).parent / "hwq"
    r = subprocess.run([str(hwq), "simulate", str(tmp_path), "--sim", "iss"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("hwq simulate: error:") and "Traceback" not in r.stderr


class Payload:
    """An object whose unpickling touches `marker`: what torch.load must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _state(model, drop=(), **extra):
    sd = {k: v for k, v in model.state_dict().items() if k not in drop}
    return {**sd, **extra}


@pytest.mark.parametrize("save, message", [
    (lambda m, p, d: torch.save(m, p),
     ".Tiny, pickled by torch.save(model)), which hwq does not unpickle; give a state_dict "
     "instead: torch.save(model.state_dict(), path)"),
    (lambda m, p, d: torch.save(list(m.state_dict().values()), p),
     "holds a list, not a state_dict; give a state_dict instead: "
     "torch.save(model.state_dict(), path)"),
    (lambda m, p, d: p.write_text("conv.weight: [1, 2]\n"),
     "is not a file torch.save wrote, or is damaged; give a state_dict instead: "
     "torch.save(model.state_dict(), path)"),
    (lambda m, p, d: torch.save(Payload(d / "pwned"), p),
     "holds pickled Python objects (builtins.getattr, pathlib.Path, pathlib.PosixPath), which hwq "
     "does not unpickle"),
    (lambda m, p, d: torch.save({"model": m.state_dict(), "epoch": 3}, p),
     "holds a dict whose 'model' entry is not a tensor (OrderedDict; a training checkpoint?)"),
    (lambda m, p, d: torch.save(_state(m, ["fc.bias"], **{"head.weight": torch.zeros(1)}), p),
     "do not fit Tiny: missing 1 key (fc.bias); unexpected 1 key (head.weight); give the "
     "state_dict of a Tiny"),
    (lambda m, p, d: torch.save(_state(m, [k for k in m.state_dict() if k.startswith("bn.")]), p),
     "do not fit Tiny: missing 5 keys (bn.weight, bn.bias, bn.running_mean, and 2 more)"),
    (lambda m, p, d: torch.save(_state(m, **{"fc.weight": torch.zeros(5, 6)}), p),
     "do not fit Tiny: wrong shape for 1 tensor (fc.weight: (5, 6), the model's (5, 54))"),
], ids=["whole-model", "list", "text", "code", "checkpoint", "keys", "many-keys", "shape"])
def test_weights_that_are_not_a_state_dict(capsys, model_file, tmp_path, save, message):
    from hwq.flow import load_model

    model, _, _ = load_model(f"{model_file / 'tiny.py'}:Tiny")
    weights = tmp_path / "weights.pt"
    save(model, weights, tmp_path)
    code, _, err = compile_tiny(capsys, model_file, tmp_path / "x.hwq", "--weights", weights)
    assert code == 2 and err.startswith(f"hwq compile: error: weights {weights} "), err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.hwq").exists()


@pytest.mark.parametrize("target", [
    "torch.fx._symbolic_trace._Patcher.__init__",   # fx's cleanup then asserts: a new error
    "torch.fx.Tracer.call_module",
    "hwq.compiler.frontend._ShapeProbe.call_module",
])
def test_interrupt_while_tracing(capsys, model_file, tmp_path, monkeypatch, target):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupt)
    code, _, err = compile_tiny(capsys, model_file, tmp_path / "x.hwq")
    assert (code, err) == (130, "hwq compile: interrupted\n")
    assert not list(tmp_path.iterdir())


def test_messages_name_the_actual_problem(capsys, model_file, tmp_path):
    def compile_model(name, *extra):
        code, _, err = run(capsys, "compile", f"{model_file / 'tiny.py'}:{name}", "--input-shape",
                           "3x6x6", "--calib", model_file / "calib.npy", "-o", tmp_path / "x.hwq",
                           "-q", *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert compile_model("Two") == ("hwq compile: error: model Two: hwq compiles models with one "
                                    "input tensor; its forward takes 2 (x, y)\n")
    err = compile_model("Dead")
    assert "layer 'fc' (forward line " in err and "bias range" not in err
    assert "its weights (max |w| = 1e-30) are too small to represent in int8 next to its bias" in err
    assert compile_model("Tiny", "--hw", "nonexistent") == (   # no quantization config listed
        "hwq compile: error: hardware config 'nonexistent' not found; available: big_dram, default, "
        "small, tall (or give a path to a .yaml file)\n")
    assert not (tmp_path / "x.hwq").exists()


@pytest.mark.parametrize("option, files, message", [
    ("--hw", {"bad.yaml": "hardware: 5\n"},
     "bad.yaml: hardware: must be a mapping of hardware fields, got int"),
    ("--hw", {"bad.yaml": "name: [1, 2]\n"}, "bad.yaml: hardware.name: [1, 2] must be a string"),
    ("--hw", {"bad.yaml": "base: {dir}/five.yaml\nrows: 4\n", "five.yaml": "hardware: 5\n"},
     "five.yaml: hardware: must be a mapping of hardware fields, got int"),
    ("--hw", {"bad.yaml": b"rows: 4\n\xff\xfe\n"},
     "hardware config {dir}/bad.yaml: not a text file (not UTF-8); give a YAML file"),
    ("--quant-config", {"bad.yaml": b"target_device: DPU\n\xff\n"},
     "quant config {dir}/bad.yaml: not a text file (not UTF-8); give a YAML file"),
    ("--board", {"bad.yaml": "board: [a, b]\nhardware: {{}}\n"},
     "bad.yaml: board must be a mapping of fields, got list"),
], ids=["hardware-int", "name-list", "base-hardware-int", "hw-not-utf8", "quant-not-utf8",
        "board-list"])
def test_bad_config_files(capsys, model_file, tmp_path, option, files, message):
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes)
                                      else text.format(dir=tmp_path).encode())
    code, _, err = compile_tiny(capsys, model_file, tmp_path / "x.hwq", option,
                                tmp_path / "bad.yaml")
    assert code == 2 and message.format(dir=tmp_path) in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.hwq").exists()


def quantize_tiny(capsys, model_file, out):
    return run(capsys, "quantize", f"{model_file / 'tiny.py'}:Tiny", "--input-shape", "3x6x6",
               "--calib", model_file / "calib.npy", "-o", out, "-q")


def test_quantize_refuses_a_file_as_its_report_directory(capsys, model_file, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    code, _, err = quantize_tiny(capsys, model_file, mine)
    assert (code, err) == (2, f"hwq quantize: error: report directory {mine} is a file; choose "
                              "another output path (-o)\n")
    assert mine.read_text() == "mine"


def test_quantize_leaves_no_half_written_report(capsys, model_file, tmp_path, monkeypatch):
    out = tmp_path / "report"
    (out / "summary.md").mkdir(parents=True)      # the report's file cannot replace it
    code, _, err = quantize_tiny(capsys, model_file, out)
    assert code == 2 and err == (f"hwq quantize: error: cannot write the report in {out}: Is a "
                                 f"directory ({out / 'summary.md'})\n")
    assert [p.name for p in out.iterdir()] == ["summary.md"]

    def interrupt(*args):
        raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    monkeypatch.setattr("os.replace", interrupt)
    code, _, err = quantize_tiny(capsys, model_file, out)
    assert (code, err) == (130, "hwq quantize: interrupted\n")
    assert not list(out.iterdir())


def test_console_script_user_mistakes(model_file, tmp_path):
    """Through the installed `hwq`: one line on stderr, exit 2, no traceback."""
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")
    (tmp_path / "five.yaml").write_text("hardware: 5\n")
    (tmp_path / "report").write_text("a file")
    tiny = f"{model_file / 'tiny.py'}"
    common = ["--input-shape", "3x6x6", "--calib", str(model_file / "calib.npy"), "-q"]
    out = ["-o", str(tmp_path / "x.hwq")]
    hwq = Path(sys.executable).parent / "hwq"
    whole = str(tmp_path / "whole.pt")
    for argv in (["compile", f"{tiny}:Tiny", *common, *out, "--weights", whole],
                 ["compile", f"{tiny}:Two", *common, *out],
                 ["compile", f"{tiny}:Tiny", *common, *out, "--hw", str(tmp_path / "five.yaml")],
                 ["quantize", f"{tiny}:Tiny", *common, "-o", str(tmp_path / "report")]):
        r = subprocess.run([str(hwq), *argv], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"hwq {argv[0]}: error: ")
    assert not (tmp_path / "x.hwq").exists()
