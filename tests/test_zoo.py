"""The model zoo: every model the hardware can run compiles and runs bit for bit as the
golden model computes it, on the ISS (and the MLPerf Tiny ones on the RTL); the one that
needs the vector unit is refused in one line; the architectures are torchvision's."""
import numpy as np
import pytest
import torch

from hwq.arch.config import load_hw_config
from hwq.compiler.frontend import trace
from hwq.compiler.lower import compile_model
from hwq.compiler.quant.config import load_quant_config
from hwq.compiler.quant.pipeline import quantize
from hwq.errors import HwqError
from hwq.examples import classics, mlperf_tiny
from hwq.examples.zoo import models
from hwq.sim.golden import run_golden
from hwq.sim.runner import first_mismatch, simulate

ZOO = models()
# What the hardware cannot run yet, and the first thing refused.
REFUSED = {"MobileNetV3Small": "unsupported op Hardswish"}
TINY = [cls.__name__ for cls in mlperf_tiny.MODELS]


def compiled(name: str):
    """The zoo model quantized on random inputs and compiled for the default config, or
    for big_dram where its DRAM image needs more."""
    cls = ZOO[name]
    x = np.random.default_rng(0).normal(size=(8, *cls.input_shape)).astype(np.float32)
    qmodel = quantize(trace(cls.pretrained(), cls.input_shape, name), x, load_quant_config(),
                      progress=False)
    try:
        return qmodel, compile_model(qmodel, load_hw_config("default"))
    except HwqError as e:
        assert "dram_words" in str(e)
        return qmodel, compile_model(qmodel, load_hw_config("big_dram"))


def check(name: str, sim: str = "iss", images: int = 2) -> None:
    qmodel, c = compiled(name)
    x = np.random.default_rng(1).integers(-128, 128, (images, *qmodel.input_shape)).astype(np.int8)
    shapes = {"input": qmodel.input_shape, **{l.name: l.out_shape for l in qmodel.layers}}
    result = simulate(c.cfg, c.image, c.start_pc, c.layouts, shapes, x, sim=sim)
    assert result.ok, result.status
    golden = run_golden(qmodel, x)
    assert first_mismatch(result, golden, [l.name for l in qmodel.layers], c.cfg.cols) is None


def test_dscnn_on_the_iss():
    """DS-CNN: a 10x4 stride-2 conv, depthwise-separable blocks, a 24x5 average pool."""
    check("DSCNN")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n not in REFUSED and n != "DSCNN"])
def test_zoo_model_on_the_iss(name):
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_mlperf_tiny_on_verilator(name):
    check(name, "verilator")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_in_one_line(name):
    with pytest.raises(HwqError) as info:
        trace(ZOO[name](), ZOO[name].input_shape, name)
    assert "\n" not in str(info.value) and REFUSED[name] in str(info.value)


def test_pretrained_is_seeded_and_has_batchnorm_statistics():
    a, b = mlperf_tiny.DSCNN.pretrained(), mlperf_tiny.DSCNN.pretrained()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    bn = a.features[1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def _torchvision():
    """torchvision (a dev dependency). The registry's build loads C ops for CUDA that fail
    beside a CPU torch; declaring the two it registers fakes for lets the import through."""
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        pass                                   # declared already (or torchvision's own)
    import torchvision
    return torchvision


@pytest.mark.parametrize("ours, theirs, kwargs", [
    (classics.ResNet18, "resnet18", {}),
    (classics.MobileNetV2, "mobilenet_v2", {"width_mult": 0.35}),
    (classics.MobileNetV3Small, "mobilenet_v3_small", {}),
    (classics.SqueezeNet11, "squeezenet1_1", {}),
    (classics.ShuffleNetV2, "shufflenet_v2_x0_5", {}),
    (classics.GoogLeNet, "googlenet", {"aux_logits": False, "init_weights": True}),
])
def test_classics_are_torchvision_architectures(ours, theirs, kwargs):
    """Parameter for parameter, shape for shape, as torchvision builds them (1000 classes)."""
    tv = _torchvision()
    a = ours(classes=1000) if "width_mult" not in kwargs else ours(kwargs["width_mult"], classes=1000)
    b = getattr(tv.models, theirs)(weights=None, **kwargs)
    shapes = lambda m: sorted(tuple(p.shape) for p in m.state_dict().values())  # noqa: E731
    assert shapes(a) == shapes(b)
