"""ONNX in: a model exported to ONNX compiles to the same integer model as the nn.Module
it came from (same int8 weights, fix positions and golden outputs, bit for bit); what the
importer or the front end cannot run is refused in one line naming the ONNX node."""
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from hwq.compiler.frontend import trace
from hwq.compiler.onnx_import import load_onnx
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.pipeline import quantize
from hwq.errors import HwqError
from hwq.examples import classics, mlperf_tiny
from hwq.sim.golden import run_golden


def export(model: nn.Module, shape, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the legacy exporter's deprecation notice
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False)
    return str(path)


def integer_model(model: nn.Module, shape):
    x = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
    return quantize(trace(model, shape, "m"), x, load_quant_config(), progress=False)


class Views(nn.Module):
    """conv -> relu -> maxpool(ceil) -> channel shuffle -> split -> cat -> x.view(n, -1) -> fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, (3, 2), stride=(1, 2), padding=(1, 0))
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(8 * 4 * 2, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        a, b = x.chunk(2, dim=1)
        return self.fc(torch.cat([b, a], 1).view(x.size(0), -1))


@pytest.mark.parametrize("model, shape", [
    (mlperf_tiny.ResNet8.pretrained(), mlperf_tiny.ResNet8.input_shape),
    (mlperf_tiny.DSCNN.pretrained(), mlperf_tiny.DSCNN.input_shape),
    (mlperf_tiny.AutoEncoder.pretrained(), mlperf_tiny.AutoEncoder.input_shape),
    (classics.SqueezeNet11(classes=10), (3, 32, 32)),
    (Views(), (3, 8, 7)),
], ids=["ResNet8", "DSCNN", "AutoEncoder", "SqueezeNet11", "views"])
def test_onnx_compiles_to_the_same_integer_model(model, shape, tmp_path):
    model.eval()
    path = export(model, shape, tmp_path / "m.onnx")
    ours, theirs = integer_model(model, shape), integer_model(load_onnx(path, shape), shape)
    assert [(l.kind, l.f_out) for l in ours.layers] == [(l.kind, l.f_out) for l in theirs.layers]
    for a, b in zip(ours.layers, theirs.layers):
        assert (a.weight is None) == (b.weight is None)
        if a.weight is not None:
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    x = np.random.default_rng(1).integers(-128, 128, (4, *shape)).astype(np.int8)
    out = ours.layers[-1].name, theirs.layers[-1].name
    assert np.array_equal(run_golden(ours, x)[out[0]], run_golden(theirs, x)[out[1]])


def test_onnx_float_outputs_match_torch(tmp_path):
    model = mlperf_tiny.ResNet8.pretrained().eval()
    shape = mlperf_tiny.ResNet8.input_shape
    imported = load_onnx(export(model, shape, tmp_path / "m.onnx"), shape)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), model(x), rtol=1e-5, atol=1e-5)


def test_compile_an_onnx_file(tmp_path, cli):
    model = mlperf_tiny.DSCNN.pretrained()
    shape = mlperf_tiny.DSCNN.input_shape
    path = export(model, shape, tmp_path / "kws.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32))
    code, out, err = cli("compile", path, "--input-shape", "x".join(map(str, shape)),
                         "--calib", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "kws.hwq"),
                         "--ref-images", "1", "--hw", "big_dram", "-q")
    assert code == 0, err
    import hwq
    pkg = hwq.load(tmp_path / "kws.hwq")
    x = np.random.default_rng(2).normal(size=(2, *shape)).astype(np.float32)
    assert np.array_equal(pkg.predict(x, "iss"), pkg.predict(x, "golden"))


def _model(nodes, inits=(), shape=(1, 2, 4, 4), out_shape=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("nodes, inits, message", [
    ([helper.make_node("Conv", ["x", "w"], ["y"], name="conv0", pads=[1, 1, 0, 0])],
     [("w", np.ones((2, 2, 3, 3)))], "ONNX node 'conv0' (Conv) pads [1, 1, 0, 0] differ"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="SAME_UPPER")],
     [("w", np.ones((2, 2, 3, 3)))], "uses auto_pad; export it with explicit pads"),
    ([helper.make_node("Add", ["x", "k"], ["y"], name="plus")], [("k", np.ones((1, 2, 4, 4)))],
     "ONNX node 'plus' (Add) adds a constant tensor"),
    ([helper.make_node("Softmax", ["x"], ["y"], name="sm")], [],
     "ONNX op Softmax (node 'sm') is not supported; supported: Conv, Gemm"),
    ([helper.make_node("HardSwish", ["x"], ["y"], name="hs")], [],
     "unsupported op hardswish at node 'hs' (ONNX node 'hs' (HardSwish))"),
    ([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], dilations=[2, 2])],
     [], "ONNX node 'mp' (MaxPool) is dilated"),
])
def test_refused_in_one_line(nodes, inits, message, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(nodes, inits), str(path))
    with pytest.raises(HwqError) as info:
        trace(load_onnx(path, (2, 4, 4)), (2, 4, 4), "m")
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)


def test_bad_files_and_shapes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])]), str(path))
    with pytest.raises(HwqError, match=r"its ONNX input 'x' is 2x4x4 \(batch aside\), not the "
                                       r"input shape 2x4x5 given; give --input-shape 2x4x4"):
        load_onnx(path, (2, 4, 5))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(HwqError, match=r"junk.onnx: not an ONNX model"):
        load_onnx(junk, (2, 4, 4))
    with pytest.raises(HwqError, match=r"model file .*missing.onnx not found"):
        load_onnx(tmp_path / "missing.onnx", (2, 4, 4))


def test_api_compiles_an_onnx_path(tmp_path):
    import hwq
    path = export(Views(), (3, 8, 7), tmp_path / "views.onnx")
    x = np.random.default_rng(0).normal(size=(8, 3, 8, 7)).astype(np.float32)
    pkg = hwq.compile(path, (3, 8, 7), x, n_ref=1)
    assert pkg.path.name == "views.hwq"
    assert np.array_equal(pkg.predict(x[:2], "iss"), pkg.predict(x[:2], "golden"))
