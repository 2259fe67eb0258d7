"""The model's input stored as the windows of the one conv that reads it, when that
conv's input has fewer channels than a block (a 1- or 3-channel image): the host unfolds
it, and the conv runs as a 1x1 conv over whole channel blocks."""
import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from hwq.arch.config import load_hw_config
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.layout import TensorLayout, Unfold
from hwq.compiler.lower import compile_model
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

CFG = load_hw_config("default")


@st.composite
def unfolds(draw):
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    top, left = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    out_h = (h + 2 * top - kh) // sh + 1
    out_w = (w + 2 * left - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        kh, kw, out_h, out_w, top, left = 1, 1, (h - 1) // sh + 1, (w - 1) // sw + 1, 0, 0
    return Unfold(c, h, w, kh, kw, sh, sw, top, left, out_h, out_w)


@settings(max_examples=60, deadline=None)
@given(u=unfolds(), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_unfold_is_torch_im2col_and_inverts_where_windows_read(u, n, seed):
    x = np.random.default_rng(seed).integers(-128, 128, (n, u.c, u.h, u.w)).astype(np.int8)
    got = u.apply(x)
    want = torch.nn.functional.unfold(torch.from_numpy(x.astype(np.float32)), (u.kh, u.kw),
                                      padding=(u.top, u.left), stride=(u.sh, u.sw))
    assert np.array_equal(got.reshape(n, u.c * u.kh * u.kw, -1), want.numpy().astype(np.int8))
    read = u.invert(u.apply(np.ones_like(x))).astype(bool)     # the values some window reads
    back = u.invert(got)
    assert np.array_equal(back[read], x[read]) and not back[~read].any()


def _first_conv(c, h, w, k, stride, pad, cout, seed=0):
    rng = np.random.default_rng(seed)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    conv = QLayer("conv", "conv", "input", (c, h, w), (cout, oh, ow), 4, 3,
                  weight=rng.integers(-128, 128, (cout, c, k, k)).astype(np.int8),
                  bias=rng.integers(-4000, 4000, cout).astype(np.int32), f_w=7, stride=stride,
                  padding=pad, act="relu", lo=0, hi=127)
    return QModel("m", (c, h, w), 4, [conv])


def test_a_three_channel_image_is_unfolded_and_its_conv_streams_fewer_tiles():
    qmodel = _first_conv(3, 12, 10, 3, 1, 1, 16)
    compiled = compile_model(qmodel, CFG)
    inp = compiled.layouts["input"]
    assert inp.unfold is not None and inp.stored_channels == 32 and (inp.h, inp.w) == (12, 10)
    # 2 output blocks x 4 input blocks of the 27 window values, 8x8 bytes a tile (over
    # the 3 channels padded to 8: 2 x 9 taps)
    (weights,) = [r for r in compiled.memmap.regions if r.kind == "weights"]
    assert weights.words * CFG.bus_bytes == 2 * 4 * 64
    assert sum(i.op == "GEMM" for i in compiled.program) % 8 == 0
    back = TensorLayout.from_dict(inp.to_dict())
    assert back.unfold == inp.unfold and back.to_dict() == inp.to_dict()
    x = np.random.default_rng(1).integers(-128, 128, (3, 3, 12, 10)).astype(np.int8)
    result = simulate(CFG, compiled.image, compiled.start_pc, compiled.layouts,
                      {"input": (3, 12, 10), "conv": (16, 12, 10)}, x)
    assert first_mismatch(result, run_golden(qmodel, x), ["conv"], CFG.cols) is None
    assert np.array_equal(result.activations["input"], x)


def test_unfolding_lifts_the_dma_padding_limit():
    """The host writes the windows' zero padding: 9 rows of it, past the DMA's 7."""
    qmodel = _first_conv(1, 6, 6, 3, 3, 9, 8)
    compiled = compile_model(qmodel, CFG)
    assert compiled.layouts["input"].unfold is not None
    x = np.random.default_rng(2).integers(-128, 128, (2, 1, 6, 6)).astype(np.int8)
    result = simulate(CFG, compiled.image, compiled.start_pc, compiled.layouts,
                      {"input": (1, 6, 6), "conv": (8, 8, 8)}, x)
    assert first_mismatch(result, run_golden(qmodel, x), ["conv"], CFG.cols) is None


def test_a_full_block_of_channels_is_not_unfolded():
    compiled = compile_model(_first_conv(8, 6, 6, 3, 1, 1, 8), CFG)
    assert compiled.layouts["input"].unfold is None


def test_windows_much_larger_than_the_image_are_not_unfolded():
    """A 1-channel image under 7x7 windows at stride 1 would take 7 times its bytes."""
    compiled = compile_model(_first_conv(1, 16, 16, 7, 1, 3, 8), CFG)
    assert compiled.layouts["input"].unfold is None
    assert compile_model(_first_conv(1, 16, 16, 3, 1, 1, 8), CFG).layouts["input"].unfold is not None
