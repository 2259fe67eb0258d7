"""Brevitas's power-of-two (fixed-point) int8 post-training quantization, set up as a
Brevitas user would: the peer bench/quant_accuracy.py measures hwq against, beside
torch.ao (bench/torch_ao.py).

Graph mode: `preprocess_for_quantize` (trace, BatchNorm merged, ReLU6 kept, optionally
graph equalization) and `quantize` with maps that select the fixed-point quantizers:
`Int8WeightPerTensorFixedPoint` weights, `Int32Bias` biases, `Int8ActPerTensorFixedPoint`
for the input and every activation, or `Uint8ActPerTensorFixedPoint` after ReLU and
ReLU6. ReLU6 stays a clamp to [0, 6] ahead of its quantizer: Brevitas maps it to a
QuantHardTanh, which leaves the clamp to the quantizer's range, and a quantizer
calibrated from statistics has none (its outputs run unclamped). Calibration runs
`calibration_mode` over the calibration images in one batch, then, when asked,
`bias_correction_mode` over them again.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn as nn

EQUALIZE_ITERS = 20   # graph equalization rounds, as Brevitas's PTQ examples run it

# name -> (unsigned activations after ReLU, graph equalization, bias correction)
VARIANTS = {
    "Brevitas po2 PTQ": (False, False, False),
    "Brevitas + bias correction": (False, False, True),
    "Brevitas + uint8 after ReLU + equalization + bias corr": (True, True, True),
}


def brevitas_po2(model: nn.Module, x_calib: np.ndarray, unsigned: bool = False, equalize: bool = False,
                 bias_correction: bool = False) -> nn.Module:
    """`model` quantized by Brevitas with power-of-two scales and calibrated on `x_calib`."""
    import brevitas.nn as qnn
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.quantize import preprocess_for_quantize, quantize
    from brevitas.nn.quant_layer import QuantNonLinearActLayer
    from brevitas.quant.fixed_point import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint,
                                            Uint8ActPerTensorFixedPoint)
    from brevitas.quant.scaled_int import Int32Bias

    class QuantReLU6(QuantNonLinearActLayer):
        def __init__(self, act_quant, return_quant_tensor: bool = False, **kwargs):
            super().__init__(act_impl=_Clamp6, passthrough_act=True, input_quant=None, act_quant=act_quant,
                             return_quant_tensor=return_quant_tensor, **kwargs)

    after_relu = Uint8ActPerTensorFixedPoint if unsigned else Int8ActPerTensorFixedPoint
    weights = {"weight_quant": Int8WeightPerTensorFixedPoint, "bias_quant": Int32Bias, "return_quant_tensor": True}
    layers = {nn.Conv2d: (qnn.QuantConv2d, weights), nn.Linear: (qnn.QuantLinear, weights), nn.AvgPool2d: None}
    acts = {nn.ReLU: (qnn.QuantReLU, {"act_quant": after_relu, "return_quant_tensor": True}),
            nn.ReLU6: (QuantReLU6, {"act_quant": after_relu, "return_quant_tensor": True})}
    identities = {"signed": (qnn.QuantIdentity, {"act_quant": Int8ActPerTensorFixedPoint, "return_quant_tensor": True}),
                  "unsigned": (qnn.QuantIdentity, {"act_quant": after_relu, "return_quant_tensor": True})}
    x = torch.from_numpy(np.asarray(x_calib, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = preprocess_for_quantize(copy.deepcopy(model).eval(), relu6_to_relu=False,
                                        equalize_iters=EQUALIZE_ITERS if equalize else 0)
        q = quantize(graph, quant_identity_map=identities, compute_layer_map=layers, quant_act_map=acts,
                     unsigned_act_tuple=(nn.ReLU, nn.ReLU6) if unsigned else ()).eval()
        with torch.no_grad():
            with calibration_mode(q):
                q(x)
            if bias_correction:
                with bias_correction_mode(q):
                    q(x)
    return q


class _Clamp6(nn.Module):
    """ReLU6 as a plain module: Brevitas switches off an nn.Hardtanh (ReLU6 is one)
    wherever a quantizer follows it, counting on the quantizer's range to clamp."""

    def __init__(self):   # Brevitas's injector takes no *args/**kwargs constructor
        super().__init__()

    def forward(self, x):
        return torch.clamp(x, 0.0, 6.0)


def brevitas_logits(model: nn.Module, x_calib: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every variant's logits on `x`, by name."""
    out = {}
    for name, (unsigned, equalize, bias_correction) in VARIANTS.items():
        q = brevitas_po2(model, x_calib, unsigned, equalize, bias_correction)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = np.asarray(q(torch.from_numpy(x))).reshape(len(x), -1)
    return out


if __name__ == "__main__":
    # the three columns, on the bench's models
    import quant_accuracy as bench
    from hwq.compiler.datasets import digits_split
    from hwq.compiler.quant.report import sqnr_db

    torch.set_num_threads(2)
    for w in bench.workloads(digits_split()):
        with torch.no_grad():
            reference = w.model(torch.from_numpy(w.x_test)).numpy().reshape(len(w.x_test), -1)
        logits = brevitas_logits(w.model, w.x_calib, w.x_test)
        print(w.name, "  ".join(f"{v}: {sqnr_db(reference, y):.2f}" for v, y in logits.items()))
