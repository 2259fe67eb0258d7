"""The layers point one way (import-linter's contracts in pyproject.toml), and a cached
simulator build is keyed by every source file its generator reads."""
import shutil
import subprocess
import sys
from pathlib import Path

from hwq.cache import PACKAGE_ROOT, source_digest, source_files

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_the_rtl_generator_reads_only_arch_and_rtl():
    files = {str(p.relative_to(PACKAGE_ROOT)) for p in source_files("hwq.rtl.export")}
    assert {"arch/timing.py", "arch/isa.py", "arch/requant.py", "arch/config.py",
            "rtl/top.py", "rtl/post.py"} <= files
    assert not {f for f in files if f.split("/")[0] in ("sim", "compiler", "board")}


def test_build_key_follows_every_file_the_generator_reads(tmp_path):
    """A timing constant changed in a copy of the package changes the RTL's source digest;
    a file the generator does not read leaves it as it is."""
    copy = tmp_path / "hwq"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest("hwq.rtl.export", copy)
    assert before == source_digest("hwq.rtl.export")

    flow = copy / "flow.py"
    flow.write_text(flow.read_text() + "\n# a comment\n")
    assert source_digest("hwq.rtl.export", copy) == before

    timing = copy / "arch" / "timing.py"
    text = timing.read_text()
    assert "CHECK_CYCLES = 8" in text
    timing.write_text(text.replace("CHECK_CYCLES = 8", "CHECK_CYCLES = 9"))
    assert source_digest("hwq.rtl.export", copy) != before


def test_hardware_configs_are_deltas_of_one_default(tmp_path, monkeypatch):
    """A config lists only what differs from its base (the default, a shipped config, or a
    file beside it); the shipped ones resolve to the fields they had when written out."""
    import dataclasses

    from hwq.arch.config import HwConfig, load_hw_config
    assert load_hw_config("default") == HwConfig()
    tall = load_hw_config("tall")
    assert dataclasses.replace(load_hw_config("small"), name="tall", rows=8) == tall
    (tmp_path / "a.yaml").write_text("hardware:\n  base: small\n  obuf_depth: 2048\n")
    (tmp_path / "b.yaml").write_text("hardware:\n  base: a.yaml\n  cols: 8\n")
    monkeypatch.chdir("/")
    b = load_hw_config(tmp_path / "b.yaml")
    assert (b.name, b.rows, b.cols, b.obuf_depth) == ("b", 4, 8, 2048)


def test_a_field_added_at_its_old_value_keeps_the_fingerprint():
    """dram_reads came after configs were in use: at 1 (the port they were built with) it
    is left out of the dict the fingerprint hashes, at any other value it is in it; out
    of its range it is refused."""
    import dataclasses

    import pytest

    from hwq.arch.config import HwConfig
    from hwq.errors import HwqError
    cfg = HwConfig()
    assert "dram_reads" not in cfg.to_dict() and HwConfig.from_dict(cfg.to_dict()) == cfg
    queued = dataclasses.replace(cfg, dram_reads=8)
    assert queued.to_dict()["dram_reads"] == 8 and queued.fingerprint != cfg.fingerprint
    assert HwConfig.from_dict(queued.to_dict()) == queued
    with pytest.raises(HwqError, match="dram_reads=0 must be 1..64"):
        HwConfig(dram_reads=0)


def test_build_key_follows_the_cocotb_library(monkeypatch):
    """The simulator links cocotb's VPI library by path: a build made in another
    environment (another venv, the library elsewhere) is a different build."""
    import cocotb_tools.config

    from hwq.arch.config import load_hw_config
    from hwq.sim import rtl_sim
    cfg = load_hw_config("small")
    keys = lambda: (rtl_sim._source_key(cfg, "verilator", rtl_sim._recipe("verilator")),  # noqa: E731
                    rtl_sim._source_key(cfg, "icarus", rtl_sim._recipe("icarus")))
    here = keys()
    monkeypatch.setattr(cocotb_tools.config, "libs_dir", Path("/elsewhere/cocotb/libs"))
    elsewhere = keys()
    assert here[0] != elsewhere[0] and here[1] != elsewhere[1]
