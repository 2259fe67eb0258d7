"""Table-driven checks of hwq's YAML files: hardware configs (hwq/arch/config.py), board
files (hwq/board/spec.py) and quantization configs (hwq/compiler/quant/config.py).

Each format is a table of `Rule`s, one per key; `check_fields` holds a mapping to its
table and `read_yaml` reads a file into a mapping, both failing with one line that
names the file, the key and what to write instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from hwq.errors import HwqError

REQUIRED = object()      # a Rule's default for a key that must be given


@dataclass(frozen=True)
class Rule:
    """What one key takes: its type, the values accepted (empty: any of the type), those
    among them hwq supports (empty: all), a (lo, hi] range for numbers, and the default
    when the key is absent."""

    type: type
    values: tuple = ()
    supported: tuple = ()
    default: Any = REQUIRED
    bounds: tuple | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def as_yaml(value) -> str:
    """A value as it is written in YAML (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping", list: "a list"}.get(t, t.__name__)


def check(rule: Rule, value, fail: Callable[[str], Any]):
    """`value` if `rule` allows it (an int is taken for a float), else fail(what is wrong)."""
    if rule.type is float and type(value) is int:
        value = float(value)
    if type(value) is not rule.type:
        fail(f"{value!r} must be {_type_name(rule.type)}")
    if rule.values and value not in rule.values:
        fail(f"{value!r} is not one of {', '.join(map(as_yaml, rule.values))}")
    if rule.supported and value not in rule.supported:
        fail(f"{as_yaml(value)} is not supported by the int8 power-of-two hardware; "
             f"use {' or '.join(map(as_yaml, rule.supported))}")
    if rule.bounds and not rule.bounds[0] < value <= rule.bounds[1]:
        fail(f"{value} must be in ({rule.bounds[0]}, {rule.bounds[1]}]")
    return value


def check_fields(data, rules: dict[str, Rule], source: str, section: str = "",
                 defaults: bool = True) -> dict:
    """`data` held to `rules`: a mapping with no unknown key, every value allowed; the
    absent keys take their defaults (with `defaults`) or stay absent. Fails in one line
    naming `source` and the key."""
    where = f"{section}." if section else ""
    if not isinstance(data, dict):
        raise HwqError(f"{source}: {section or 'the file'} must be a mapping of fields, "
                       f"got {type(data).__name__}")
    for key in data:
        if key not in rules:
            raise HwqError(f"{source}: {where}{key}: unknown key; known: {', '.join(rules)}")
    out = {}
    for key, rule in rules.items():
        if key in data:
            def fail(what, key=key):
                raise HwqError(f"{source}: {where}{key}: {what}")
            out[key] = check(rule, data[key], fail)
        elif rule.required:
            raise HwqError(f"{source}: {where}{key} is missing")
        elif defaults:
            out[key] = rule.default
    return out


def read_yaml(path: Path, what: str) -> dict:
    """The mapping a YAML file holds (an empty file is an empty mapping)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise HwqError(f"{what} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise HwqError(f"{what} {path}: not a text file (not UTF-8); give a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise HwqError(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HwqError(f"{what} {path}: expected a mapping of fields, got {type(data).__name__}")
    return data
