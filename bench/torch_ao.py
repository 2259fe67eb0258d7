"""PyTorch's own int8 post-training quantization (x86 fbgemm, per-channel weights, float
scales): the reference the benchmarks measure hwq against."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch


def torch_ao_int8(model: torch.nn.Module, x_calib: np.ndarray) -> torch.nn.Module:
    """The model converted by torch.ao's FX flow, calibrated on `x_calib`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("fbgemm"),
                              example_inputs=(torch.from_numpy(x_calib[:1]),))
        with torch.no_grad():
            prepared(torch.from_numpy(x_calib))
        return convert_fx(prepared)
