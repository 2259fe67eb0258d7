"""Back end: every layer kind, lowered onto arrays of several shapes, runs on the ISS
bit for bit as the golden model computes it -- partial tiles, bands and padding included."""
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hwq.arch import isa
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.lower import compile_model
from hwq.compiler.lower.plan import conv_cost
from hwq.arch.config import HwConfig, load_hw_config
from hwq.errors import HwqError
from hwq.arch import timing
from hwq.sim import cycles
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

CONFIGS = {name: load_hw_config(name) for name in ("default", "small", "tall")}
# Shallow buffers force several row bands and per-block weight reloads.
CRAMPED = dataclasses.replace(CONFIGS["small"], name="cramped", ibuf_depth=512, wbuf_depth=64,
                              abuf_depth=16, obuf_depth=64)


def conv(rng, name, src, cin, cout, k, h, w, stride, pad, act, mode="half_up"):
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    f_in, f_w, f_out = 4, 7, int(rng.integers(1, 5))
    return QLayer(name, "conv", src, (cin, h, w), (cout, oh, ow), f_in, f_out,
                  weight=rng.integers(-128, 128, (cout, cin, k, k)).astype(np.int8),
                  bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=f_w,
                  stride=stride, padding=pad, act=act, round_mode=mode,
                  lo=0 if act == "relu" else -128, hi=127)


def pool(name, src, c, h, w, k, s):
    return QLayer(name, "maxpool", src, (c, h, w), (c, (h - k) // s + 1, (w - k) // s + 1),
                  3, 3, kernel=k, stride=s)


def check(qmodel, cfg, n=2, seed=0):
    x = np.random.default_rng(seed).integers(-128, 128, (n, *qmodel.input_shape)).astype(np.int8)
    compiled = compile_model(qmodel, cfg)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, x)
    assert result.ok
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None
    return compiled, result


@pytest.mark.parametrize("cfg", [*CONFIGS.values(), CRAMPED], ids=lambda c: c.name)
def test_small_network_every_layer_kind(cfg):
    rng = np.random.default_rng(1)
    layers = [conv(rng, "c1", "input", 3, 5, 3, 9, 7, 1, 1, "relu", "half_even"),
              pool("p1", "c1", 5, 9, 7, 2, 2),
              conv(rng, "c2", "p1", 5, 9, 3, 4, 3, 2, 1, "none", "std_round"),
              QLayer("flat", "flatten", "c2", (9, 2, 2), (36, 1, 1), 3, 3),
              conv(rng, "fc", "flat", 36, 7, 1, 1, 1, 1, 0, "none", "half_down")]
    check(QModel("net", (3, 9, 7), 4, layers), cfg)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 19), cout=st.integers(1, 19), k=st.sampled_from([1, 3, 5]),
       h=st.integers(5, 10), w=st.integers(5, 10), stride=st.integers(1, 2),
       pad=st.integers(0, 2), act=st.sampled_from(["none", "relu"]),
       mode=st.sampled_from(["half_up", "half_even", "half_down", "std_round"]),
       cfg=st.sampled_from([*CONFIGS.values(), CRAMPED]), seed=st.integers(0, 2**16))
def test_random_conv_matches_golden(cin, cout, k, h, w, stride, pad, act, mode, cfg, seed):
    layer = conv(np.random.default_rng(seed), "c", "input", cin, cout, k, h, w, stride, pad, act, mode)
    check(QModel("one", (cin, h, w), 4, [layer]), cfg, n=1, seed=seed)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 12), h=st.integers(2, 9), w=st.integers(2, 9), k=st.integers(1, 3),
       s=st.integers(1, 3), cfg=st.sampled_from([*CONFIGS.values(), CRAMPED]))
def test_random_maxpool_matches_golden(c, h, w, k, s, cfg):
    if k > min(h, w):
        k = min(h, w)
    check(QModel("pool", (c, h, w), 3, [pool("p", "input", c, h, w, k, s)]), cfg, n=1)


def test_linear_on_a_vector_input_with_wide_k():
    rng = np.random.default_rng(3)
    layers = [conv(rng, "fc1", "input", 200, 30, 1, 1, 1, 1, 0, "relu"),
              conv(rng, "fc2", "fc1", 30, 10, 1, 1, 1, 1, 0, "none")]
    compiled, _ = check(QModel("mlp", (200, 1, 1), 4, layers), CONFIGS["default"])
    assert compiled.useful_macs == 200 * 30 + 30 * 10


def test_layer_too_big_for_the_buffers_is_a_clear_error():
    rng = np.random.default_rng(0)
    layer = conv(rng, "huge", "input", 4, 4, 3, 3, 600, 1, 1, "none")
    with pytest.raises(HwqError, match="layer 'huge' does not fit the hardware: one input row"):
        compile_model(QModel("m", (4, 3, 600), 4, [layer]), CONFIGS["small"])


def test_program_ends_and_data_precedes_it():
    rng = np.random.default_rng(0)
    compiled = compile_model(QModel("m", (2, 4, 4), 4, [conv(rng, "c", "input", 2, 3, 3, 4, 4, 1, 1, "relu")]),
                             CONFIGS["default"])
    assert compiled.program[-1].op == "END"
    code = compiled.memmap.by_name("program")
    assert code.word == compiled.start_pc
    assert all(r.word + r.words <= code.word for r in compiled.memmap.regions if r is not code)


def test_config_rejects_what_the_isa_cannot_address():
    with pytest.raises(HwqError, match="ibuf_depth"):
        HwConfig(ibuf_depth=1 << 15)
    with pytest.raises(HwqError, match="bus_bytes"):
        HwConfig(rows=4, cols=4, bus_bytes=8)


def test_linear_wider_than_ibuf_is_split_into_input_groups():
    """784 -> 300 on an array whose ibuf holds a quarter of the input vector: the 38
    output blocks accumulate side by side in abuf, so each input block loads once."""
    rng = np.random.default_rng(4)
    cfg = dataclasses.replace(CONFIGS["default"], name="narrow-ibuf", ibuf_depth=32, wbuf_depth=64,
                              bbuf_depth=16)
    layers = [conv(rng, "fc", "input", 784, 300, 1, 1, 1, 1, 0, "relu")]
    compiled, _ = check(QModel("wide", (784, 1, 1), 4, layers), cfg, n=1)
    loads = [i for i in compiled.program if i.op == "LOAD" and i["buf"] == 0]
    assert len(loads) == 98  # every input block once, for all output blocks
    assert len({i["acc"] for i in compiled.program if i.op == "POST"}) == 38


# ---- overlap: the schedule double-buffers so that loads and stores run beside the array ----

def _between_gemms(compiled, buf):
    """(GEMM before, LOAD, GEMM after) for every LOAD into `buf` emitted between two GEMMs."""
    prog = compiled.program
    return [(prog[i - 1], prog[i], prog[i + 1]) for i in range(1, len(prog) - 1)
            if prog[i].op == "LOAD" and prog[i]["buf"] == buf
            and prog[i - 1].op == "GEMM" and prog[i + 1].op == "GEMM"]


def test_consecutive_output_blocks_alternate_obuf_halves():
    rng = np.random.default_rng(5)
    cfg = CONFIGS["default"]
    compiled, _ = check(QModel("m", (8, 6, 6), 4, [conv(rng, "c", "input", 8, 24, 3, 6, 6, 1, 1, "relu")]),
                        cfg, n=1)
    posts = [i for i in compiled.program if i.op == "POST"]
    stores = [i for i in compiled.program if i.op == "STORE"]
    assert len(posts) == 3
    assert [p["out"] for p in posts] == [0, cfg.obuf_depth // 2, 0]
    assert [s["sram"] for s in stores] == [p["out"] for p in posts]
    # POST of the next block runs beside the STORE of this one
    assert isa.hazards(posts[1], stores[0], cfg) == []


def test_streamed_weights_load_into_the_other_half_between_gemms():
    """Weights that do not stay in wbuf: each chunk after the first loads while the one
    before streams, into the other half, so neither GEMM around the LOAD waits for it."""
    rng = np.random.default_rng(6)
    cfg = CONFIGS["default"]
    layer = conv(rng, "c", "input", 64, 16, 3, 6, 6, 1, 1, "none")   # 2 x 72 tiles > wbuf
    compiled, _ = check(QModel("m", (64, 6, 6), 4, [layer]), cfg, n=1)
    weight_loads = [i for i in compiled.program if i.op == "LOAD" and i["buf"] == 1]
    assert {i["sram"] for i in weight_loads} == {0, cfg.wbuf_depth // 2}
    overlapped = _between_gemms(compiled, 1)
    assert len(overlapped) == len(weight_loads) - 1          # all but the first chunk's
    for before, load, after in overlapped:
        assert isa.hazards(load, before, cfg) == [] and isa.hazards(after, load, cfg) == []


def test_next_band_input_loads_while_this_band_streams():
    rng = np.random.default_rng(7)
    cfg = dataclasses.replace(CONFIGS["small"], name="short-abuf", abuf_depth=16, obuf_depth=32)
    layer = conv(rng, "c", "input", 8, 8, 3, 8, 8, 1, 1, "relu")     # 2-row bands
    compiled, _ = check(QModel("m", (8, 8, 8), 4, [layer]), cfg, n=1)
    input_loads = [i for i in compiled.program if i.op == "LOAD" and i["buf"] == 0]
    assert {i["sram"] // (cfg.ibuf_depth // 2) for i in input_loads} == {0, 1}
    overlapped = _between_gemms(compiled, 0)
    assert len(overlapped) == len(input_loads) - 2            # all but the first band's 2 blocks
    for before, load, after in overlapped:
        assert isa.hazards(load, before, cfg) == [] and isa.hazards(after, load, cfg) == []


def test_per_block_biases_load_ahead_into_alternate_entries():
    rng = np.random.default_rng(8)
    cfg = dataclasses.replace(CONFIGS["small"], name="tiny-bbuf", bbuf_depth=2)
    compiled, _ = check(QModel("m", (4, 5, 5), 4, [conv(rng, "c", "input", 4, 16, 3, 5, 5, 1, 1, "none")]),
                        cfg, n=1)
    posts = [i for i in compiled.program if i.op == "POST"]
    assert [p["bias"] for p in posts] == [0, 1, 0, 1]
    bias_loads = [k for k, i in enumerate(compiled.program) if i.op == "LOAD" and i["buf"] == 2]
    gemms = [k for k, i in enumerate(compiled.program) if i.op == "GEMM"]
    assert all(gemms[0] < k for k in bias_loads)              # each waits in no GEMM's way


@pytest.mark.parametrize("name, cin, cout, h, w, k, stride", [
    ("small", 8, 4, 8, 60, 3, 1),       # 2-block input that half of ibuf holds 1 block of
    ("default", 8, 24, 6, 6, 3, 1),     # small: POST and the first loads weigh in
    ("default", 64, 16, 8, 8, 3, 1),    # streamed weights
    ("default", 96, 64, 8, 8, 3, 2),    # input groups with runs of output blocks
])
def test_the_plan_is_the_fastest_candidate_on_the_cycle_model(monkeypatch, name, cin, cout, h, w,
                                                              k, stride):
    """The planner's estimate ranks its candidate cuts as the cycle model does: the one it
    picks runs within 2% of the fastest of them."""
    rng = np.random.default_rng(9)
    cfg = CONFIGS[name]
    model = QModel("m", (cin, h, w), 4, [conv(rng, "c", "input", cin, cout, k, h, w, stride, 1, "none")])
    seen = []
    monkeypatch.setattr("hwq.compiler.lower.plan.conv_cost",
                        lambda plan, *a: seen.append(plan) or conv_cost(plan, *a))
    chosen, _ = check(model, cfg, n=1)
    monkeypatch.setattr("hwq.compiler.lower.plan.conv_cost", conv_cost)
    assert len(seen) > 1
    times = []
    for plan in seen:
        monkeypatch.setattr("hwq.compiler.lower.conv.conv_plan", lambda *a, plan=plan: plan)
        times.append(cycles.schedule(compile_model(model, cfg).program, cfg)[1])
    assert cycles.schedule(chosen.program, cfg)[1] <= 1.02 * min(times)


def test_streamed_weights_keep_the_array_busy():
    """On the cycle model, once a conv whose weights stream through wbuf has started, its
    GEMMs follow each other on the array with no wait for the loads between them."""
    rng = np.random.default_rng(10)
    cfg = CONFIGS["default"]
    layer = conv(rng, "c", "input", 64, 16, 3, 8, 8, 1, 1, "none")
    compiled, _ = check(QModel("m", (64, 8, 8), 4, [layer]), cfg, n=1)
    timeline = cycles.Timeline(cfg)
    starts = [(timeline.issue(i), i) for i in compiled.program if i.op != "END"]
    gemms = [(t, i) for t, i in starts if i.op == "GEMM"]
    busy = sum(timing.gemm_occupancy(i, cfg) for _, i in gemms[:-1])
    assert gemms[-1][0] - gemms[0][0] < 1.05 * busy


def test_activation_reuse_by_liveness():
    """With reuse, a dead tensor's DRAM goes to later activations: the model takes fewer
    words, regions of tensors alive at once never overlap, and the output is still
    golden's (only the input and output stay readable)."""
    rng = np.random.default_rng(3)
    layers = [conv(rng, "c1", "input", 3, 8, 3, 12, 12, 1, 1, "relu", "half_up"),
              conv(rng, "c2", "c1", 8, 8, 3, 12, 12, 1, 1, "relu", "half_up"),
              conv(rng, "c3", "c2", 8, 8, 3, 12, 12, 1, 1, "relu", "half_up"),
              conv(rng, "c4", "c3", 8, 8, 3, 12, 12, 1, 1, "relu", "half_up"),
              QLayer("flat", "flatten", "c4", (8, 12, 12), (8 * 144, 1, 1), 3, 3),
              conv(rng, "fc", "flat", 8 * 144, 5, 1, 1, 1, 1, 0, "none", "half_up")]
    qmodel = QModel("deep", (3, 12, 12), 4, layers)
    cfg = CONFIGS["default"]
    plain = compile_model(qmodel, cfg)
    reused = compile_model(qmodel, cfg, reuse_activations=True)
    assert reused.memmap.next_word < plain.memmap.next_word
    assert set(reused.layouts) == {"input", "fc"}
    act = {r.name: r for r in reused.memmap.regions if r.kind in ("activation", "output")}
    assert act["c3"].word < act["c1"].word + act["c1"].words   # c3 took c1's words
    for a, b in [("c1", "c2"), ("c2", "c3"), ("c3", "c4"), ("c4", "fc")]:  # alive together
        ra, rb = act[a], act[b]
        assert ra.word + ra.words <= rb.word or rb.word + rb.words <= ra.word
    x = np.random.default_rng(0).integers(-128, 128, (2, 3, 12, 12)).astype(np.int8)
    shapes = {"input": qmodel.input_shape, "fc": (5, 1, 1)}
    result = simulate(cfg, reused.image, reused.start_pc, reused.layouts, shapes, x)
    assert result.ok and np.array_equal(result.activations["fc"], run_golden(qmodel, x)["fc"])
