"""Per-channel weights on the array: POST's lane_shifts (ISA v4) gives each output lane
its own shift, so a layer with one weight fix position per output channel compiles, and
the ISS (and the RTL, in the slow test) compute what the golden model computes, bit for
bit. Per-tensor layers compile to the same programs as before (lane_shifts=0)."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hwq.cli import main
from hwq.compiler.ir import QModel
from hwq.compiler.lower import compile_model
from hwq.errors import HwqError
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate
from test_lower import CONFIGS, conv

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "hwq" / "examples" / "lenet_digits.py"
STUDY = ROOT / "hwq" / "configs" / "quant" / "percentile_perchannel.yaml"
# bbuf for two blocks' entries only (one slot of bias + offsets each, and two slots)
BIAS_ONE = dataclasses.replace(CONFIGS["small"], name="bias_one", bbuf_depth=2)
BIAS_TWO = dataclasses.replace(CONFIGS["small"], name="bias_two", bbuf_depth=4)


def per_channel(layer, rng, lo=5, hi=10):
    """`layer` with a random weight fix position per output channel."""
    return dataclasses.replace(layer, f_wc=rng.integers(lo, hi, layer.out_shape[0]))


def run(qmodel, cfg, n=2, seed=0, sim="iss"):
    x = np.random.default_rng(seed).integers(-128, 128, (n, *qmodel.input_shape)).astype(np.int8)
    compiled = compile_model(qmodel, cfg)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x, sim)
    assert result.ok, result.status
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None
    return compiled, result


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 12), cout=st.integers(1, 19), k=st.sampled_from([1, 3]),
       h=st.integers(3, 8), w=st.integers(3, 8), stride=st.integers(1, 2),
       pad=st.integers(0, 1), act=st.sampled_from(["none", "relu"]),
       mode=st.sampled_from(["half_up", "half_even", "half_down", "std_round"]),
       cfg=st.sampled_from([CONFIGS["default"], CONFIGS["small"], CONFIGS["tall"], BIAS_ONE,
                            BIAS_TWO]),
       spread=st.sampled_from([(7, 8), (5, 10), (0, 14), (-30, 28)]), seed=st.integers(0, 2**16))
def test_per_channel_conv_matches_golden(cin, cout, k, h, w, stride, pad, act, mode, cfg,
                                         spread, seed):
    rng = np.random.default_rng(seed)
    layer = conv(rng, "c", "input", cin, cout, k, h, w, stride, pad, act, mode)
    layer = per_channel(layer, rng, *spread)
    compiled, _ = run(QModel("one", (cin, h, w), 4, [layer]), cfg, n=1, seed=seed)
    posts = [i for i in compiled.program if i.op == "POST"]
    assert posts and all(i["lane_shifts"] == 1 for i in posts)


@pytest.mark.parametrize("cfg", [CONFIGS["default"], CONFIGS["small"], CONFIGS["tall"], BIAS_TWO],
                         ids=lambda c: c.name)
def test_per_channel_network(cfg):
    """Per-channel and per-tensor convs side by side, several output blocks each."""
    rng = np.random.default_rng(3)
    layers = [per_channel(conv(rng, "c1", "input", 3, 11, 3, 7, 6, 1, 1, "relu", "half_even"), rng),
              conv(rng, "c2", "c1", 11, 9, 3, 7, 6, 2, 1, "none", "std_round"),
              per_channel(conv(rng, "c3", "c2", 9, 13, 1, 4, 3, 1, 0, "none", "half_down"), rng, 3, 12)]
    compiled, _ = run(QModel("net", (3, 7, 6), 4, layers), cfg)
    lane = {name: {i["lane_shifts"] for i, n in zip(compiled.program, compiled.layer_of)
                   if n == name and i.op == "POST"} for name in ("c1", "c2", "c3")}
    assert lane == {"c1": {1}, "c2": {0}, "c3": {1}}


def test_per_channel_shift_beyond_post_is_refused():
    rng = np.random.default_rng(0)
    layer = conv(rng, "c", "input", 2, 3, 3, 4, 4, 1, 1, "none")
    layer = dataclasses.replace(layer, f_wc=np.array([7, 40, 7]))
    with pytest.raises(HwqError, match=r"^layer 'c' does not fit the hardware: per-channel "
                                       r"shifts \d+\.\.\d+ exceed POST's -32\.\.31$"):
        compile_model(QModel("m", (2, 4, 4), 4, [layer]), CONFIGS["default"])


def _compile_lenet(tmp_path, capsys, sim):
    pkg = tmp_path / "lenet.hwq"
    assert main(["compile", f"{LENET}:LeNet", "--input-shape", "1x8x8", "--calib", "digits",
                 "--quant-config", str(STUDY), "-o", str(pkg), "-q"]) == 0
    assert main(["simulate", str(pkg), "--sim", sim, "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", str(pkg)]) == 0
    assert f"{sim}: 32/32 images bit-exact" in capsys.readouterr().out
    assert "lane_shifts=1" in (pkg / "program.asm").read_text()


def test_per_channel_lenet_on_the_iss(tmp_path, capsys):
    """The per-channel study config, through `hwq compile`, bit-exact on the ISS."""
    _compile_lenet(tmp_path, capsys, "iss")


@pytest.mark.slow
def test_per_channel_lenet_on_rtl(tmp_path, capsys):
    """The same package on Verilator: 32/32 images bit-exact."""
    _compile_lenet(tmp_path, capsys, "verilator")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["default", "serial"])
def test_random_programs_with_lane_shifts_on_rtl(config):
    """tests/test_rtl_accel.py's constrained random programs with lane_shifts on half of
    their POSTs (bbuf holds random data: offsets of any size, the modulo-64 wrap acts;
    LOADs into bbuf race the POSTs reading two entries): RTL == ISS, state, status and
    every counter."""
    import random
    from test_rtl_accel import _cfg, _compare, _job, _random_data, random_program
    from hwq.arch import isa
    cfg = _cfg(config)
    r, flip = random.Random(77), random.Random(78)
    jobs = []
    for k in range(16):
        prog = [isa.Instr.make("POST", **{**i.fields, "lane_shifts": flip.randrange(2)})
                if i.op == "POST" else i for i in random_program(cfg, r, wild=k % 4 == 1)]
        data = _random_data(cfg, 300 + k, small=k % 6 == 3) if k % 3 == 0 else b""
        jobs.append(_job(cfg, prog, data))
    _compare(cfg, jobs, "verilator")
