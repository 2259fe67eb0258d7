"""Design-space sweeps (hwq/sweeps/): the spec, its grid and its one-line mistakes; points
as Dask tasks on a two-worker LocalCluster, with a refused model, invalid configs, a
worker killed mid-task and one killed every time; the row cache across a re-run, a
larger spec and a sweep killed half way; the shipped regression spec, small."""
import csv
import importlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import hwq
from hwq.arch.config import CONFIGS, HwConfig, available
from hwq.board.spec import available_boards
from hwq.errors import HwqError
from hwq.examples import EXAMPLES
from hwq.flow import build
from hwq.sweeps.engine import sweep
from hwq.sweeps.point import COLUMNS
from hwq.sweeps.report import pareto_front, pareto_png, results_csv
from hwq.sweeps.spec import SWEEPS, config_fields, grid, load_spec

ROOT = Path(__file__).resolve().parent.parent

MODELS = textwrap.dedent("""
    import os, time
    import torch, torch.nn as nn, torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 4 * 4, 10)
        def forward(self, x):
            return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))

    class Gelu(Net):
        def forward(self, x):
            return F.gelu(self.conv(x))

    class Killer(Net):
        '''Kills the worker that builds it the first time, as a crash or the OOM killer would.'''
        def __init__(self):
            if not os.path.exists(MARKER):
                open(MARKER, "w").close()
                os._exit(1)
            super().__init__()

    class Poison(Net):
        '''Kills every worker that builds it.'''
        def __init__(self):
            os._exit(1)

    class Slow(Net):
        def __init__(self):
            time.sleep(0.5)
            super().__init__()
""")


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(f"MARKER = {str(tmp_path / 'killed-once')!r}\n" + MODELS)
    return path


def model(path, name):
    return {"model": f"{path}:{name}", "input_shape": "1x8x8", "calib": "digits"}


@pytest.fixture(scope="module")
def scheduler():
    """A two-worker LocalCluster for the module's sweeps, as `hwq sweep` makes one: one
    task per worker at a time; a task is retried once after its worker dies."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
    with cluster:
        # a worker's first point imports torch, hwq and what tracing and the digits load
        # lazily (tens of seconds on a loaded machine): paid here once, by a build on
        # every worker, not by whichever test comes first
        with Client(cluster) as client:
            client.run(lambda: build(EXAMPLES["lenet_digits"][0], (1, 8, 8), "digits",
                                     n_ref=1, progress=False) and None)
        yield cluster.scheduler_address


# ---- the spec ----

@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["rows", "cols", "ibuf_depth", "overlap"]),
                       st.lists(st.integers(0, 5), min_size=1, max_size=4), max_size=4))
def test_grid_is_every_combination_once(vary):
    combos = grid(vary)
    assert len(combos) == math.prod(len(set(v)) for v in vary.values())
    assert len(set(combos)) == len(combos)
    for combo in combos:
        assert [f for f, _ in combo] == list(vary)
        assert all(v in vary[f] for f, v in combo)
    if vary:   # the last field varies fastest
        last = list(vary)[-1]
        assert [dict(c)[last] for c in combos[:len(set(vary[last]))]] == list(dict.fromkeys(vary[last]))


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(0, 17), cols=st.integers(0, 17), bus=st.sampled_from([1, 2, 4, 8, 16]),
       set_bus=st.booleans(), set_dram=st.booleans())
def test_the_bus_narrows_to_fit_the_array(rows, cols, bus, set_bus, set_dram):
    """Unless the point sets bus_bytes, it is the base's, halved until it divides rows and
    cols: the widest that fits; the DRAM keeps its bytes unless the point sets it."""
    base = HwConfig(rows=16, cols=16, bus_bytes=bus, dram_words=1024)
    combo = (("rows", rows), ("cols", cols)) + ((("bus_bytes", 8),) if set_bus else ()) \
        + ((("dram_words", 4096),) if set_dram else ())
    fields = config_fields(base, "x", combo)
    assert (fields["rows"], fields["cols"], fields["name"]) == (rows, cols, "x")
    b = fields["bus_bytes"]
    if set_bus:
        assert b == 8
    else:
        assert b <= bus and rows % b == 0 and cols % b == 0
        assert b == bus or rows % (2 * b) or cols % (2 * b)
    if set_dram:
        assert fields["dram_words"] == 4096
    else:
        assert fields["dram_words"] * b == 1024 * (8 if set_bus else bus)


@pytest.mark.parametrize("change, error", [
    ({"stagez": []}, "spec.yaml: stagez: unknown key"),
    ({"hardware": {"vary": {"rowz": [4]}}}, "hardware.vary.rowz: not a hardware field"),
    ({"hardware": {"vary": {"rows": 4}}}, "hardware.vary.rows: 4 must be a list"),
    ({"hardware": {"vary": {"overlap": [1]}}}, "hardware.vary.overlap: 1 must be true or false"),
    ({"hardware": {"bases": "small"}}, "hardware.bases: unknown key"),
    ({"hardware": {"base": "huge"}}, "hardware.base: hardware config 'huge' not found"),
    ({"boards": ["nope"]}, "boards: board 'nope' not found"),
    ({"stages": ["synth"]}, "stages: 'synth' is not one of"),
    ({"seeds": [1, 2]}, "seeds: a seed is nextpnr's"),
    ({"stages": ["bitstream"]}, "stages: bitstream needs a board for every point"),
    ({"stages": ["bitstream"], "boards": ["arty-a7-35"]}, "boards: arty-a7-35 needs its vendor's tools"),
    ({"sim": "xsim"}, "sim: 'xsim' is not one of verilator, icarus"),
    ({"images": 0}, "images: 0 must be in"),
    ({"models": []}, "models: list at least one model"),
    ({"models": ["resnet"]}, "models[0]: 'resnet' is not a built-in example"),
    ({"models": [{"model": "missing.py:Net", "input_shape": "1x8x8"}]}, "models[0]: model file"),
    ({"models": [{"model": "no.such.module:Net", "input_shape": "1x8x8"}]},
     "models[0]: model module no.such.module cannot be found"),
    ({"models": [{"model": "hwq.examples.lenet_digits:LeNet", "input_shape": "1x9"}]},
     "models[0]: input shape '1x9'"),
    ({"models": [{"model": "hwq.examples.lenet_digits:LeNet", "input_shape": "3x8x8"}]},
     "models[0]: calibration set digits has 1x8x8 images"),
    ({"models": ["lenet_digits", "lenet_digits"]}, "models: two models are named lenet_digits"),
])
def test_spec_mistakes_are_one_line_naming_the_key(tmp_path, cli, change, error):
    spec = {"models": ["lenet_digits"], "hardware": {"vary": {"rows": [4, 8]}}, **change}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(HwqError, match=re.escape(error)):
        load_spec(path)
    code, out, err = cli("sweep", path, "-o", tmp_path / "out", "-q")
    assert code == 2 and err.count("\n") == 1 and error in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "a refused spec wrote results"


def test_outputs_a_sweep_must_not_write_are_refused_first(tmp_path, cli):
    """A file, a directory of the user's own files or an unreachable scheduler: one line,
    exit 2, and nothing written or replaced."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("models: [lenet_digits]\n")
    afile, user = tmp_path / "afile", tmp_path / "mine"
    afile.write_text("keep")
    user.mkdir()
    (user / "summary.md").write_text("keep")
    for args, error in [(["-o", afile], "output {0} is a file"),
                        (["-o", user], "output directory {0} holds files a sweep did not write"),
                        (["-o", tmp_path / "out", "--scheduler", "nonsense"],
                         "scheduler nonsense: cannot connect")]:
        code, out, err = cli("sweep", spec, *args, "-q")
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert error.format(args[1]) in err
    assert afile.read_text() == "keep" and (user / "summary.md").read_text() == "keep"
    assert sorted(p.name for p in user.iterdir()) == ["summary.md"]
    assert not (tmp_path / "out").exists()


def test_invalid_configs_are_failed_rows_and_exit_1(tmp_path, cli):
    """Points whose configs are invalid are rows with HwConfig's one line (no worker is
    needed for them); the CLI lists them and exits 1 after writing the reports."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"models": ["lenet_digits"],
                                    "hardware": {"vary": {"rows": [0, 32]}}}))
    code, out, err = cli("sweep", spec, "-o", tmp_path / "out", "-q")
    assert code == 1 and err.count("\n") == 1 and "2 of 2 points failed" in err, err
    assert "array 0x8 is outside 2x2..16x16" in out and "array 32x8 is outside" in out
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["rows"], r["status"], r["failed_stage"]) for r in rows] == \
        [("0", "failed", "config"), ("32", "failed", "config")]
    assert all("\n" not in r["error"] and r["cycles"] == "" for r in rows)
    assert "## Points that failed" in (tmp_path / "out" / "summary.md").read_text()


def test_zoo_models_by_module(tmp_path):
    """A zoo model is named as a module's class, with its input shape and a calibration
    file of that shape; its cache key digests hwq's sources it is built from."""
    np.save(tmp_path / "mfcc.npy", np.zeros((4, 1, 49, 10), np.float32))
    entry = {"model": "hwq.examples.mlperf_tiny:DSCNN", "input_shape": "1x49x10",
             "calib": "mfcc.npy"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    (p,) = load_spec(path).points
    assert p.model.label == "DSCNN" and p.model.source is None
    assert p.model.calib.shape == (4, 1, 49, 10)
    path.write_text(yaml.safe_dump({"models": [{**entry, "input_shape": "1x8x8"}]}))
    with pytest.raises(HwqError, match=re.escape("models[0]: calibration")):
        load_spec(path)


def test_point_keys_follow_their_inputs(tmp_path, models):
    """A point's key changes with what its row depends on (model bytes, config, seed,
    stages, hwq's code), not with where its model file lies; seeds of one config share
    the compile task, models on one board config and seed the bitstream task."""
    def points(**change):
        spec = {"models": [model(models, "Net"), "lenet_digits"], "boards": ["icebreaker"],
                "hardware": {"vary": {"ibuf_depth": [128, 256]}}, "seeds": [1, 2],
                "stages": ["compile", "bitstream"], **change}
        return load_spec(spec).points

    base = points()
    assert len(base) == 2 * 2 * 2
    keys = [p.key("c") for p in base]
    assert len(set(keys)) == len(keys) and keys == [p.key("c") for p in points()]
    assert {p.key("d") for p in base}.isdisjoint(keys)
    net = [p for p in base if p.model.label == "Net"]
    by_seed = {}
    for p in net:
        by_seed.setdefault(p.cfg.ibuf_depth, []).append(p)
    for a, b in by_seed.values():          # the same config, seeds 1 and 2
        assert (a.seed, b.seed) == (1, 2)
        assert a.compile_key("c") == b.compile_key("c")
        assert a.bitstream_key("c") != b.bitstream_key("c")
    lenet = [p for p in base if p.model.label == "lenet_digits"]
    assert {p.bitstream_key("c") for p in lenet} == {p.bitstream_key("c") for p in net}

    moved = tmp_path / "elsewhere" / "nets.py"
    moved.parent.mkdir()
    moved.write_bytes(models.read_bytes())
    assert [p.key("c") for p in points(models=[model(moved, "Net"), "lenet_digits"])] == keys
    models.write_text(models.read_text() + "\n# changed\n")
    changed = [p.key("c") for p in points()]
    assert changed[4:] == keys[4:] and set(changed[:4]).isdisjoint(keys)
    assert set(p.key("c") for p in points(stages=["compile", "iss", "bitstream"])).isdisjoint(keys)


def test_regression_spec_covers_every_example_config_and_board():
    spec = yaml.safe_load((SWEEPS / "regression.yaml").read_text())
    assert set(spec["models"]) == set(EXAMPLES)
    assert set(spec["hardware"]["base"]) == set(available(CONFIGS))
    assert set(spec["boards"]) == set(available_boards())
    assert {"iss", "rtl"} <= set(spec["stages"])
    assert len(load_spec("regression").points) == len(EXAMPLES) * (len(available(CONFIGS))
                                                                    + len(available_boards()))


@pytest.mark.parametrize("name, points", [("sweep-lenet.yaml", 12), ("sweep-fpga.yaml", 8)])
def test_the_readmes_specs_load(name, points):
    assert len(load_spec(ROOT / "docs" / name).points) == points


def test_pareto_front_and_reports():
    def row(name, lut, rate, status="ok"):
        return {"point": name, "model": "m", "board": "b", "config": name, "rows": 4, "cols": 4,
                "status": status, "error": "" if status == "ok" else "compile: no", "lut": lut,
                "dsp": 1, "fmax_mhz": 50.0, "inferences_s": rate, "cycles": 1000,
                "utilization": 0.5, "stages": "compile"}

    rows = [row("a", 100, 10.0), row("b", 200, 5.0), row("c", 200, 20.0), row("d", 300, 20.0),
            row("e", 400, 30.0), row("f", 50, 1.0, "failed")]
    assert [r["point"] for r in pareto_front(rows[:5], "lut", "inferences_s")] == ["a", "c", "e"]
    text = results_csv(rows).decode().splitlines()
    assert text[0].split(",") == list(COLUMNS) and len(text) == 1 + len(rows)
    assert pareto_png(rows).startswith(b"\x89PNG")


def test_sweep_is_the_api_function():
    """hwq.sweep stays the function once the sweep's package is imported (a package
    named `sweep` would replace it as hwq's attribute)."""
    importlib.import_module("hwq.sweeps.engine")
    assert hwq.sweep is sweep


# ---- on a cluster ----

ISSUE_SPEC = """\
models:
  - {model: net.py:Net, input_shape: 1x8x8, calib: digits}
hardware:
  base: default
  vary: {rows: [4, 8, 0], cols: [4, 8]}     # rows 0 is invalid: two failed points
stages: [compile, iss]
"""


@pytest.mark.slow
def test_the_issue_spec_then_the_cache(tmp_path, models, cli, scheduler):
    """The issue's spec as written, on a local cluster `hwq sweep` starts itself; run
    again on another cluster, every point comes from the cache; a larger spec runs
    only its new points."""
    (tmp_path / "net.py").write_bytes(models.read_bytes())
    spec = tmp_path / "spec.yaml"
    spec.write_text(ISSUE_SPEC)
    out = tmp_path / "results"
    code, stdout, err = cli("sweep", spec, "-o", out, "--workers", "2", "-q")
    assert code == 1 and "2 of 6 points failed" in err, err
    assert "6 points, 4 ok (4 run, 0 from the cache)" in stdout
    assert stdout.count("array 0x") == 2           # which failed and why
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and [r["status"] for r in rows].count("ok") == 4
    for r in rows:
        if r["rows"] == "0":
            assert r["status"] == "failed" and "outside 2x2..16x16" in r["error"]
        else:
            assert int(r["cycles"]) > 0 and 0 < float(r["utilization"]) <= 1
            assert r["images"] == "8" and r["cached"] == "false"
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "2 failed" in (out / "summary.md").read_text()
    assert len(list((out / "points").glob("*.json"))) == 4
    assert not list(out.rglob("*.tmp"))

    again = sweep(spec, out, scheduler=scheduler)
    assert (again.ran, again.cached) == (0, 4)
    assert [r["cycles"] for r in again.rows] == [int(r["cycles"]) if r["cycles"] else None
                                                 for r in rows]

    spec.write_text(ISSUE_SPEC.replace("cols: [4, 8]", "cols: [4, 8, 16]"))
    larger = sweep(spec, out, scheduler=scheduler)
    assert (larger.ran, larger.cached, len(larger.rows)) == (2, 4, 9)
    assert [r["cols"] for r in larger.rows if not r["cached"] and r["status"] == "ok"] == [16, 16]


@pytest.mark.slow
def test_failed_points_and_lost_workers(tmp_path, models, scheduler):
    """One model refused, configs invalid, one worker killed while it runs a point (the
    point runs again and finishes) and one point that kills every worker it runs on (a
    failed row after the retry, not kept: a re-run tries it again); every other row is
    written, and each failed one says why."""
    spec = {"models": [model(models, "Net"), model(models, "Gelu"), model(models, "Killer"),
                       model(models, "Poison")],
            "hardware": {"base": "small", "vary": {"rows": [4, 1]}}, "stages": ["compile", "iss"],
            "images": 2}
    r = sweep(spec, tmp_path / "out", scheduler=scheduler)
    rows = {(row["model"], row["rows"]): row for row in r.rows}
    assert len(rows) == 8
    assert rows["Net", 4]["status"] == "ok" and rows["Net", 4]["cycles"] > 0
    assert (tmp_path / "killed-once").exists(), "the Killer never killed its worker"
    assert rows["Killer", 4]["status"] == "ok"
    assert rows["Killer", 4]["cycles"] == rows["Net", 4]["cycles"]
    gelu = rows["Gelu", 4]
    assert gelu["status"] == "failed" and gelu["failed_stage"] == "compile"
    assert "gelu" in gelu["error"].lower() and "\n" not in gelu["error"]
    poison = rows["Poison", 4]
    assert poison["status"] == "failed" and "KilledWorker" in poison["error"]
    for name in ("Net", "Gelu", "Killer", "Poison"):
        assert rows[name, 1]["status"] == "failed"
        assert "array 1x4 is outside 2x2..16x16" in rows[name, 1]["error"]
    kept = {p.stem for p in (tmp_path / "out" / "points").glob("*.json")}
    assert kept == {rows[m, 4]["point"] for m in ("Net", "Gelu", "Killer")}
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "KilledWorker" in summary and "gelu" in summary.lower()


@pytest.mark.slow
def test_a_killed_sweep_restarts_without_redoing_finished_points(tmp_path, models, scheduler):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "models": [model(models, "Slow")], "stages": ["compile"],
        "hardware": {"base": "small", "vary": {"rows": [2, 4, 8, 16], "cols": [4, 8]}}}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    sweep_cmd = subprocess.Popen([sys.executable, "-m", "hwq.cli", "sweep", str(spec), "-o",
                                  str(out), "--scheduler", scheduler, "-q"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while len(list((out / "points").glob("*.json"))) < 2:
            assert sweep_cmd.poll() is None and time.time() < deadline, "no rows before the kill"
            time.sleep(0.05)
    finally:
        sweep_cmd.send_signal(signal.SIGKILL)
        sweep_cmd.wait()
    kept = {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}
    assert 2 <= len(kept) < 8, "the sweep was not killed half way"

    r = sweep(spec, out, scheduler=scheduler)
    assert all(row["status"] == "ok" for row in r.rows)
    assert (r.cached, r.ran) == (len(kept), 8 - len(kept))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished point ran again"
    assert {row["point"] for row in r.rows if row["cached"]} == {p.stem for p in kept}
    assert len(list((out / "points").glob("*.json"))) == 8 and not list(out.rglob("*.tmp"))


def test_cache_reused_and_invalidated(tmp_path, models, scheduler):
    """Finished points, a refused model's too, come from the output directory on a re-run;
    a changed model file or a new hardware value runs only the points it changes."""
    np.save(tmp_path / "rgb.npy",
            np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32))
    spec = {"models": [model(models, "Net"),
                       {"model": "hwq.examples.classics:MobileNetV3Small",
                        "input_shape": "3x64x64", "calib": str(tmp_path / "rgb.npy")}],
            "hardware": {"base": "small", "vary": {"rows": [2, 4]}}}
    out = tmp_path / "out"
    first = sweep(spec, out, scheduler=scheduler)
    assert (first.ran, first.cached) == (4, 0)
    net = [r for r in first.rows if r["model"] == "Net"]
    assert [r["status"] for r in net] == ["ok", "ok"] and all(r["cycles"] > 0 for r in net)
    for r in first.rows:
        if r["model"] == "MobileNetV3Small":    # the zoo's model the hardware cannot run
            assert r["status"] == "failed" and r["failed_stage"] == "compile"
            assert "unsupported op Hardswish" in r["error"] and "\n" not in r["error"]

    again = sweep(spec, out, scheduler=scheduler)
    assert (again.ran, again.cached) == (0, 4) and all(r["cached"] for r in again.rows)
    assert [{**r, "cached": False} for r in again.rows] == first.rows

    models.write_text(models.read_text() + "\n# changed\n")
    changed = sweep(spec, out, scheduler=scheduler)
    assert (changed.ran, changed.cached) == (2, 2)
    assert {r["model"] for r in changed.rows if not r["cached"]} == {"Net"}
    assert {r["point"] for r in changed.rows if not r["cached"]}.isdisjoint(
        r["point"] for r in first.rows)

    spec["hardware"]["vary"]["rows"].append(8)
    larger = sweep(spec, out, scheduler=scheduler)
    assert (larger.ran, larger.cached, len(larger.rows)) == (2, 4, 6)
    assert sorted(r["rows"] for r in larger.rows if not r["cached"]) == [8, 8]
    assert len(list((out / "points").glob("*.json"))) == 8


def test_regression_small_on_two_workers(tmp_path, scheduler):
    """CI's regression: the shipped spec without the RTL, on two images: every example
    on every shipped config and board config, golden == ISS."""
    spec = yaml.safe_load((SWEEPS / "regression.yaml").read_text())
    spec |= {"stages": ["compile", "iss"], "images": 2}
    r = sweep(spec, tmp_path / "out", scheduler=scheduler)
    assert not r.failed, [(row["config"], row["error"]) for row in r.failed]
    assert {row["config"] for row in r.rows} == set(available(CONFIGS)) | set(available_boards())
    assert all(row["images"] == 2 and row["cycles"] > 0 for row in r.rows)


@pytest.mark.slow
def test_rtl_and_bitstream_stages(tmp_path, models, scheduler):
    """A point through every stage on the iCEBreaker: the RTL bit-exact and in the ISS's
    cycles; the bitstream's LUTs, DSPs, BRAMs and Fmax; inferences/s at the lower of
    Fmax and the board's clock."""
    spec = {"models": [model(models, "Net")], "boards": ["icebreaker"],
            "stages": ["compile", "iss", "rtl", "bitstream"], "images": 2}
    r = sweep(spec, tmp_path / "out", scheduler=scheduler)
    row = r.rows[0]
    assert row["status"] == "ok", row["error"]
    assert row["rtl_cycles"] == row["cycles"] and row["seed"] == 1
    assert row["lut"] > 4000 and row["dsp"] >= 4 and row["bram"] > 0 and row["ff"] is None
    assert row["clock_mhz"] == 24.0 and row["fmax_mhz"] > 0
    assert row["inferences_s"] == pytest.approx(
        min(row["fmax_mhz"], row["clock_mhz"]) * 1e6 / row["cycles"])
    assert json.loads(next((tmp_path / "out" / "points").glob("*.json")).read_text())["lut"] == row["lut"]


def test_a_points_config_has_every_hardware_field():
    """Every hardware field is a column, those a config leaves at the value of before
    they existed (HwConfig.to_dict drops them) included."""
    from hwq.arch.config import HwConfig
    from hwq.sweeps.point import HARDWARE_FIELDS
    from hwq.sweeps.spec import config_fields
    fields = config_fields(HwConfig(), "x", {"rows": 4})
    assert set(HARDWARE_FIELDS) <= set(fields) and fields["dram_reads"] == 1
    assert HwConfig(**fields).rows == 4
