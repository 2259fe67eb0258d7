"""Whole compiled networks on the RTL: golden == ISS == RTL, bit for bit."""
from pathlib import Path

import numpy as np
import pytest

from hwq.cli import main
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.lower import compile_model
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate
from test_lower import CONFIGS, conv, pool

pytestmark = pytest.mark.slow
LENET = Path(__file__).resolve().parent.parent / "hwq" / "examples" / "lenet_digits.py"


def every_kind(seed=1):
    rng = np.random.default_rng(seed)
    return QModel("net", (3, 9, 7), 4, [
        conv(rng, "c1", "input", 3, 5, 3, 9, 7, 1, 1, "relu", "half_even"),
        pool("p1", "c1", 5, 9, 7, 2, 2),
        conv(rng, "c2", "p1", 5, 9, 3, 4, 3, 2, 1, "none", "std_round"),
        QLayer("flat", "flatten", "c2", (9, 2, 2), (36, 1, 1), 3, 3),
        conv(rng, "fc", "flat", 36, 7, 1, 1, 1, 1, 0, "none", "half_down")])


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
@pytest.mark.parametrize("name", ["default", "small", "tall"])
def test_every_layer_kind_on_rtl(name, sim):
    cfg, qmodel = CONFIGS[name], every_kind()
    x = np.random.default_rng(7).integers(-128, 128, (3, *qmodel.input_shape)).astype(np.int8)
    _golden_iss_rtl(qmodel, cfg, x, sim)


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_lenet_cli_on_rtl(tmp_path, capsys, sim):
    pkg = tmp_path / "lenet.hwq"
    assert main(["compile", f"{LENET}:LeNet", "--input-shape", "1x8x8",
                 "--calib", "digits", "-o", str(pkg), "-q"]) == 0
    assert main(["simulate", str(pkg), "--sim", sim, "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", str(pkg)]) == 0
    out = capsys.readouterr().out
    assert f"{sim}: 32/32 images bit-exact" in out


@pytest.mark.parametrize("name", ["default", "tall"])
def test_every_layer_kind_batched_on_rtl(name):
    """A program for 3 inputs a run, given 5 (the second run's batch filled up with
    zeros): the flatten + linear stacked, the rest image by image."""
    cfg, qmodel = CONFIGS[name], every_kind()
    x = np.random.default_rng(8).integers(-128, 128, (5, *qmodel.input_shape)).astype(np.int8)
    _golden_iss_rtl(qmodel, cfg, x, batch=3)


@pytest.mark.parametrize("name", ["default", "small"])
def test_every_layer_kind_from_a_late_memory(name):
    """A config keeping 8 DRAM reads in flight, its memory answering 1-8 cycles late and
    dropping `ready`: every layer bit-exact, in more cycles than the model's (which a
    next-cycle memory meets: test_rtl_accel.py::test_reads_in_flight)."""
    import dataclasses
    cfg = dataclasses.replace(CONFIGS[name], name=f"{name}-reads8", dram_reads=8)
    qmodel = every_kind()
    x = np.random.default_rng(9).integers(-128, 128, (2, *qmodel.input_shape)).astype(np.int8)
    compiled = compile_model(qmodel, cfg, batch=2)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    golden = run_golden(qmodel, x)
    iss = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, "iss")
    rtl = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x,
                   "verilator", late_memory=True)
    assert rtl.ok and first_mismatch(rtl, golden, list(golden), cfg.cols) is None
    assert rtl.cycles[0] > iss.cycles[0]


def test_batched_lenet_cli_on_rtl(tmp_path, capsys):
    pkg = tmp_path / "lenet.hwq"
    assert main(["compile", f"{LENET}:LeNet", "--input-shape", "1x8x8", "--calib", "digits",
                 "--batch", "4", "--ref-images", "10", "-o", str(pkg), "-q"]) == 0
    assert main(["simulate", str(pkg), "--sim", "verilator", "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", str(pkg)]) == 0
    assert "verilator: 10/10 images bit-exact" in capsys.readouterr().out
    assert main(["debug", str(pkg), "--sim", "verilator", "--image", "9", "--no-waves"]) == 0
    assert "agree after every instruction" in capsys.readouterr().out


def test_debug_steps_a_package_on_rtl(tmp_path, capsys):
    """`hwq debug` compares ISS and RTL state after every instruction of a real package."""
    pkg = tmp_path / "lenet.hwq"
    assert main(["compile", f"{LENET}:LeNet", "--input-shape", "1x8x8", "--calib", "digits",
                 "--ref-images", "2", "-o", str(pkg), "-q"]) == 0
    capsys.readouterr()
    assert main(["debug", str(pkg), "--sim", "verilator", "--image", "1", "--no-waves"]) == 0
    assert "agree after every instruction" in capsys.readouterr().out
    assert main(["debug", str(pkg), "--image", "5"]) == 2
    assert "carries 2 reference images" in capsys.readouterr().err


def _golden_iss_rtl(qmodel, cfg, x, sim="verilator", batch=1):
    """Compile `qmodel` (for `batch` inputs a run), run `x` on the ISS and the RTL: both
    bit-exact with the golden model on every layer, cycles and counters equal. The
    compiled program."""
    compiled = compile_model(qmodel, cfg, batch=batch)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    golden = run_golden(qmodel, x)
    iss = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, "iss")
    rtl = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, sim)
    assert rtl.ok and iss.ok
    assert first_mismatch(iss, golden, list(golden), cfg.cols) is None
    assert first_mismatch(rtl, golden, list(golden), cfg.cols) is None
    assert rtl.cycles == iss.cycles and rtl.counters == iss.counters
    return compiled


@pytest.mark.parametrize("name", ["default", "tall"])
def test_dag_kinds_on_rtl(name):
    """Residual add, depthwise and grouped conv, concat and both average pools, through
    the quantizer, compiled and run on the RTL: golden == ISS == RTL, cycles equal."""
    from hwq.compiler.frontend import trace
    from hwq.compiler.quant.pipeline import quantize
    from hwq.compiler.quant.config import load_quant_config
    from test_lower_kinds import Block
    cfg = CONFIGS[name]
    xf = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    qmodel = quantize(trace(Block(), (3, 8, 8), "block"), xf, load_quant_config(), progress=False)
    _golden_iss_rtl(qmodel, cfg, qmodel.quantize_input(xf[:3]))


@pytest.mark.parametrize("name", ["default", "tall"])
def test_per_channel_on_rtl(name):
    """Per-channel weights (POST lane_shifts, a shift per output lane) on the RTL: golden ==
    ISS == RTL bit for bit, cycles and counters equal."""
    import dataclasses
    cfg, qmodel = CONFIGS[name], every_kind(2)
    rng = np.random.default_rng(5)
    qmodel.layers = [dataclasses.replace(l, f_wc=rng.integers(-2, 14, l.out_shape[0]))
                     if l.kind == "conv" else l for l in qmodel.layers]
    x = np.random.default_rng(8).integers(-128, 128, (2, *qmodel.input_shape)).astype(np.int8)
    compiled = _golden_iss_rtl(qmodel, cfg, x)
    assert {i["lane_shifts"] for i in compiled.program if i.op == "POST"} == {1}
