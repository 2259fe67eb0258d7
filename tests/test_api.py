"""The Python API: hwq.compile on an nn.Module, Package.predict on the user's inputs
(golden == ISS == RTL, bit for bit), save / load, simulate / compare, and its refusals."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hwq
from conftest import copy_package, float_inputs


@pytest.fixture(scope="module")
def pkg(lenet_package):
    return hwq.load(lenet_package)


def test_predict_gives_the_float_model_back(pkg, digits):
    """The digits test split through the package's golden model: the trained LeNet's
    accuracy, as floats at the output's fix position."""
    from hwq.examples.lenet_digits import pretrained
    import torch
    x, y = digits[2], digits[3]
    out = pkg.predict(x)
    assert out.dtype == np.float32 and out.shape == (len(x), 10, 1, 1)
    assert (out.reshape(len(x), -1).argmax(1) == y).mean() > 0.9
    with torch.no_grad():
        ref = pretrained()(torch.from_numpy(x)).numpy()
    assert (out.reshape(len(x), -1).argmax(1) == ref.argmax(1)).mean() > 0.95
    step = 2.0 ** -pkg.manifest["output"]["fix"]
    assert np.all(np.round(out / step) == out / step)          # on the output's grid


@settings(max_examples=12, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(1), st.just(8), st.just(8)),
                  elements=st.floats(-2, 2, width=32)))
def test_iss_equals_golden_on_any_input(pkg, x):
    assert np.array_equal(pkg.predict(x, sim="iss", raw=False), pkg.predict(x, sim="golden"))


def test_raw_inputs_and_one_input(pkg, digits):
    x = digits[2][:3]
    x_q, one = pkg.quantize_inputs(x)
    assert x_q.dtype == np.int8 and not one
    raw = pkg.predict(x_q, sim="iss", raw=True)
    assert raw.dtype == np.int8
    assert np.array_equal(pkg.qmodel().dequantize_output(raw), pkg.predict(x, sim="iss"))
    single = pkg.predict(x[0], sim="iss")
    assert single.shape == (10, 1, 1) and np.array_equal(single, pkg.predict(x[:1])[0])


@pytest.mark.parametrize("x, kw, message", [
    (np.zeros((2, 3, 8, 8), np.float32), {}, r"inputs of shape \(2, 3, 8, 8\);.*takes \(1, 8, 8\)"),
    (np.zeros((0, 1, 8, 8), np.float32), {}, "inputs of shape"),
    (np.full((1, 1, 8, 8), np.nan, np.float32), {}, "NaN or infinity"),
    (np.array([[[["a"] * 8] * 8]]), {}, "give real numbers"),
    (np.zeros((1, 1, 8, 8), np.float32), {"raw": True}, "raw inputs are float32"),
    (np.zeros((1, 1, 8, 8), np.float32), {"sim": "spice"}, "unknown simulator 'spice'"),
])
def test_predict_refuses_bad_inputs(pkg, x, kw, message):
    with pytest.raises(hwq.HwqError, match=message):
        pkg.predict(x, **kw)


def test_save_load_simulate_compare(pkg, tmp_path):
    copy = pkg.save(tmp_path / "copy.hwq")
    assert hwq.load(copy.path).manifest["files"] == pkg.manifest["files"]
    copy.simulate("iss")
    assert copy.compare() == [l for l in copy.compare() if "bit-exact" in l]
    assert (tmp_path / "copy.hwq" / "runs" / "iss.yaml").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(hwq.HwqError, match="exists and is not an hwq package"):
        pkg.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_compile_from_python_on_a_module(tmp_path):
    """An nn.Module of the user's, calibration data as an array, the package in a
    temporary directory that is gone once the interpreter exits."""
    code = """
import numpy as np, torch, hwq
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
x = np.random.default_rng(0).normal(size=(20, 2, 4, 4)).astype(np.float32)
pkg = hwq.compile(model, (2, 4, 4), x, hw="small")
assert np.array_equal(pkg.predict(x[:5], sim="iss"), pkg.predict(x[:5]))
print(pkg.path)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    path = run.stdout.strip().splitlines()[-1]
    assert path.endswith("Sequential.hwq")
    assert not __import__("pathlib").Path(path).exists()     # removed at exit
    assert not list(tmp_path.iterdir())                      # nothing left in the cwd


def test_compile_refuses_board_and_hw():
    with pytest.raises(hwq.HwqError, match="give board or hw, not both"):
        hwq.compile(None, (1, 8, 8), hw="small", board="icebreaker")


@pytest.mark.slow
@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_predict_on_rtl_equals_golden(pkg, sim, tmp_path):
    import shutil
    if sim == "icarus" and not shutil.which("iverilog"):
        pytest.skip("Icarus Verilog is not installed")
    x = float_inputs(3)
    assert np.array_equal(pkg.predict(x, sim=sim, raw=False), pkg.predict(x, sim="golden"))


def test_cli_simulate_with_inputs(cli, lenet_package, tmp_path):
    x = float_inputs(4)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli("simulate", lenet_package, "--sim", "iss", "--inputs", tmp_path / "x.npy",
                         "--outputs", tmp_path / "y.npy", "-q")
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "y.npy"), hwq.load(lenet_package).predict(x))
    np.save(tmp_path / "xq.npy", hwq.load(lenet_package).quantize_inputs(x)[0])
    code, _, err = cli("simulate", lenet_package, "--sim", "golden", "--raw", "--inputs",
                       tmp_path / "xq.npy", "--outputs", tmp_path / "yq.npy")
    assert code == 0, err and np.load(tmp_path / "yq.npy").dtype == np.int8
    # the package is unchanged: runs with --inputs are not recorded
    assert not (lenet_package / "runs").exists() or not list((lenet_package / "runs").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--inputs", "x.npy"], "--inputs needs --outputs"),
    (["--outputs", "y.npy"], "--outputs needs --inputs"),
    (["--sim", "golden"], "--sim golden runs --inputs"),
    (["--inputs", "missing.npy", "--outputs", "y.npy"], "inputs missing.npy: cannot read it"),
    (["--inputs", "x.npy", "--outputs", "y.txt"], "give a .npy file name"),
])
def test_cli_simulate_refuses(cli, lenet_package, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", float_inputs(2))
    code, _, err = cli("simulate", lenet_package, "--sim", "iss", "-q", *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "y.txt").exists()


def test_package_copy_helper_keeps_runs_out(lenet_package, tmp_path):
    copy = copy_package(lenet_package, tmp_path / "c.hwq")
    assert hwq.load(copy).manifest == hwq.load(lenet_package).manifest
