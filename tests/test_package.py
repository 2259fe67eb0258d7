"""The package on disk: what `hwq compile -o` may replace, what a failed write leaves,
permissions, concurrent runs, and crafted or damaged packages."""
import errno
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import hwq
from conftest import LENET, copy_package

COMPILE = ["compile", LENET, "--input-shape", "1x8x8", "--calib", "digits", "-q",
           "--ref-images", "2"]


def test_compile_never_replaces_a_users_directory(cli, tmp_path, monkeypatch):
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "thesis.tex").write_text("hi")
    code, _, err = cli(*COMPILE, "-o", paper)
    assert code == 2 and "exists and is not an hwq package" in err and err.count("\n") == 1
    assert (paper / "thesis.tex").read_text() == "hi"
    monkeypatch.chdir(paper)
    code, _, err = cli(*COMPILE, "-o", ".")
    assert code == 2 and "is the current directory" in err
    assert sorted(p.name for p in paper.iterdir()) == ["thesis.tex"]


def test_compile_never_replaces_a_file(cli, tmp_path):
    model = tmp_path / "model.py"
    model.write_text("print('my model')\n")
    code, _, err = cli(*COMPILE, "-o", model)
    assert code == 2 and "is a file, not a package directory" in err
    assert model.read_text() == "print('my model')\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def test_compile_replaces_an_empty_directory_and_its_own_package(cli, tmp_path):
    out = tmp_path / "p.hwq"
    out.mkdir()
    assert cli(*COMPILE, "-o", out)[0] == 0
    first = (out / "manifest.sha256").read_text()
    assert cli(*COMPILE, "-o", out)[0] == 0          # a package it wrote: replaced
    assert (out / "manifest.sha256").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.hwq"]


def test_package_modes_follow_the_umask(cli, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli(*COMPILE, "-o", tmp_path / "p.hwq", "--zip")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "p.hwq").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "p.hwq" / "program.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "p.hwq.zip").stat().st_mode & 0o777 == 0o644


def test_read_only_output_directory(cli, tmp_path, monkeypatch):
    """The directory refuses the package's temporary sibling (root ignores a 0555 mode, so
    the refusal is the kernel's answer, made by hand)."""
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    code, _, err = cli(*COMPILE, "-o", tmp_path / "p.hwq")
    assert code == 2 and "cannot write the package" in err and "Permission denied" in err
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_output_under_a_file(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = cli(*COMPILE, "-o", tmp_path / "afile" / "p.hwq")
    assert code == 2 and "cannot write the package" in err and err.count("\n") == 1
    assert (tmp_path / "afile").read_text() == "x"


def test_full_disk_while_zipping_leaves_no_temporary(cli, tmp_path, monkeypatch):
    real = zipfile.ZipFile.writestr

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    code, _, err = cli(*COMPILE, "-o", tmp_path / "p.hwq", "--zip")
    monkeypatch.setattr(zipfile.ZipFile, "writestr", real)
    assert code == 2 and "is written, but its zip" in err and "No space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.hwq"]
    hwq.load(tmp_path / "p.hwq")                      # the package itself is whole


def test_full_disk_while_writing_leaves_nothing(cli, tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, "write_bytes", full)
    code, _, err = cli(*COMPILE, "-o", tmp_path / "p.hwq")
    monkeypatch.undo()
    assert code == 2 and "cannot write the package" in err and "No space left" in err
    assert not list(tmp_path.iterdir())


def test_two_simulations_of_one_package_at_once(lenet_package, tmp_path):
    pkg = copy_package(lenet_package, tmp_path / "p.hwq")
    exe = Path(sys.executable).parent / "hwq"
    procs = [subprocess.Popen([str(exe), "simulate", str(pkg), "--sim", "iss", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert sorted(p.name for p in (pkg / "runs").iterdir()) == ["iss.npz", "iss.yaml"]
    assert "iss: 8/8 images bit-exact" in hwq.load(pkg).compare()[0]


def _rewrite_manifest(pkg: Path, edit) -> None:
    """Edit a package's manifest and give it a matching digest, as a crafted package would."""
    manifest = yaml.safe_load((pkg / "manifest.yaml").read_text())
    edit(manifest)
    text = yaml.safe_dump(manifest, sort_keys=False).encode()
    (pkg / "manifest.yaml").write_bytes(text)
    (pkg / "manifest.sha256").write_text(hashlib.sha256(text).hexdigest() + "\n")


def test_an_edited_manifest_is_refused(cli, lenet_package, tmp_path):
    pkg = copy_package(lenet_package, tmp_path / "p.hwq")
    text = (pkg / "manifest.yaml").read_text()
    (pkg / "manifest.yaml").write_text(text.replace("start_pc:", "start_pc: 1 #"))
    code, _, err = cli("simulate", pkg, "--sim", "iss")
    assert code == 2 and "manifest.yaml does not match manifest.sha256" in err


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("memory"), "lacks memory"),
    (lambda m: m["output"].pop("tensor"), "lacks output.tensor"),
    (lambda m: m.update(files=[1, 2]), "files must map paths"),
    (lambda m: m["hardware"].update(config={"rows": "eight"}), "rows: 'eight' must be an integer"),
])
def test_a_crafted_manifest_ends_in_one_line(cli, lenet_package, tmp_path, edit, message):
    pkg = copy_package(lenet_package, tmp_path / "p.hwq")
    _rewrite_manifest(pkg, edit)
    code, _, err = cli("simulate", pkg, "--sim", "iss")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_garbage_reference_is_refused(cli, lenet_package, tmp_path):
    pkg = copy_package(lenet_package, tmp_path / "p.hwq")
    (pkg / "reference.npz").write_bytes(b"not a zip at all")
    digest = hashlib.sha256(b"not a zip at all").hexdigest()
    _rewrite_manifest(pkg, lambda m: m["files"].update({"reference.npz": digest}))
    code, _, err = cli("simulate", pkg, "--sim", "iss")
    assert code == 2 and "reference.npz is not a readable .npz" in err and err.count("\n") == 1


def test_a_program_breaking_an_isa_rule_stops_cleanly(lenet_package):
    """A GEMM that writes one accumulator twice (the ISA requires distinct entries): the
    ISS stops with one line naming the pc, no traceback."""
    from hwq.arch import isa
    from hwq.sim.runner import simulate
    pkg = hwq.load(lenet_package)
    cfg = pkg.cfg
    bad = isa.to_bytes([isa.Instr.make("GEMM", wgt=0, inp=0, acc=0, reset=1, n_outer=1, n_inner=2,
                                       inp_so=0, inp_si=1, acc_so=0, acc_si=0),
                        isa.Instr.make("END")])
    image = pkg.image()[:pkg.start_pc * cfg.bus_bytes] + bad
    x = pkg.reference()["input_int8"][:1]
    with pytest.raises(hwq.HwqError, match=f"iss: input 0: pc {pkg.start_pc}: GEMM writes one "
                       "accumulator entry twice"):
        simulate(cfg, image, pkg.start_pc, pkg.tensors(), pkg.shapes(), x, "iss")


def test_a_zip_given_as_a_package_is_told_to_unzip(cli, tmp_path):
    assert cli(*COMPILE, "-o", tmp_path / "p.hwq", "--zip")[0] == 0
    code, _, err = cli("simulate", tmp_path / "p.hwq.zip", "--sim", "iss")
    assert code == 2 and "unzip it first" in err
    with zipfile.ZipFile(tmp_path / "p.hwq.zip") as z:
        z.extractall(tmp_path / "unzipped")
    pkg = hwq.load(tmp_path / "unzipped" / "p.hwq")
    assert np.array_equal(pkg.predict(pkg.reference()["input_float"]),
                          pkg.qmodel().dequantize_output(pkg.golden()[pkg.output_name]))


@pytest.mark.parametrize("argv, message", [
    (COMPILE[:-1] + ["0"], "argument --ref-images: 0 must be at least 1"),
    (COMPILE[:-1] + ["-3"], "argument --ref-images: -3 must be at least 1"),
    (COMPILE[:-1] + ["two"], "argument --ref-images: 'two' is not a whole number"),
    (["run", "p.hwq", "--port", "/dev/null", "--baud=-5"], "argument --baud: -5 must be at least 1"),
])
def test_counts_are_whole_and_positive(cli, tmp_path, argv, message):
    code, _, err = cli(*argv, "-o", tmp_path / "p.hwq") if argv[0] == "compile" else cli(*argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())
