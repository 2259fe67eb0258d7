"""Front end: tracing LeNet, BatchNorm folding, and refusing what the hardware lacks."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwq.compiler.frontend import trace
from hwq.compiler.quant.float_model import run_float
from hwq.errors import HwqError

EXAMPLE = Path(__file__).resolve().parent.parent / "hwq" / "examples" / "lenet_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("lenet_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lenet = load_example()


def randomized_lenet(seed=0):
    """An untrained LeNet whose BatchNorm has non-trivial statistics and affine terms."""
    torch.manual_seed(seed)
    model = lenet.LeNet()
    with torch.no_grad():
        bn = model.bn1
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_lenet_layers():
    graph = trace(randomized_lenet(), (1, 8, 8), "lenet")
    got = [(l.name, l.kind, l.input, l.in_shape, l.out_shape, l.act) for l in graph.layers]
    assert got == [
        ("conv1", "conv", "input", (1, 8, 8), (8, 8, 8), "relu"),
        ("pool1", "maxpool", "conv1", (8, 8, 8), (8, 4, 4), "none"),
        ("conv2", "conv", "pool1", (8, 4, 4), (16, 4, 4), "relu"),
        ("pool2", "maxpool", "conv2", (16, 4, 4), (16, 2, 2), "none"),
        ("flatten", "flatten", "pool2", (16, 2, 2), (64, 1, 1), "none"),
        ("fc1", "conv", "flatten", (64, 1, 1), (32, 1, 1), "relu"),
        ("fc2", "conv", "fc1", (32, 1, 1), (10, 1, 1), "none"),
    ]
    conv1, pool1, fc1 = graph.layers[0], graph.layers[1], graph.layers[5]
    assert (conv1.weight.shape, conv1.bias.shape, conv1.padding, conv1.stride) == ((8, 1, 3, 3), (8,), (1, 1), (1, 1))
    assert (pool1.kernel, pool1.stride) == ((2, 2), (2, 2))
    assert fc1.weight.shape == (32, 64, 1, 1) and fc1.weight.dtype == np.float32
    assert conv1.source.startswith("forward line ")


def test_bn_folding_preserves_float_output():
    model = randomized_lenet()
    graph = trace(model, (1, 8, 8), "lenet")
    x = np.random.default_rng(0).uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    outs = run_float(graph, x)
    assert np.abs(outs["fc2"].reshape(64, 10) - want).max() < 1e-5
    with torch.no_grad():  # and the folded conv alone matches conv -> bn -> relu
        want1 = F.relu(model.bn1(model.conv1(torch.from_numpy(x)))).numpy()
    assert np.abs(outs["conv1"] - want1).max() < 1e-5


class Sequential(nn.Module):
    """A model from a list of callables, applied in order."""

    def __init__(self, *steps):
        super().__init__()
        self.steps = nn.ModuleList(s for s in steps if isinstance(s, nn.Module))
        self.fns = steps

    def forward(self, x):
        for f in self.fns:
            x = f(x)
        return x


def test_flatten_spellings_and_noops():
    class ViewNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=(1, 1))
            self.act = nn.ReLU6()
            self.drop = nn.Dropout(0.5)
            self.ident = nn.Identity()
            self.fc = nn.Linear(4 * 3 * 3, 5, bias=False)

        def forward(self, x):
            x = self.ident(self.drop(self.act(self.conv(x))))
            x = x.view(x.size(0), -1)
            return torch.relu(self.fc(x))

    graph = trace(ViewNet(), (2, 6, 6), "viewnet")
    assert [(l.kind, l.act) for l in graph.layers] == [("conv", "relu6"), ("flatten", "none"),
                                                      ("conv", "relu")]
    assert graph.layers[0].out_shape == (4, 3, 3) and graph.layers[2].bias is None

    for flat in (nn.Flatten(), lambda x: x.reshape(x.shape[0], -1), lambda x: x.flatten(1)):
        graph = trace(Sequential(nn.Conv2d(1, 2, 3), flat, nn.Linear(8, 3)), (1, 4, 4), "m")
        assert [l.kind for l in graph.layers] == ["conv", "flatten", "conv"]


def expect_error(model, *fragments, shape=(1, 8, 8)):
    with pytest.raises(HwqError) as info:
        trace(model, shape, "m")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unsupported_op_gelu():
    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return F.gelu(self.conv(x))

    message = expect_error(Gelu(), "unsupported op gelu at node 'gelu' (forward line ",
                           "; supported: Conv2d, Linear, BatchNorm2d, BatchNorm1d, ReLU, ReLU6, LeakyReLU, "
                           "MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, mean, add, cat, flatten, channel "
                           "views (view, reshape, transpose, permute, contiguous, chunk, split, "
                           "slicing), Dropout, Identity")
    line = int(message.split("forward line ")[1].split(")")[0])
    assert "F.gelu" in Path(__file__).read_text().splitlines()[line - 1]


def test_unsupported_modules():
    expect_error(Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()), "unsupported op Sigmoid at node ")
    expect_error(Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(4)),
                 "AdaptiveAvgPool2d output_size=4 on a 6x6 map pools windows of unequal sizes")


class Block(nn.Module):
    """Residual, depthwise, concat and every pooling kind in one DAG."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        z = self.pw(F.relu6(self.dw(y)))
        y = F.relu(y + z)
        y = torch.cat([self.pool(self.a(y)), F.leaky_relu(self.b(y), 0.1)], 1)
        return self.fc(torch.flatten(self.gap(y), 1))


def test_dag_layers():
    torch.manual_seed(0)
    graph = trace(Block(), (3, 8, 8), "net")
    got = [(l.name, l.kind, l.sources, l.out_shape, l.act, l.groups) for l in graph.layers]
    assert got == [
        ("conv1", "conv", ["input"], (8, 8, 8), "relu", 1),
        ("dw", "conv", ["conv1"], (8, 8, 8), "relu6", 8),
        ("pw", "conv", ["dw"], (8, 8, 8), "none", 1),
        ("add", "add", ["conv1", "pw"], (8, 8, 8), "relu", 1),
        ("a", "conv", ["add"], (4, 8, 8), "none", 1),
        ("pool", "avgpool", ["a"], (4, 4, 4), "none", 1),
        ("b", "conv", ["add"], (4, 4, 4), "leaky_relu", 1),
        ("cat", "concat", ["pool", "b"], (8, 4, 4), "none", 1),
        ("gap", "avgpool", ["cat"], (8, 1, 1), "none", 1),
        ("fc", "conv", ["gap"], (5, 1, 1), "none", 1),       # flattening 1x1 pixels: no layer
    ]
    assert graph.layers[6].alpha == 0.1 and graph.layers[8].kernel == (4, 4)
    assert graph.layers[0].bn["weight"].shape == (8, 3, 3, 3)
    x = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = graph.module(torch.from_numpy(x)).numpy()
    assert np.abs(run_float(graph, x)["fc"].reshape(16, 5) - want).max() < 1e-5


def test_dag_refusals():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 1, 3, padding=1)
            self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
            self.conv3 = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            y = self.conv1(x)
            self.conv2(y)
            return self.conv3(y)

    expect_error(Dead(), "node 'conv2'", "its output is never used; remove it")

    class SharedPreActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return F.relu(y) + y

    expect_error(SharedPreActivation(), "ReLU at node 'relu'", "the output of 'conv' it would be "
                 "folded into is also used by 'add'")
    expect_error(Sequential(nn.Conv2d(1, 2, 3), lambda x: x + 1.0), "add must sum two tensors")
    expect_error(Sequential(nn.Conv2d(1, 2, 3), lambda x: torch.cat([x, x], dim=2)),
                 "cat along dim=2 is not supported")

    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.a(x) + self.b(x)

    expect_error(Broadcast(), "add of shapes (2, 6, 6) and (1, 6, 6) broadcasts")


@pytest.mark.parametrize("layer, fragments", [
    (nn.Conv2d(2, 2, 3, dilation=2), ["node 'steps_1'", "dilation=(2, 2)"]),
    (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), ["padding_mode='reflect'"]),
    (nn.MaxPool2d(2, padding=1), ["node 'steps_1'", "MaxPool2d padding=(1, 1)", "non-negative"]),
    (nn.MaxPool2d(3, 2, ceil_mode=True), ["ceil_mode's partial windows"]),
    (nn.AvgPool2d(3, 2, ceil_mode=True), ["ceil_mode=True makes partial windows"]),
])
def test_unsupported_parameters(layer, fragments):
    expect_error(Sequential(nn.Conv2d(1, 2, 1), layer), *fragments)


def test_misplaced_activation_and_batchnorm():
    expect_error(Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU()),
                 "ReLU at node 'steps_2'", "must directly follow a Conv2d, Linear or add")
    expect_error(Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2)),
                 "BatchNorm2d at node 'steps_2'", "must directly follow a Conv2d or Linear")
    expect_error(Sequential(nn.Conv2d(1, 2, 3), nn.Linear(6, 3)),
                 "node 'steps_1'", "Linear needs a flattened")


def test_trace_failures():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    line = Branchy.forward.__code__.co_firstlineno + 1
    expect_error(Branchy(), "model m: torch.fx cannot trace its forward: symbolically traced "
                 f"variables cannot be used as inputs to control flow at {__file__}:{line} "
                 "(hwq needs a forward without data-dependent control flow)")
    expect_error(Sequential(nn.Conv2d(3, 2, 3)),
                 "model m: node 'steps_0' (forward line ", "fails on an input of shape (1, 8, 8)")
    expect_error(Sequential(nn.Conv2d(1, 2, 3), lambda x: x.reshape(1, -1)),
                 "reshape mixes the batch dimension with the others")


def test_forward_that_raises_is_not_blamed_on_control_flow():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            raise ValueError("boom")

    line = Boom.forward.__code__.co_firstlineno + 1
    message = expect_error(Boom(), f"model m: the model's forward raised ValueError: boom at "
                           f"{__file__}:{line}")
    assert "control flow" not in message


def test_forward_with_two_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x, y):
            return self.conv(x) + self.conv(y)

    message = expect_error(Two(), "model m: hwq compiles models with one input tensor; its "
                           "forward takes 2 (x, y)")
    assert "input shape" not in message


class Activated(nn.Module):
    """conv -> activation -> flatten -> linear, the activation given as a callable."""

    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fn = act
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.fn(self.conv(x)), 1))


@pytest.mark.parametrize("act, plain", [
    (torch.relu_, F.relu),
    (lambda x: x.relu_(), F.relu),
    (lambda x: F.relu(x, inplace=True), F.relu),
    (nn.ReLU(inplace=True), F.relu),
    (lambda x: F.leaky_relu_(x, 0.25), lambda x: F.leaky_relu(x, 0.25)),
])
def test_inplace_activations_trace_as_plain_ones(act, plain):
    graph, reference = (trace(Activated(a).eval(), (1, 8, 8), "m") for a in (act, plain))
    assert [(l.kind, l.act, l.alpha) for l in graph.layers] == \
        [(l.kind, l.act, l.alpha) for l in reference.layers]
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(run_float(graph, x)["fc"], run_float(reference, x)["fc"])


def test_inplace_relu_compiles_to_the_golden_output_of_relu():
    import hwq

    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    inplace, plain = (hwq.compile(Activated(a).eval(), (1, 8, 8), x, n_ref=1)
                      for a in (torch.relu_, F.relu))
    assert np.array_equal(inplace.predict(x, "golden"), plain.predict(x, "golden"))


def test_inplace_activation_of_a_shared_tensor_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu_(y) + y     # y is rectified too: not conv + relu(conv)

    expect_error(Shared(), "ReLU at node 'relu_'", "the output of 'conv' it would be folded "
                 "into is also used by 'add'")
