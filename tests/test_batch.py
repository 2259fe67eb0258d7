"""Packages compiled for a batch of inputs a run: every tensor stored once per image, the
layers whose windows are single pixels (Linear, 1x1 conv, add, concat) run once over the
images stacked, the rest image by image; bit-exact with the golden model on every layer
whatever the batch and however many inputs are given."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hwq
from conftest import LENET, float_inputs
from hwq.arch import isa
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.layout import MemoryMap
from hwq.compiler.lower import compile_model
from hwq.errors import HwqError
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate
from test_random_graphs import CONFIGS, graphs


def _run(qmodel, cfg, x, batch):
    compiled = compile_model(qmodel, cfg, batch=batch)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    return compiled, simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qmodel=graphs(), cfg=st.sampled_from(CONFIGS), batch=st.integers(2, 5),
       n=st.integers(1, 11), seed=st.integers(0, 2 ** 16))
def test_a_batched_program_matches_golden_on_every_layer(qmodel, cfg, batch, n, seed):
    x = np.random.default_rng(seed).integers(-128, 128, (n, *qmodel.input_shape)).astype(np.int8)
    _, result = _run(qmodel, cfg, x, batch)
    assert result.ok and len(result.status) == -(-n // batch) and result.batch == batch
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 20), h=st.integers(1, 5), w=st.integers(1, 5), batch=st.integers(1, 6),
       data=st.data())
def test_pack_fills_the_batch_with_zero_images(c, h, w, batch, data):
    cfg = CONFIGS[0]
    layout = MemoryMap(cfg, batch).activation("t", "activation", (c, h, w))
    n = data.draw(st.integers(1, batch))
    x = np.random.default_rng(n).integers(-128, 128, (n, c, h, w)).astype(np.int8)
    blob = layout.pack(x)
    assert len(blob) == layout.nbytes == batch * layout.image_bytes
    assert layout.region.words * cfg.bus_bytes == len(blob)
    back = layout.unpack(blob, (c, h, w))
    assert np.array_equal(back[:n], x) and not back[n:].any()


def _mlp(rng, widths=(256, 128, 64, 10)):
    """flatten (16, 4, 4) then Linear layers of `widths`, ReLU between them."""
    layers = [QLayer("flat", "flatten", "input", (16, 4, 4), (256, 1, 1), 4, 4)]
    src, f = "flat", 4
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        act = "relu" if i < len(widths) - 2 else "none"
        layers.append(QLayer(f"fc{i}", "conv", src, (cin, 1, 1), (cout, 1, 1), f, 3,
                             weight=rng.integers(-128, 128, (cout, cin, 1, 1)).astype(np.int8),
                             bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=8,
                             act=act, lo=0 if act == "relu" else -128, hi=127))
        src, f = f"fc{i}", 3
    return QModel("mlp", (16, 4, 4), 4, layers)


def test_a_linear_streams_the_batch_through_each_weight_tile():
    """The MLP's weights load once a run whatever the batch; 8 inputs a run take under a
    quarter of the cycles per input that one does."""
    cfg, qmodel = CONFIGS[0], _mlp(np.random.default_rng(0))
    x = np.random.default_rng(1).integers(-128, 128, (8, 16, 4, 4)).astype(np.int8)
    runs = {}
    for batch in (1, 8):
        compiled, result = _run(qmodel, cfg, x, batch)
        assert first_mismatch(result, run_golden(qmodel, x), ["fc2"], cfg.cols) is None
        weights = sum(r.words for r in compiled.memmap.regions if r.kind == "weights")
        loads = sum(i.op == "LOAD" and i.fields["buf"] == 1 for i in compiled.program)
        runs[batch] = (weights, loads, sum(result.cycles) / len(x), compiled)
    assert runs[8][0] == runs[1][0] and runs[8][1] == runs[1][1]
    assert runs[8][2] < runs[1][2] / 4
    assert runs[8][3].useful_macs == 8 * runs[1][3].useful_macs
    out1, out8 = runs[1][3].layouts["fc2"], runs[8][3].layouts["fc2"]
    assert out8.region.words == 8 * out1.region.words and out8.batch == 8


def test_a_conv_runs_image_by_image_with_its_weights_stored_once(lenet_package):
    """LeNet's convs keep their weights on chip: stored once, loaded once a run; the
    images' bands follow each other."""
    pkg = hwq.load(lenet_package)
    qmodel = pkg.qmodel()
    one, three = compile_model(qmodel, pkg.cfg), compile_model(qmodel, pkg.cfg, batch=3)
    kinds = {}
    for c in (one, three):
        kinds[c.batch] = {k: sum(r.words for r in c.memmap.regions if r.kind == k)
                          for k in ("weights", "bias", "activation", "output")}
    assert kinds[3]["weights"] == kinds[1]["weights"] and kinds[3]["bias"] == kinds[1]["bias"]
    assert kinds[3]["activation"] == 3 * kinds[1]["activation"]
    loads = [sum(i.op == "LOAD" and i.fields["buf"] == 1 for i in c.program) for c in (one, three)]
    assert loads[0] == loads[1]
    asm = isa.disassemble(three.program_bytes, three.notes)
    conv = next(l.name for l in qmodel.layers
                if l.kind == "conv" and l.window != (1, 1) and "input" not in l.sources)
    assert f"{conv}: image 2 rows" in asm and f"{conv}: image 3 " not in asm


def test_predict_runs_any_number_of_inputs_batch_at_a_time(tmp_path, cli):
    pkg = hwq.compile(LENET, (1, 8, 8), "digits", batch=4, n_ref=6, out=tmp_path / "b.hwq")
    assert pkg.batch == 4 and pkg.manifest["program"]["batch"] == 4
    x = float_inputs(7, seed=3)
    assert np.array_equal(pkg.predict(x, "iss"), pkg.predict(x))
    assert np.array_equal(pkg.predict(x[0], "iss"), pkg.predict(x[0]))
    result = pkg.simulate("iss")
    assert len(result.status) == 2 and len(result.activations["input"]) == 6
    (line,) = pkg.compare()
    per_input = np.mean(result.cycles) / 4
    assert line.startswith("iss: 6/6 images bit-exact") and f"{per_input:.0f} cycles/inference" in line


def test_a_batch_below_one_is_refused(tmp_path, cli):
    code, out, err = cli("compile", LENET, "--input-shape", "1x8x8", "--calib", "digits",
                         "--batch", "0", "-o", tmp_path / "x.hwq")
    assert code == 2 and "--batch: 0 must be at least 1" in err and not (tmp_path / "x.hwq").exists()
    with pytest.raises(HwqError, match="batch 0: a program runs at least one input"):
        compile_model(_mlp(np.random.default_rng(0)), CONFIGS[0], batch=0)


def test_a_batch_beyond_the_dram_says_so():
    with pytest.raises(HwqError, match="larger dram_words or a batch smaller than 4096"):
        compile_model(_mlp(np.random.default_rng(0)), CONFIGS[0], batch=4096)
