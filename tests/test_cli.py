"""The command line end to end, and every user mistake it must refuse cleanly."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
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
