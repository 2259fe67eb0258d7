"""Quantization config: vai_q_pytorch's config-file fields, read from YAML.

A file has `overall_quantize_config` (every tensor field) and optionally
`tensor_quantize_config` with per-tensor-type overrides for input, weights, bias and
activation, as in Vitis AI. Values Vitis accepts but the int8 power-of-two hardware
cannot use are refused, and so are values hwq will support later (other calibration
methods, per-channel weights), so that nothing is silently ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from hwq.compiler.quant.requant import ROUND_MODES
from hwq.config import CONFIG_DIR
from hwq.errors import HwqError

DEFAULT_PATH = CONFIG_DIR / "quant_default.yaml"
TENSOR_TYPES = ("input", "weights", "bias", "activation")


@dataclass(frozen=True)
class _Field:
    type: type
    values: tuple           # what vai_q_pytorch accepts
    supported: tuple        # what hwq does
    planned: tuple = ()     # accepted by Vitis; hwq will support them later


_TENSOR_FIELDS = {
    "bit_width": _Field(int, (), (8,)),
    "method": _Field(str, ("maxmin", "percentile", "entropy", "mse", "diffs"), ("maxmin",),
                     planned=("percentile", "entropy", "mse", "diffs")),
    "round_mode": _Field(str, tuple(ROUND_MODES), tuple(ROUND_MODES)),
    "symmetry": _Field(bool, (True, False), (True,)),
    "per_channel": _Field(bool, (True, False), (False,), planned=(True,)),
    "signed": _Field(bool, (True, False), (True,)),
    "narrow_range": _Field(bool, (True, False), (True, False)),
    "scale_type": _Field(str, ("float", "poweroftwo"), ("poweroftwo",)),
    "calib_statistic_method": _Field(str, ("modal", "max", "mean", "median"), ("max",),
                                     planned=("modal", "mean", "median")),
}
# Vitis' global switches for float-model rewrites hwq does not do yet; false is accepted.
_SWITCHES = ("convert_relu6_to_relu", "convert_silu_to_hswish", "include_cle", "include_bias_corr",
             "keep_first_last_layer_accuracy", "keep_add_layer_accuracy")
_TOP_KEYS = ("target_device", "quantizable_data_type", "overall_quantize_config",
             "tensor_quantize_config", "layer_quantize_config") + _SWITCHES


@dataclass(frozen=True)
class TensorQuant:
    """How one tensor type is quantized (the Vitis per-tensor fields)."""

    bit_width: int
    method: str
    round_mode: str
    symmetry: bool
    per_channel: bool
    signed: bool
    narrow_range: bool
    scale_type: str
    calib_statistic_method: str


@dataclass(frozen=True)
class QuantConfig:
    input: TensorQuant
    weights: TensorQuant
    bias: TensorQuant
    activation: TensorQuant
    source: str = ""    # the file it came from, for messages

    def as_dict(self) -> dict:
        """The config as a Vitis-style plain dict that `parse_quant_config` reads back.
        Every tensor type is spelled out, so `overall_quantize_config` (required by the
        format) only has to be complete, not representative."""
        return {
            "target_device": "DPU",
            "quantizable_data_type": list(TENSOR_TYPES),
            "overall_quantize_config": dataclasses.asdict(self.weights),
            "tensor_quantize_config": {t: dataclasses.asdict(getattr(self, t)) for t in TENSOR_TYPES},
        }


def load_quant_config(path: str | Path | None = None) -> QuantConfig:
    """Read a quantization config YAML file; None reads configs/quant_default.yaml."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise HwqError(f"quant config {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise HwqError(f"quant config {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_quant_config(data, str(path))


def parse_quant_config(data, source: str) -> QuantConfig:
    """Validate a parsed config (e.g. a package manifest's copy) into a QuantConfig."""
    def fail(key: str, what: str):
        raise HwqError(f"quant config {source}: {key}: {what}")

    def mapping(value, key: str) -> dict:
        if not isinstance(value, dict):
            fail(key, f"must be a mapping, got {type(value).__name__}")
        return value

    def known(d: dict, allowed, key: str):
        for k in d:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                fail(where, f"unknown key; allowed: {', '.join(allowed)}")

    data = mapping(data, "(top level)")
    known(data, _TOP_KEYS, "")
    if data.get("target_device", "DPU") != "DPU":
        fail("target_device", f"{data['target_device']!r} is not supported; hwq targets a "
             "DPU-style int8 accelerator: use DPU")
    types = data.get("quantizable_data_type", list(TENSOR_TYPES))
    if not isinstance(types, list) or sorted(map(str, types)) != sorted(TENSOR_TYPES):
        fail("quantizable_data_type", f"{types!r} is not supported; hwq quantizes all of "
             f"[{', '.join(TENSOR_TYPES)}]")
    for switch in _SWITCHES:
        if data.get(switch, False) is not False:
            fail(switch, f"{_yaml(data[switch])} is not supported yet; use false")
    if data.get("layer_quantize_config"):
        fail("layer_quantize_config", "per-layer settings are not supported yet; remove it")

    key = "overall_quantize_config"
    overall = mapping(data.get(key), key)
    known(overall, _TENSOR_FIELDS, key)
    missing = [f for f in _TENSOR_FIELDS if f not in overall]
    if missing:
        fail(key, f"missing {', '.join(missing)}")
    per_tensor = mapping(data.get("tensor_quantize_config", {}), "tensor_quantize_config")
    known(per_tensor, TENSOR_TYPES, "tensor_quantize_config")
    for t, section in per_tensor.items():
        known(mapping(section, f"tensor_quantize_config.{t}"), _TENSOR_FIELDS, f"tensor_quantize_config.{t}")

    def resolve(t: str) -> TensorQuant:
        fields = {}
        for name, rule in _TENSOR_FIELDS.items():
            key, value = f"overall_quantize_config.{name}", overall[name]
            if name in per_tensor.get(t, {}):
                key, value = f"tensor_quantize_config.{t}.{name}", per_tensor[t][name]
            fields[name] = _check(rule, value, lambda what, key=key: fail(key, what))
        return TensorQuant(**fields)

    return QuantConfig(**{t: resolve(t) for t in TENSOR_TYPES}, source=source)


def _check(rule: _Field, value, fail):
    if type(value) is not rule.type:
        fail(f"{value!r} must be {'true or false' if rule.type is bool else rule.type.__name__}")
    if rule.values and value not in rule.values:
        fail(f"{value!r} is not one of {', '.join(map(_yaml, rule.values))}")
    if value in rule.planned:
        fail(f"{_yaml(value)} is not supported yet; use {' or '.join(map(_yaml, rule.supported))}")
    if value not in rule.supported:
        fail(f"{_yaml(value)} is not supported by the int8 power-of-two hardware; "
             f"use {' or '.join(map(_yaml, rule.supported))}")
    return value


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
