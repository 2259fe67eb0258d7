"""`hwq run` without a board: the host driver and the CLI against a board that answers
the host protocol (hwq/arch/host_protocol.py) from the ISS. The SoC's RTL answers the same
driver in tests/test_board.py::test_host_driver_on_soc_rtl."""
import numpy as np
import pytest

import hwq
from conftest import LENET
from hwq.arch import host_protocol as hp
from hwq.board.spec import BOARDS
from hwq.cli import main
from hwq.arch import isa
from hwq.sim.iss import Machine


class IssBoard:
    """A Transport whose far end is a board running the ISS: it parses the host's
    commands and answers them as the SoC does."""

    def __init__(self, cfg, fingerprint_of=None):
        self.cfg = cfg
        self.ident = hp.ident_bytes(fingerprint_of or cfg)
        self.m = Machine(cfg, b"")
        self.inbox = b""
        self.outbox = b""
        self.last = (0, 0, 0, 0)          # status, pc, cycles, macs
        self.runs = 0

    def write(self, data: bytes) -> None:
        self.inbox += bytes(data)
        while self.inbox:
            cmd = self.inbox[:1]
            need = 1 + hp.ARG_BYTES.get(cmd, 0)
            if len(self.inbox) < need:
                return
            args = self.inbox[1:need]
            if cmd == hp.CMD_BLOCK:
                need = hp.BLOCK_FRAME
                if len(self.inbox) < need:
                    return
                parsed = hp.parse_block(self.inbox[:need], self.cfg.bus_bytes)
                if parsed is None:
                    self.outbox += hp.NAK
                else:
                    addr, blob = parsed
                    at = addr * self.cfg.bus_bytes
                    self.m.dram[at:at + len(blob)] = np.frombuffer(blob, np.uint8)
                    self.outbox += hp.ACK
            elif cmd == hp.CMD_READ:
                addr, n = int.from_bytes(args[:4], "little"), int.from_bytes(args[4:], "little")
                self.outbox += self.m.read_dram(addr, n * self.cfg.bus_bytes)
            elif cmd == hp.CMD_START:
                r = self.m.run(int.from_bytes(args, "little"))
                self.last = (isa.STATUS[r.status], r.pc, r.cycles, r.array_macs)
                self.runs += 1
                self.outbox += hp.ACK
            elif cmd == hp.CMD_STATUS:
                status, pc, cycles, macs = self.last
                self.outbox += (bytes([1, status]) + pc.to_bytes(4, "little")
                                + cycles.to_bytes(8, "little") + macs.to_bytes(8, "little"))
            elif cmd == hp.CMD_IDENT:
                self.outbox += self.ident
            else:
                self.outbox += hp.NAK
            self.inbox = self.inbox[need:]

    def read(self, n: int) -> bytes:
        assert len(self.outbox) >= n, "the host waits for bytes the board never sends"
        out, self.outbox = self.outbox[:n], self.outbox[n:]
        return out


@pytest.fixture(scope="module")
def board_package(tmp_path_factory):
    """The LeNet compiled for the icebreaker's hardware config (no bitstream: the board
    file names the config; the ISS plays the board)."""
    out = tmp_path_factory.mktemp("ice") / "lenet.hwq"
    assert main(["compile", LENET, "--input-shape", "1x8x8", "--calib", "digits", "-q",
                 "--ref-images", "3", "--hw", str(BOARDS / "icebreaker.yaml"), "-o", str(out)]) == 0
    return out


def _plug(monkeypatch, board):
    monkeypatch.setattr("hwq.board.host.SerialTransport", lambda port, baud: board)


def test_run_reference_inputs(cli, board_package, monkeypatch):
    pkg = hwq.load(board_package)
    board = IssBoard(pkg.cfg)
    _plug(monkeypatch, board)
    code, out, err = cli("run", board_package, "--port", "fake", "--board", "icebreaker", "-q")
    assert code == 0, err
    assert "icebreaker: 3/3 inputs bit-exact with the golden model" in out and board.runs == 3


def _run_users_inputs(cli, path, tmp_path, n: int, seed: int) -> str:
    """`hwq run` of n random inputs of the user's on the icebreaker (plugged in): its
    outputs are the golden model's; what it prints."""
    x = np.random.default_rng(seed).uniform(0, 1, size=(n, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli("run", path, "--port", "fake", "--board", "icebreaker",
                         "--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npy", "-q")
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "y.npy"), hwq.load(path).predict(x))
    return out


def test_run_inputs_of_the_users(cli, board_package, monkeypatch, tmp_path):
    board = IssBoard(hwq.load(board_package).cfg)
    _plug(monkeypatch, board)
    out = _run_users_inputs(cli, board_package, tmp_path, 4, seed=1)
    assert "4/4 inputs bit-exact" in out and board.runs == 4


def test_run_refuses_a_board_of_other_hardware(cli, board_package, monkeypatch):
    from hwq.arch.config import load_hw_config
    _plug(monkeypatch, IssBoard(hwq.load(board_package).cfg, fingerprint_of=load_hw_config("small")))
    code, _, err = cli("run", board_package, "--port", "fake", "--board", "icebreaker", "-q")
    assert code == 2 and "the board's bitstream is hardware" in err and err.count("\n") == 1


def test_run_a_batched_package(cli, monkeypatch, tmp_path):
    """A package for 2 inputs a run: 3 reference inputs take two runs, the second's batch
    filled up with a zero image; 5 of the user's take three."""
    out = tmp_path / "batched.hwq"
    assert main(["compile", LENET, "--input-shape", "1x8x8", "--calib", "digits", "-q",
                 "--ref-images", "3", "--batch", "2", "--hw", str(BOARDS / "icebreaker.yaml"),
                 "-o", str(out)]) == 0
    pkg = hwq.load(out)
    board = IssBoard(pkg.cfg)
    _plug(monkeypatch, board)
    code, stdout, err = cli("run", out, "--port", "fake", "--board", "icebreaker", "-q")
    assert code == 0, err
    assert "icebreaker: 3/3 inputs bit-exact" in stdout and board.runs == 2
    stdout = _run_users_inputs(cli, out, tmp_path, 5, seed=2)
    assert "5/5 inputs bit-exact" in stdout and board.runs == 2 + 3
