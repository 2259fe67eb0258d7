"""Front-end patterns the model zoo needs, each end to end: traced, quantized, compiled,
run on the ISS bit for bit as the golden model computes it, the float model equal to
PyTorch's own forward and the int8 one within quantization tolerance of it; and what the
hardware cannot run refused in one line naming the node."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings, strategies as st

from hwq.arch.config import load_hw_config
from hwq.compiler.frontend import trace
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.float_model import run_float
from hwq.compiler.quant.pipeline import quantize
from hwq.errors import HwqError
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

DEFAULT, SMALL = load_hw_config("default"), load_hw_config("small")
# int8 outputs of a few random layers: their RMS error against PyTorch's float forward at
# most this fraction of the output's range (an int8 step is 1/127 of it)
TOLERANCE = 0.05


class Net(nn.Module):
    """A model from a list of callables, applied in order."""

    def __init__(self, *steps):
        super().__init__()
        self.steps = nn.ModuleList(s for s in steps if isinstance(s, nn.Module))
        self.fns = steps

    def forward(self, x):
        for f in self.fns:
            x = f(x)
        return x


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with non-trivial BatchNorm statistics and affine terms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
    return model.eval()


def check(model: nn.Module, shape, cfg=DEFAULT, seed: int = 0, images: int = 2):
    """Trace, quantize and compile `model`; the float graph equals PyTorch's forward, the
    golden model is within quantization tolerance of it, and the ISS equals the golden
    model on every layer of `images` random int8 inputs. The QModel."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, *shape)).astype(np.float32)
    graph = trace(model, shape, "m")
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy().reshape(len(x), -1)
    floats = run_float(graph, x)[graph.layers[-1].name].reshape(len(x), -1)
    assert np.abs(floats - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    qmodel = quantize(graph, x, load_quant_config(), progress=False)
    got = qmodel.dequantize_output(run_golden(qmodel, qmodel.quantize_input(x), every_layer=False)
                                   [qmodel.layers[-1].name]).reshape(len(x), -1)
    assert np.sqrt(np.mean((got - want) ** 2)) <= TOLERANCE * np.abs(want).max()
    compiled = compile_model(qmodel, cfg)
    xq = rng.integers(-128, 128, (images, *shape)).astype(np.int8)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(cfg, compiled.image, compiled.start_pc, compiled.layouts, shapes, xq)
    assert result.ok, result.status
    golden = run_golden(qmodel, xq)
    assert first_mismatch(result, golden, list(golden), cfg.cols) is None
    return qmodel


def refused(model: nn.Module, shape, *fragments) -> str:
    with pytest.raises(HwqError) as info:
        trace(model, shape, "m")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


settle = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settle
@given(kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), cin=st.integers(1, 5), cout=st.integers(1, 10),
       depthwise=st.booleans(), cfg=st.sampled_from([DEFAULT, SMALL]), seed=st.integers(0, 1000))
def test_non_square_conv_stride_padding(kh, kw, sh, sw, ph, pw, cin, cout, depthwise, cfg, seed):
    """Kernels, strides and paddings of their own per axis, dense or depthwise, BatchNorm
    after a conv without bias, then a non-square average pool."""
    torch.manual_seed(seed)
    groups, cout = (cin, cin) if depthwise else (1, cout)
    h, w = kh + 4, kw + 3
    conv = nn.Conv2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), groups=groups, bias=False)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    pool = nn.AvgPool2d((min(2, oh), min(3, ow)), (1, min(2, ow)))
    check(randomized(Net(conv, nn.BatchNorm2d(cout), pool)), (cin, h, w), cfg, seed)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_per_axis():
    """padding='same' pads each odd axis by half its kernel; an even axis is refused."""
    graph = trace(Net(nn.Conv2d(2, 3, (5, 3), padding="same")), (2, 7, 6), "m")
    assert graph.layers[0].padding == (2, 1) and graph.layers[0].out_shape == (3, 7, 6)
    refused(Net(nn.Conv2d(2, 3, (3, 2), padding="same")), (2, 7, 6),
            "node 'steps_0'", "padding='same' with kernel_size=(3, 2)")


def test_batchnorm1d_folds_into_linear():
    """Linear -> BatchNorm1d -> ReLU is one layer; a BatchNorm1d after anything but a
    Linear (or a Linear whose output something else reads too) is refused."""
    torch.manual_seed(0)
    model = randomized(Net(lambda x: torch.flatten(x, 1), nn.Linear(12, 10), nn.BatchNorm1d(10),
                           nn.ReLU(), nn.Linear(10, 7, bias=False), nn.BatchNorm1d(7)))
    qmodel = check(model, (3, 2, 2))
    assert [l.kind for l in qmodel.layers] == ["flatten", "conv", "conv"]
    assert qmodel.layers[1].act == "relu"
    refused(randomized(Net(nn.Conv2d(2, 3, 3), lambda x: torch.flatten(x, 1), nn.BatchNorm1d(12))),
            (2, 4, 4), "BatchNorm1d at node 'steps_1'", "must directly follow a Conv2d or Linear")


class _Fire(nn.Module):
    """SqueezeNet's fire module: a concatenation of two ReLU branches."""

    def __init__(self, cin: int):
        super().__init__()
        self.squeeze, self.e1, self.e3 = nn.Conv2d(cin, 4, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)


@settle
@given(k=st.integers(2, 3), kw=st.integers(1, 3), s=st.integers(1, 3), pad=st.booleans(),
       ceil=st.booleans(), size=st.integers(5, 9), relu6=st.booleans(), seed=st.integers(0, 1000))
def test_max_pool_padding_and_ceil_mode_on_non_negative_inputs(k, kw, s, pad, ceil, size, relu6, seed):
    """Padding and ceil_mode's partial windows are zeros the LOAD writes: after a ReLU,
    a ReLU6, a max pool or a concatenation of such tensors, they give torch's max."""
    torch.manual_seed(seed)
    ph, pw = (k // 2, kw // 2) if pad else (0, 0)
    pool = nn.MaxPool2d((k, kw), s, (ph, pw), ceil_mode=ceil)
    act = nn.ReLU6() if relu6 else nn.ReLU()
    check(randomized(Net(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), act, pool, _Fire(3),
                         nn.MaxPool2d(3, 2, 1, ceil_mode=True))), (2, size, size + 1), seed=seed)


def test_max_pool_padding_needs_a_non_negative_input():
    refused(Net(nn.Conv2d(2, 3, 3), nn.MaxPool2d(3, 2, 1)), (2, 8, 8), "node 'steps_1'",
            "MaxPool2d padding=(1, 1)", "'steps_0' is not one (no ReLU or ReLU6 before it)")
    refused(Net(nn.Conv2d(2, 3, 3), nn.LeakyReLU(0.1), nn.MaxPool2d(2, 2, ceil_mode=True)), (2, 7, 7),
            "node 'steps_2'", "ceil_mode's partial windows")
    refused(Net(nn.MaxPool2d(2, 2, 1)), (2, 6, 6), "'input' is not one")
    # without partial windows ceil_mode pads nothing: any input
    trace(Net(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2, 2, ceil_mode=True)), (2, 6, 6), "m")


def test_max_pool_stride_must_be_square():
    model = Net(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2, (1, 2)))
    x = np.random.default_rng(0).normal(size=(4, 2, 6, 6)).astype(np.float32)
    qmodel = quantize(trace(model, (2, 6, 6), "m"), x, load_quant_config(), progress=False)
    with pytest.raises(HwqError, match=r"layer 'steps_2' .*stride \(1, 2\) is not square"):
        compile_model(qmodel, DEFAULT)


def test_average_pools():
    """ceil_mode without partial windows, adaptive pools whose output divides the input,
    global pooling of non-square maps (AdaptiveAvgPool2d(1), mean over H and W)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 9, 3, padding=1)
    check(randomized(Net(conv, nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d((1, 3)),
                         lambda x: x.mean([2, 3], keepdim=True))), (2, 6, 12))
    check(randomized(Net(nn.Conv2d(2, 9, 3), nn.AdaptiveAvgPool2d(2), nn.AdaptiveAvgPool2d(1))),
          (2, 6, 8))
    qmodel = check(randomized(Net(nn.Conv2d(2, 9, 3), nn.ReLU(), lambda x: torch.mean(x, dim=(-1, -2)),
                                  nn.Linear(9, 4))), (2, 7, 5))
    assert qmodel.layers[1].kernel == (5, 3)
    refused(Net(nn.Conv2d(2, 3, 3), nn.AvgPool2d(2, ceil_mode=True)), (2, 7, 7), "node 'steps_1'",
            "ceil_mode=True makes partial windows")
    refused(Net(nn.Conv2d(2, 3, 3), nn.AdaptiveAvgPool2d(4)), (2, 8, 8),
            "output_size=4 on a 6x6 map pools windows of unequal sizes")
    refused(Net(nn.Conv2d(2, 3, 3), lambda x: x.mean(1, keepdim=True)), (2, 8, 8), "mean over dims (1,)")


def shuffle_view(x, groups):
    """torchvision's ShuffleNetV2 channel_shuffle."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


def shuffle_permute(x, groups):
    """The same shuffle with reshape and permute, sizes from x.shape."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, -1, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: a channel split, a branch on one half, the halves concatenated
    and shuffled; `then` reads the result."""

    def __init__(self, c: int, shuffle, then, split: str):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(c // 2, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(),
                                    nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2))
        self.shuffle, self.then, self.split, self.c = shuffle, then, split, c

    def forward(self, x):
        if self.split == "chunk":
            x1, x2 = x.chunk(2, dim=1)
        elif self.split == "split":
            x1, x2 = torch.split(x, [self.c // 2, self.c // 2], dim=1)
        else:
            x1, x2 = x[:, :self.c // 2], x[:, self.c // 2:]
        return self.then(self.shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2))


@pytest.mark.parametrize("shuffle, split, then", [
    (shuffle_view, "chunk", "conv"), (shuffle_permute, "split", "maxpool"),
    (shuffle_view, "slice", "avgpool"), (shuffle_permute, "chunk", "add"),
    (shuffle_view, "split", "flatten")])
def test_channel_split_and_shuffle_move_no_data(shuffle, split, then):
    """Splits and shuffles are views: no layer of their own reaches the array, the next
    layer reads the channels where they are."""
    torch.manual_seed(0)
    c = 12
    tail = {"conv": nn.Sequential(nn.Conv2d(c, 5, 3)),
            "maxpool": nn.Sequential(nn.MaxPool2d(2)),
            "avgpool": nn.Sequential(nn.AvgPool2d(2)),
            "add": None,
            "flatten": nn.Sequential(nn.Flatten(), nn.Linear(c * 36, 4))}[then]
    stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
    if then == "add":
        model = Net(stem, ShuffleUnit(c, shuffle, nn.Identity(), split), lambda x: x + shuffle(x, 3))
    else:
        model = Net(stem, ShuffleUnit(c, shuffle, tail, split))
    qmodel = check(randomized(model), (3, 6, 6), SMALL)
    kinds = [l.kind for l in qmodel.layers]
    assert kinds.count("view") == {"add": 4}.get(then, 3)
    compiled = compile_model(qmodel, SMALL)
    views = [l.name for l in qmodel.layers if l.kind == "view"]
    assert not any(name in views for name in compiled.layer_of)      # no instruction of theirs


def test_flat_input_is_stored_unpadded():
    """An input only flattens read is one pixel of C*H*W channels: a Linear on a 1x6x6
    image stores its weights once, not once per padding lane."""
    torch.manual_seed(0)
    qmodel = check(Net(nn.Flatten(), nn.Linear(36, 10), nn.ReLU(), nn.Linear(10, 3)), (1, 6, 6))
    compiled = compile_model(qmodel, DEFAULT)
    assert (compiled.layouts["input"].h, compiled.layouts["input"].stored_channels) == (1, 40)
    weights = sum(r.words for r in compiled.memmap.regions if r.kind == "weights") * DEFAULT.bus_bytes
    assert weights == 40 * 16 + 16 * 8


def test_views_that_move_pixels_are_refused():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 1)
    refused(Net(conv, lambda x: x.transpose(2, 3)), (2, 4, 6), "node 'transpose'",
            "make (N, 4, 6, 4) of (N, 4, 4, 6) moving pixels")
    refused(Net(conv, lambda x: x.reshape(x.shape[0], 8, 2, 6)), (2, 4, 6), "node 'reshape'",
            "moving pixels")
    refused(Net(conv, lambda x: x[:, :, 1:]), (2, 4, 6), "node 'getitem'", "moving pixels")
    refused(Net(conv, lambda x: x.reshape(-1)), (2, 4, 6), "node 'reshape'",
            "mixes the batch dimension")
    # a chunk's unused piece computes nothing: dropped
    graph = trace(Net(conv, lambda x: x.chunk(2, 1)[1]), (2, 4, 6), "m")
    assert [(l.kind, l.channels) for l in graph.layers] == [("conv", []), ("view", [2, 3])]


def test_concatenated_views_of_one_tensor_are_a_view():
    """cat of pieces of one tensor, none twice, reorders its channels: a view. Pieces of
    two tensors, or one piece twice, are concatenated as data."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 8, 3, padding=1)
    qmodel = check(Net(conv, lambda x: torch.cat([x[:, 5:], x.chunk(4, 1)[0], x[:, 2:5]], 1),
                       nn.Conv2d(8, 3, 1)), (2, 5, 5))
    assert [(l.kind, l.channels) for l in qmodel.layers[:2]] == [("conv", []), ("view", [5, 6, 7, 0, 1, 2, 3, 4])]
    graph = trace(Net(conv, lambda x: torch.cat([x[:, :4], x[:, 2:6]], 1)), (2, 5, 5), "m")
    assert [l.kind for l in graph.layers] == ["conv", "view", "view", "concat"]


def test_qat_and_fast_finetune_follow_the_new_patterns():
    """A non-square strided conv, a padded ceil_mode max pool, a shuffle and a split, a
    non-square adaptive pool, a Linear with BatchNorm1d: the QAT net in eval mode is the
    golden model of its export bit for bit, and fast finetune's QModel runs on the ISS as
    the golden model computes it."""
    from hwq.compiler.quant.adaquant import fast_finetune
    from hwq.compiler.quant.qat import train_qat
    torch.manual_seed(0)
    model = randomized(Net(nn.Conv2d(3, 8, (3, 1), (1, 2), (1, 0)), nn.BatchNorm2d(8), nn.ReLU(),
                           nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda x: shuffle_view(x, 2),
                           lambda x: x.chunk(2, 1)[1], nn.Conv2d(4, 6, 1), nn.AdaptiveAvgPool2d((1, 2)),
                           nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5)))
    x = np.random.default_rng(0).normal(size=(64, 3, 9, 14)).astype(np.float32)
    graph, config = trace(model, (3, 9, 14), "m"), load_quant_config()
    qmodel = quantize(graph, x, config, progress=False)
    net = train_qat(graph, qmodel, config, x, None, epochs=1, batch=16)
    exported = net.export()
    with torch.no_grad():
        fake = net(torch.from_numpy(x)).numpy().reshape(len(x), -1)
    golden = run_golden(exported, exported.quantize_input(x))[exported.layers[-1].name]
    assert np.array_equal(fake, exported.dequantize_output(golden).reshape(len(x), -1))
    tuned = fast_finetune(graph, qmodel, x, config, steps=5, progress=False)
    compiled = compile_model(tuned, SMALL)
    xq = tuned.quantize_input(x[:2])
    shapes = {"input": tuned.input_shape, **{l.name: l.out_shape for l in tuned.layers}}
    result = simulate(SMALL, compiled.image, compiled.start_pc, compiled.layouts, shapes, xq)
    assert result.ok and first_mismatch(result, run_golden(tuned, xq), [l.name for l in tuned.layers],
                                        SMALL.cols) is None
