"""What several test files share: the repository's paths, the CLI run in-process, and a
small trained package."""
from pathlib import Path

import numpy as np
import pytest

from hwq.cli import main

ROOT = Path(__file__).resolve().parent.parent
LENET = "hwq.examples.lenet_digits:LeNet"


@pytest.fixture
def cli(capsys):
    """Run `hwq ARGS...` in this process: (exit status, stdout, stderr); a mistake in the
    arguments themselves exits as the console script does."""
    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: x_train, y_train, x_test, y_test."""
    from hwq.compiler.datasets import digits_split
    return digits_split()


@pytest.fixture(scope="session")
def lenet_package(tmp_path_factory, digits):
    """The digits LeNet compiled on the default hardware through the Python API, with 8
    reference images; read it, do not change it (copy it first)."""
    import hwq
    from hwq.examples.lenet_digits import pretrained
    out = tmp_path_factory.mktemp("lenet") / "lenet.hwq"
    return hwq.compile(pretrained(), (1, 8, 8), digits[0][:256], out=out, n_ref=8).path


def copy_package(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("runs"))
    return dst


def float_inputs(n: int, shape=(1, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)
