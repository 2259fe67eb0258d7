"""Sweep specs: a YAML file (or the same mapping in Python) naming models, hardware to
vary, boards, seeds and stages; checked in one line per mistake, expanded into points.

    models:                               # built-in examples by name, or mappings
      - lenet_digits
      - {model: net.py:Net, input_shape: 1x8x8, calib: digits}
      - {model: hwq.examples.mlperf_tiny:DSCNN, input_shape: 1x49x10, calib: mfcc.npy}
    hardware:
      base: default                       # hardware configs (a name, a YAML, or a list)
      vary: {rows: [4, 8], cols: [4, 8]}  # every combination, over every base
    boards: [orangecrab-25f]              # more bases: each board's config
    seeds: [1, 2]                         # nextpnr seeds (the bitstream stage)
    stages: [compile, iss]                # compile (always), iss, rtl, bitstream
    images: 8                             # reference images for iss and rtl
    sim: verilator                        # the RTL simulator: verilator or icarus
    quant: default                        # quantization config (a model's `quant` wins)

Paths in a spec file are relative to its directory. A point is a model on a base with
one combination of the `vary` fields (and a seed); a combination that makes no valid
config is a point too, refused with HwConfig's reason. A combination keeps the base's
memory: the bus narrows to fit the array and the DRAM keeps its bytes, unless it sets
them (`config_fields`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hwq.arch.config import FIELDS as HW_FIELDS, HwConfig, load_hw_config, named_file
from hwq.board.spec import FIELDS as BOARD_FIELDS, load_board
from hwq.cache import source_digest
from hwq.compiler.datasets import calibration_set, load_array
from hwq.compiler.quant.config import load_quant_config
from hwq.errors import HwqError
from hwq.examples import EXAMPLES
from hwq.flow import parse_shape
from hwq.schema import Rule, as_yaml, check, check_fields, read_yaml
from hwq.sweeps.point import HARDWARE_FIELDS, STAGES, ModelSource, Point

SWEEPS = resources.files("hwq") / "configs" / "sweeps"
SIMS = ("verilator", "icarus")
FIELDS = {
    "description": Rule(str, default=""),
    "models": Rule(list),
    "hardware": Rule(dict, default={}),
    "boards": Rule(list, default=[]),
    "seeds": Rule(list, default=[]),
    "stages": Rule(list, default=["compile"]),
    "images": Rule(int, default=8, bounds=(0, 100_000)),
    "sim": Rule(str, values=SIMS, default="verilator"),
    "quant": Rule(str, default="default"),
}
MODEL_FIELDS = {
    "model": Rule(str),
    "input_shape": Rule(str),
    "calib": Rule(str, default="digits"),
    "weights": Rule(str, default=None),
    "quant": Rule(str, default=None),
    "name": Rule(str, default=None),
}


@dataclass(frozen=True)
class Spec:
    name: str                   # the spec file's stem ("sweep" for a mapping)
    description: str
    points: list[Point]


def load_spec(spec: str | Path | dict) -> Spec:
    """A spec file (a shipped spec by name: hwq/configs/sweeps/) or mapping, checked and
    expanded into its points."""
    if isinstance(spec, dict):
        return expand(spec, Path.cwd(), "sweep spec", "sweep")
    path = named_file(spec, SWEEPS, "sweep spec")
    return expand(read_yaml(path, "sweep spec"), Path(str(path)).parent, str(path),
                  Path(str(path)).stem)


def grid(vary: dict[str, list]) -> list[tuple]:
    """Every combination of the fields' values, each as ((field, value), ...), the last
    field varying fastest; a value listed twice counts once."""
    fields = list(vary)
    values = [list(dict.fromkeys(vary[f])) for f in fields]
    return [tuple(zip(fields, combo)) for combo in itertools.product(*values)]


def config_name(base: str, combo: tuple) -> str:
    """base-rows4-cols8: a name that differs where the config does (simulator builds
    are kept per name) and that a file name can hold."""
    return "-".join([base, *(f"{k}{as_yaml(v)}" for k, v in combo)])


def expand(data, root: Path, source: str, name: str) -> Spec:
    s = check_fields(data, FIELDS, source)
    stages = _stages(s["stages"], source)
    hardware = s["hardware"]
    for key in hardware:
        if key not in ("base", "vary"):
            _fail(source, f"hardware.{key}", "unknown key; known: base, vary")
    vary = _vary(hardware.get("vary", {}), source)
    configs = [_within(source, "hardware.base", load_hw_config, _located(n, root))
               for n in _names(hardware.get("base"), "hardware.base", source)]
    bases = [(c.name, c, None) for c in configs]
    boards = [_within(source, "boards", load_board, _located(n, root))
              for n in _names(s["boards"], "boards", source)]
    if hardware.get("base") is None and not boards:
        bases = [("default", load_hw_config("default"), None)]
    bases += [(b.name, b.cfg, b) for b in boards]
    seeds = [check(BOARD_FIELDS["seed"], v, lambda what: _fail(source, "seeds", what))
             for v in s["seeds"]]
    _check_bitstream(stages, bases, seeds, source)
    models = [_model(m, i, root, source, s["quant"]) for i, m in enumerate(s["models"])]
    if not models:
        _fail(source, "models", "list at least one model")
    labels = [m.label for m in models]
    for label in labels:
        if labels.count(label) > 1:
            _fail(source, "models", f"two models are named {label}; give each a name:")
    images = s["images"] if {"iss", "rtl"} & set(stages) else 1
    sim = s["sim"] if "rtl" in stages else None
    points = [_point(m, base, cfg, board, combo, seed, stages, images, sim)
              for m in models for base, cfg, board in bases for combo in grid(vary)
              for seed in (seeds or [None])]
    return Spec(name, s["description"], points)


def config_fields(base: HwConfig, name: str, combo: tuple) -> dict:
    """The fields of the base with the combination's; unless the combination sets
    bus_bytes, the base's bus narrowed to the widest that divides the array's rows and
    columns (a buffer entry is whole bus words), and unless it sets dram_words, the DRAM
    as many bytes as the base's: varying the array alone sweeps arrays on the base's
    memory rather than refusing every one its bus does not fit."""
    given = dict(combo)
    fields = {**dataclasses.asdict(base), "name": name, **given}
    if "bus_bytes" in given:
        return fields
    bus = fields["bus_bytes"]
    while fields["bus_bytes"] > 1 and (fields["rows"] % fields["bus_bytes"]
                                       or fields["cols"] % fields["bus_bytes"]):
        fields["bus_bytes"] //= 2
    if "dram_words" not in given:
        fields["dram_words"] *= bus // fields["bus_bytes"]
    return fields


def _point(model, base, base_cfg, board, combo, seed, stages, images, sim) -> Point:
    fields = config_fields(base_cfg, config_name(base, combo), combo)
    try:
        cfg, refused = HwConfig(**fields), ""
    except HwqError as e:
        cfg, refused = None, str(e)
    if board is not None and cfg is not None:
        board = dataclasses.replace(board, cfg=cfg, seed=seed if seed is not None else board.seed)
    return Point(model=model, fields=fields, cfg=cfg, refused=refused, board=board,
                 board_digest=_digest(board.path.read_bytes()) if board is not None else None,
                 stages=stages, images=images, sim=sim)


def _fail(source: str, key: str, what: str):
    raise HwqError(f"{source}: {key}: {what}")


def _within(source: str, key: str, load, name: str):
    """load(name), its error told as the spec's key's."""
    try:
        return load(name)
    except HwqError as e:
        raise HwqError(f"{source}: {key}: {e}") from None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _located(name: str, root: Path) -> str:
    """A config or board name as it is, a YAML path relative to the spec's directory."""
    is_path = Path(name).suffix in (".yaml", ".yml") or "/" in name or "\\" in name
    return str(root / name) if is_path else name


def _names(value, key: str, source: str) -> list[str]:
    """A name or a list of names."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        _fail(source, key, f"{value!r} must be a name or a list of names")
    return names


def _stages(stages: list, source: str) -> tuple[str, ...]:
    for st in stages:
        if st not in STAGES:
            _fail(source, "stages", f"{st!r} is not one of {', '.join(STAGES)}")
    return tuple(st for st in STAGES if st in stages or st == "compile")


def _vary(vary, source: str) -> dict[str, list]:
    if not isinstance(vary, dict):
        _fail(source, "hardware.vary", f"{vary!r} must map hardware fields to lists of values")
    for field, values in vary.items():
        key = f"hardware.vary.{field}"
        if field not in HARDWARE_FIELDS:
            _fail(source, key, f"not a hardware field; vary any of {', '.join(HARDWARE_FIELDS)}")
        if not isinstance(values, list) or not values:
            _fail(source, key, f"{values!r} must be a list of values")
        for v in values:
            check(HW_FIELDS[field], v, lambda what, key=key: _fail(source, key, what))
    return vary


def _check_bitstream(stages, bases, seeds, source: str) -> None:
    if "bitstream" not in stages:
        if seeds:
            _fail(source, "seeds", "a seed is nextpnr's: add bitstream to stages, or drop seeds")
        return
    plain = [name for name, _, board in bases if board is None]
    if plain:
        _fail(source, "stages", f"bitstream needs a board for every point; hardware.base "
              f"{', '.join(plain)} has none (list boards, without hardware.base)")
    for _, _, board in bases:
        if not board.open_toolchain:
            _fail(source, "boards", f"{board.name} needs its vendor's tools ({board.family}); "
                  "the bitstream stage builds iCE40 and ECP5 boards")


def _model(entry, i: int, root: Path, source: str, quant: str) -> ModelSource:
    """A models[i] entry: a built-in example's name or a mapping of MODEL_FIELDS."""
    key = f"models[{i}]"
    if isinstance(entry, str):
        if entry not in EXAMPLES:
            _fail(source, key, f"{entry!r} is not a built-in example ({', '.join(EXAMPLES)}); "
                  "give a mapping with model, input_shape and calib")
        spec, shape, calib = EXAMPLES[entry]
        entry = {"model": spec, "input_shape": shape, "calib": calib, "name": entry}
    m = check_fields(entry, MODEL_FIELDS, source, key)
    try:
        shape = parse_shape(m["input_shape"])
        spec, source_bytes, digest = _model_code(m["model"], root)
        calib, calib_digest = _calibration(m["calib"], shape, root)
        weights = _read(root / m["weights"], "weights file") if m["weights"] else None
        qcfg = load_quant_config(_located(m["quant"] or quant, root))
    except HwqError as e:
        raise HwqError(f"{source}: {key}: {e}") from None
    label = m["name"] or spec.rpartition(":")[2]
    return ModelSource(label, spec, source_bytes, digest, shape, calib, calib_digest, qcfg,
                       weights)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise HwqError(f"{what} {path}: cannot read it ({e.strerror})") from None


def _model_code(spec: str, root: Path) -> tuple[str, bytes | None, str]:
    """(spec with the file's path resolved, the file's bytes or None, their digest); a
    module's digest is its source file's, or for hwq's own modules every hwq file it
    reads."""
    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr:
        raise HwqError(f"model '{spec}' must be given as path/to/file.py:ClassName or "
                       "package.module:ClassName")
    if path.endswith(".py"):
        file = (root / path).resolve()
        data = _read(file, "model file")
        return f"{file}:{attr}", data, _digest(data)
    try:
        found = importlib.util.find_spec(path)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise HwqError(f"model module {path} cannot be found; give path/to/file.py:ClassName "
                       "for a file")
    if path.split(".")[0] == "hwq":
        return spec, None, source_digest(path)
    return spec, None, _digest(Path(found.origin).read_bytes())


def _calibration(calib: str, shape, root: Path):
    """'digits', or a .npy file's array; checked against the input shape now, so that a
    mistake costs no worker's time."""
    if calib == "digits":
        calibration_set(calib, shape)
        return calib, calib
    path = root / calib
    x = load_array(path, "calibration file")
    calibration_set(x, shape)
    return x, _digest(path.read_bytes())
