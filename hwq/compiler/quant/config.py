"""Quantization config: vai_q_pytorch's config-file fields, read from YAML.

A file has `overall_quantize_config` (every tensor field), optionally
`tensor_quantize_config` with per-tensor-type overrides for input, weights, bias and
activation, and optionally `layer_quantize_config`: a list of overrides for one layer
type (`layer_type: torch.nn.Conv2d`) or one layer (`layer_name: conv1`), applied in that
order over the global settings, as in Vitis AI. Values Vitis accepts but the int8
power-of-two array cannot use are refused, saying why, so nothing is silently ignored.

An activation's `method` may also be `auto` (globally under
`tensor_quantize_config.activation`, or in a layer rule): hwq's per-layer method choice.
In each calibration batch every method proposes the layer output's fix position, and the
one whose rounding of the quantized model's output -- the layer run on its quantized
inputs (every upstream fix position already chosen), with its int8 weights and corrected
bias -- lands closest to float in mean squared error wins; the batches' winners combine
by `calib_statistic_method`, and the report names the method each layer took. Weights and
the input are no layer's output, so `auto` is refused for them.

`activation_signedness` (hwq's, not Vitis's) says how activations are stored: `signed`
stores every one as int8, as the DPU does (and a file without the key); `auto` stores a
tensor that is never negative -- a ReLU's or ReLU6's output, and pools, views, adds and
concatenations of such tensors only (ir.unsigned_outputs) -- as uint8, its fix position
chosen for codes 0..255: twice the resolution at the same range.

Two top-level switches go beyond post-training calibration, each with its own settings:
`fast_finetune` (Vitis AI's name for AdaQuant, layer-wise weight tuning after
calibration; `fast_finetune_steps` Adam steps per layer) and `weight_clustering` (k-means
weight sharing before calibration: `weight_clusters` centroids per layer, tuned for
`weight_cluster_steps` steps).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hwq.arch.config import named_file
from hwq.arch.requant import ROUND_MODES
from hwq.errors import HwqError
from hwq.schema import Rule, as_yaml, check, read_yaml

CONFIGS = resources.files("hwq") / "configs" / "quant"
TENSOR_TYPES = ("input", "weights", "bias", "activation")
LAYER_TENSORS = ("weights", "bias", "activation")   # what a layer override may set
METHODS = ("maxmin", "percentile", "entropy", "mse", "diffs")
# An activation's method that picks, per layer, the one of METHODS giving the lowest error
# of the layer's quantized output (calibrate.py); weights and the input have no layer
# output of their own to measure.
AUTO = "auto"
STATISTICS = ("modal", "max", "mean", "median")
# The torch op names a `layer_type` may give (with or without the torch.nn. prefix).
LAYER_TYPES = ("Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "mean", "add",
               "cat", "flatten", "view")


_TENSOR_FIELDS = {
    "bit_width": Rule(int, (), (8,)),
    "method": Rule(str, METHODS + (AUTO,), ()),
    "round_mode": Rule(str, tuple(ROUND_MODES), ()),
    "symmetry": Rule(bool, (True, False), (True,)),
    "per_channel": Rule(bool, (True, False), ()),
    "signed": Rule(bool, (True, False), (True,)),
    "narrow_range": Rule(bool, (True, False), ()),
    "scale_type": Rule(str, ("float", "poweroftwo"), ()),
    "calib_statistic_method": Rule(str, STATISTICS, ()),
    "percentage": Rule(float, (), (), default=99.99, bounds=(0, 100)),   # the percentile method's
}
_REQUIRED = [f for f, rule in _TENSOR_FIELDS.items() if rule.required]
SIGNEDNESS = Rule(str, ("signed", "auto"), (), default="signed")
# Vitis' global switches: those hwq does, and those it refuses with the reason.
_SWITCHES = ("convert_relu6_to_relu", "include_cle", "include_bias_corr", "fast_finetune",
             "weight_clustering")
# Settings of a switch: (the switch, the rule). Given while the switch is off they would do
# nothing, so they are refused then.
_OPTIONS = {
    "fast_finetune_steps": ("fast_finetune", Rule(int, (), (), default=300, bounds=(0, 100_000))),
    "weight_clusters": ("weight_clustering", Rule(int, (), (), default=16, bounds=(1, 256))),
    "weight_cluster_steps": ("weight_clustering", Rule(int, (), (), default=200, bounds=(0, 100_000))),
}
_REFUSED_SWITCHES = {
    "convert_silu_to_hswish": "hwq compiles no SiLU or Hardswish",
    "keep_first_last_layer_accuracy": "the array is int8-only, so no layer can stay at "
                                      "higher precision",
    "keep_add_layer_accuracy": "the array is int8-only, so adds cannot stay at higher precision",
}
_TOP_KEYS = ("target_device", "quantizable_data_type", "activation_signedness",
             "overall_quantize_config", "tensor_quantize_config", "layer_quantize_config") + _SWITCHES + tuple(_OPTIONS) + \
    tuple(_REFUSED_SWITCHES)
_RULE_KEYS = ("layer_type", "layer_name", "overall_quantize_config", "tensor_quantize_config")


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
    percentage: float = 99.99


@dataclass(frozen=True)
class LayerRule:
    """One `layer_quantize_config` entry: which layers, and the fields it overrides."""

    layer_type: str          # "" when the rule names a layer
    layer_name: str
    overall: dict
    tensors: dict            # tensor type -> fields

    def matches(self, layer) -> bool:
        return layer.name == self.layer_name if self.layer_name else layer.op == self.layer_type

    def as_dict(self) -> dict:
        key = {"layer_name": self.layer_name} if self.layer_name else \
            {"layer_type": f"torch.nn.{self.layer_type}"}
        return {**key, "overall_quantize_config": dict(self.overall),
                "tensor_quantize_config": {t: dict(f) for t, f in self.tensors.items()}}


@dataclass(frozen=True)
class QuantConfig:
    input: TensorQuant
    weights: TensorQuant
    bias: TensorQuant
    activation: TensorQuant
    source: str = ""    # the file it came from, for messages
    layer_rules: tuple[LayerRule, ...] = ()
    switches: dict = field(default_factory=lambda: dict.fromkeys(_SWITCHES, False))
    options: dict = field(default_factory=lambda: {k: rule.default for k, (_, rule) in _OPTIONS.items()})
    activation_signedness: str = SIGNEDNESS.default

    def for_layer(self, layer) -> dict[str, TensorQuant]:
        """The weights, bias and activation settings of one graph layer: the global ones,
        then every matching layer_type rule, then every matching layer_name rule."""
        fields = {t: dataclasses.asdict(getattr(self, t)) for t in LAYER_TENSORS}
        rules = [r for r in self.layer_rules if r.layer_type] + [r for r in self.layer_rules if r.layer_name]
        for rule in (r for r in rules if r.matches(layer)):
            for t in LAYER_TENSORS:
                fields[t].update(rule.overall)
                fields[t].update(rule.tensors.get(t, {}))
        return {t: TensorQuant(**f) for t, f in fields.items()}

    def check_layers(self, graph) -> None:
        """Refuse layer rules that match no layer of `graph`: a typo would silently do nothing."""
        for i, rule in enumerate(self.layer_rules):
            if not any(rule.matches(l) for l in graph.layers):
                what = f"layer_name '{rule.layer_name}'" if rule.layer_name else f"layer_type {rule.layer_type}"
                known = ", ".join(l.name for l in graph.layers) if rule.layer_name else \
                    ", ".join(sorted({l.op for l in graph.layers}))
                raise HwqError(f"quant config {self.source}: layer_quantize_config[{i}]: {what} "
                               f"matches no layer of model {graph.name}; it has {known}")

    def uses_auto(self) -> bool:
        """Whether some layer's activation takes `method: auto`."""
        return self.activation.method == AUTO or any(
            {**r.overall, **r.tensors.get("activation", {})}.get("method") == AUTO for r in self.layer_rules)

    def as_dict(self) -> dict:
        """The config as a Vitis-style plain dict that `parse_quant_config` reads back.
        Every tensor type is spelled out, so `overall_quantize_config` (required by the
        format) only has to be complete, not representative."""
        return {
            "target_device": "DPU",
            "quantizable_data_type": list(TENSOR_TYPES),
            "activation_signedness": self.activation_signedness,
            **self.switches,
            **{k: v for k, v in self.options.items() if self.switches[_OPTIONS[k][0]]},
            "overall_quantize_config": dataclasses.asdict(self.weights),
            "tensor_quantize_config": {t: dataclasses.asdict(getattr(self, t)) for t in TENSOR_TYPES},
            **({"layer_quantize_config": [r.as_dict() for r in self.layer_rules]}
               if self.layer_rules else {}),
        }


def load_quant_config(name_or_path: str | Path | None = None) -> QuantConfig:
    """A quantization config shipped in hwq/configs/quant/ by name (None: `default`), or a
    YAML file by path."""
    path = named_file(name_or_path or "default", CONFIGS, "quant config")
    return parse_quant_config(read_yaml(path, "quant config"), str(path))


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

    def tensor_fields(d, key: str) -> dict:
        """Check a (possibly partial) mapping of tensor fields; return it validated."""
        known(mapping(d, key), _TENSOR_FIELDS, key)
        return {name: check(_TENSOR_FIELDS[name], value, lambda what, k=f"{key}.{name}": fail(k, what))
                for name, value in d.items()}

    def per_tensor(d, key: str, types) -> dict:
        known(mapping(d, key), types, key)
        return {t: tensor_fields(section, f"{key}.{t}") for t, section in d.items()}

    data = mapping(data, "(top level)")
    known(data, _TOP_KEYS, "")
    if data.get("target_device", "DPU") != "DPU":
        fail("target_device", f"{data['target_device']!r} is not supported; hwq targets a "
             "DPU-style int8 accelerator: use DPU")
    types = data.get("quantizable_data_type", list(TENSOR_TYPES))
    if not isinstance(types, list) or sorted(map(str, types)) != sorted(TENSOR_TYPES):
        fail("quantizable_data_type", f"{types!r} is not supported; hwq quantizes all of "
             f"[{', '.join(TENSOR_TYPES)}]")
    for switch, why in _REFUSED_SWITCHES.items():
        if data.get(switch, False) is not False:
            fail(switch, f"{as_yaml(data[switch])} is not supported: {why}; use false")
    switches = {}
    for switch in _SWITCHES:
        switches[switch] = data.get(switch, False)
        if type(switches[switch]) is not bool:
            fail(switch, f"{switches[switch]!r} must be true or false")
    if switches["fast_finetune"] and switches["weight_clustering"]:
        fail("fast_finetune", "true cannot go with weight_clustering: true: fast finetune moves "
             "every weight on its own and would undo the clusters; use one of them")
    options = {}
    for name, (switch, rule) in _OPTIONS.items():
        if name in data and not switches[switch]:
            fail(name, f"is set but {switch} is false, so it would do nothing; set {switch}: "
                 "true or remove it")
        options[name] = check(rule, data.get(name, rule.default), lambda what, k=name: fail(k, what))
    signedness = check(SIGNEDNESS, data.get("activation_signedness", SIGNEDNESS.default),
                       lambda what: fail("activation_signedness", what))

    key = "overall_quantize_config"
    overall = tensor_fields(data.get(key), key)
    missing = [f for f in _REQUIRED if f not in overall]
    if missing:
        fail(key, f"missing {', '.join(missing)}")
    tensors = per_tensor(data.get("tensor_quantize_config", {}), "tensor_quantize_config", TENSOR_TYPES)

    def resolve(t: str) -> TensorQuant:
        fields = {**overall, **tensors.get(t, {})}
        if t in ("input", "activation") and fields["per_channel"]:
            fail(f"tensor_quantize_config.{t}.per_channel", "true is not supported: hwq "
                 "quantizes weights per channel only; set it false for " + t)
        if t in ("input", "weights") and fields["method"] == AUTO:
            where = f"tensor_quantize_config.{t}" if "method" in tensors.get(t, {}) else "overall_quantize_config"
            fail(f"{where}.method", f"auto is for activations only: it compares each layer's "
                 f"quantized output with float, and {t} is no layer's output; set it under "
                 f"tensor_quantize_config.activation and give {t} one of {', '.join(METHODS)}")
        return TensorQuant(**fields)

    rules = []
    layer_list = data.get("layer_quantize_config") or []
    if not isinstance(layer_list, list):
        fail("layer_quantize_config", f"must be a list, got {type(layer_list).__name__}")
    for i, entry in enumerate(layer_list):
        key = f"layer_quantize_config[{i}]"
        known(mapping(entry, key), _RULE_KEYS, key)
        if ("layer_type" in entry) == ("layer_name" in entry):
            fail(key, "give exactly one of layer_type and layer_name")
        layer_type = str(entry.get("layer_type", "")).removeprefix("torch.nn.")
        if "layer_type" in entry and layer_type not in LAYER_TYPES:
            fail(f"{key}.layer_type", f"{entry['layer_type']!r} is not a layer hwq compiles; "
                 f"use one of {', '.join(LAYER_TYPES)}")
        rule_overall = tensor_fields(entry.get("overall_quantize_config", {}), f"{key}.overall_quantize_config")
        rule_tensors = per_tensor(entry.get("tensor_quantize_config", {}),
                                  f"{key}.tensor_quantize_config", LAYER_TENSORS)
        if {**rule_overall, **rule_tensors.get("activation", {})}.get("per_channel"):
            fail(key, "per_channel true would apply to the activation; set it under "
                 "tensor_quantize_config.weights")
        if {**rule_overall, **rule_tensors.get("weights", {})}.get("method") == AUTO:
            fail(key, "method auto would apply to the weights, and it is for activations only; "
                 "set it under tensor_quantize_config.activation")
        rules.append(LayerRule(layer_type, str(entry.get("layer_name", "")), rule_overall, rule_tensors))

    return QuantConfig(**{t: resolve(t) for t in TENSOR_TYPES}, source=source,
                       layer_rules=tuple(rules), switches=switches, options=options,
                       activation_signedness=signedness)
