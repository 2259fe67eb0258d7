"""hwq as a user installs it: a wheel built from the tree, installed into a fresh venv
that has only torch 2.13.0, run from an empty directory with a copy of the example
model; nothing written into site-packages or the current directory but the package."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
TORCH = "torch==2.13.0"      # the CPU wheel on this machine's disk (an unpinned one is CUDA)


def _run(cmd, cwd, env, timeout=1200):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", ROOT],
         tmp, env)
    wheels = list((tmp / "dist").glob("hwq-*.whl"))
    assert len(wheels) == 1
    _run([sys.executable, "-m", "venv", tmp / "venv"], tmp, env)
    pip = tmp / "venv" / "bin" / "pip"
    _run([pip, "install", "-q", TORCH], tmp, env)
    _run([pip, "install", "-q", wheels[0]], tmp, env)
    env["XDG_CACHE_HOME"] = str(tmp / "cache")          # where the user's caches go
    env.pop("HWQ_CACHE_DIR", None)
    return tmp / "venv", env


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_the_wheel_works_from_an_empty_directory(venv, tmp_path):
    root, env = venv
    site = _site_packages(root) / "hwq"
    assert (site / "configs" / "hw" / "default.yaml").is_file()
    assert (site / "boards" / "ulx3s-85f.yaml").is_file()
    before = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(site / "examples" / "lenet_digits.py", work / "lenet_digits.py")
    hwq = root / "bin" / "hwq"
    _run([hwq, "compile", "lenet_digits.py:LeNet", "--input-shape", "1x8x8", "--calib", "digits",
          "-o", "lenet.hwq", "-q"], work, env)
    out = _run([hwq, "simulate", "lenet.hwq", "--sim", "iss", "-q"], work, env)
    assert "32 images, status ok" in out
    out = _run([hwq, "compare", "lenet.hwq"], work, env)
    assert "iss: 32/32 images bit-exact" in out
    code = ("import hwq, numpy as np\n"
            "from hwq.examples.lenet_digits import pretrained\n"
            "from hwq.compiler.datasets import digits_split\n"
            "xtr, _, xte, yte = digits_split()\n"
            "pkg = hwq.compile(pretrained(), (1, 8, 8), xtr[:128])\n"
            "y = pkg.predict(xte[:16], sim='iss')\n"
            "assert np.array_equal(y, pkg.predict(xte[:16]))\n"
            "print('top1', (y.reshape(16, -1).argmax(1) == yte[:16]).mean())\n")
    out = _run([root / "bin" / "python", "-c", code], work, env)
    assert float(out.split()[-1]) > 0.8
    assert sorted(p.name for p in work.iterdir()) == ["lenet.hwq", "lenet_digits.py"]
    after = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    assert after == before, f"written into site-packages: {sorted(map(str, after - before))[:5]}"
    assert (Path(env["XDG_CACHE_HOME"]) / "hwq").is_dir()
