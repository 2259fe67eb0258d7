"""The host link's block writes: the SoC's RTL (hwq/rtl/soc.py) in Amaranth's simulator
answering checked and corrupted block frames, the driver (hwq/board/host.py) sending a
NAK'd block again and refusing to go on after RETRIES, the board files' baud rates, and
the load time the protocol's byte count gives. The driver against the SoC's RTL through
a corrupted simulated UART: tests/test_board.py::test_host_driver_on_soc_rtl."""
import dataclasses
from functools import partial

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwq.arch import host_protocol as hp
from hwq.arch.config import HwConfig
from hwq.arch.sdram import MT48LC16M16A2, SdramTiming
from hwq.board.host import RETRIES, Link
from hwq.board.spec import BOARDS, load_board
from hwq.errors import HwqError

DIVISOR = 4


def _soc_session(cfg: HwConfig, requests: list[tuple[bytes, int]], sdram=None) -> list[bytes]:
    """Send each request's bytes to the SoC over its UART and collect as many answer
    bytes as it says; `sdram`: the SoC's DRAM in that SDRAM (the chip's model on its
    pins, which fails the run at any timing it forbids)."""
    from hwq.rtl.soc import Soc
    from hwq.sim.sdram import SdramModel, serve_amaranth
    dut = Soc(cfg, DIVISOR, sdram)
    answers: list[bytes] = []
    got = bytearray()

    async def receive(ctx):
        while True:
            while ctx.get(dut.uart_tx):
                await ctx.tick()
            await ctx.tick().repeat(DIVISOR + DIVISOR // 2)
            byte = 0
            for k in range(8):
                byte |= ctx.get(dut.uart_tx) << k
                await ctx.tick().repeat(DIVISOR)
            got.append(byte)

    async def send(ctx):
        ctx.set(dut.uart_rx, 1)
        await ctx.tick().repeat(4)
        for data, n_answer in requests:
            for byte in data:
                for level in (0, *((byte >> k) & 1 for k in range(8)), 1):
                    ctx.set(dut.uart_rx, level)
                    await ctx.tick().repeat(DIVISOR)
            for _ in range(20 * DIVISOR * (n_answer + 2) + 4 * hp.BLOCK_BYTES):
                if len(got) >= n_answer:
                    break
                await ctx.tick()
            assert len(got) == n_answer, (data[:1], bytes(got))
            answers.append(bytes(got))
            got.clear()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    if sdram is not None:
        model = SdramModel(sdram)
        sim.add_testbench(partial(serve_amaranth, pins=dut.sdram, model=model), background=True)
    sim.add_testbench(receive, background=True)
    sim.add_testbench(send)
    sim.run()
    if sdram is not None:
        model.finish()
    return answers


def _read(word: int, n: int) -> bytes:
    return hp.CMD_READ + word.to_bytes(4, "little") + n.to_bytes(4, "little")


# an SDRAM whose 100 us power-up takes 2 (the SoC's first commands wait for it)
QUICK_SDRAM = SdramTiming(dataclasses.replace(MT48LC16M16A2, power_up_us=2), 100, 2)


@pytest.mark.slow
@pytest.mark.parametrize("sdram", [None, QUICK_SDRAM], ids=["block_ram", "sdram"])
def test_soc_writes_only_checked_blocks(sdram):
    """A block is written from its word address, n words of it; a block whose checksum
    fails (one bit flipped on the way, or its address) is answered NAK and writes
    nothing; an unknown command is answered NAK. In block RAM, and in an SDRAM (whose
    controller holds the block's words back while it is busy)."""
    cfg = load_board("icebreaker").cfg                 # 16-bit words: 128 to a block
    if sdram is not None:
        cfg = dataclasses.replace(cfg, dram_reads=4)
    bw = hp.block_words(cfg.bus_bytes)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, hp.BLOCK_BYTES, dtype=np.uint8).tobytes()
    b = rng.integers(0, 256, hp.BLOCK_BYTES, dtype=np.uint8).tobytes()
    bad_data = bytearray(hp.block_frame(10, b, cfg.bus_bytes))
    bad_data[100] ^= 0x04
    bad_addr = bytearray(hp.block_frame(10, b, cfg.bus_bytes))
    bad_addr[1] ^= 0x01
    short = hp.block_frame(10 + bw, b[:6], cfg.bus_bytes)       # 3 words of a block
    ans = _soc_session(cfg, [
        (hp.block_frame(10, a, cfg.bus_bytes), 1),
        (bytes(bad_data), 1), (bytes(bad_addr), 1), (short, 1),
        (_read(10, bw + 4), (bw + 4) * cfg.bus_bytes),
        (b"x", 1)], sdram)
    assert ans[:4] == [hp.ACK, hp.NAK, hp.NAK, hp.ACK]
    assert ans[4] == a + b[:6] + bytes(2)             # word 13 after the block: never written
    assert ans[5] == hp.NAK


class LoopBoard:
    """A Transport whose far end keeps DRAM as the SoC does: block frames checked and
    written, reads answered; `flips` corrupts the block frames with those ordinals on
    the way (one data bit), `bad_word` every frame to that word."""

    def __init__(self, cfg: HwConfig, flips=(), bad_word=None):
        self.cfg, self.flips, self.bad_word = cfg, list(flips), bad_word
        self.dram = bytearray(cfg.dram_words * cfg.bus_bytes)
        self.frames = 0
        self.outbox = b""
        self.started = False

    def write(self, data: bytes) -> None:
        data = bytearray(data)
        if data[:1] == hp.CMD_BLOCK:
            if self.frames in self.flips or int.from_bytes(data[1:5], "little") == self.bad_word:
                data[40] ^= 0x80
            self.frames += 1
            parsed = hp.parse_block(bytes(data), self.cfg.bus_bytes)
            if parsed is None:
                self.outbox += hp.NAK
                return
            word, blob = parsed
            at = word * self.cfg.bus_bytes
            self.dram[at:at + len(blob)] = blob
            self.outbox += hp.ACK
        elif data[:1] == hp.CMD_START:
            self.started = True
            self.outbox += hp.ACK

    def read(self, n: int) -> bytes:
        out, self.outbox = self.outbox[:n], self.outbox[n:]
        assert len(out) == n, "the host waits for bytes the board never sends"
        return out


def test_driver_sends_a_nakd_block_again():
    cfg = load_board("ulx3s-85f").cfg
    blob = np.random.default_rng(1).integers(0, 256, 20 * hp.BLOCK_BYTES + 40,
                                             dtype=np.uint8).tobytes()
    board = LoopBoard(cfg, flips=(0, 3, 4, 9, 10))      # 9 and 10: block 8 twice
    link = Link(board, cfg.bus_bytes)
    link.write(5, blob)
    assert board.dram[5 * 8:5 * 8 + len(blob)] == blob
    assert link.retries == 5 and board.frames == 21 + 5
    assert link.sent == board.frames * hp.BLOCK_FRAME and link.received == board.frames


def test_driver_gives_up_and_runs_nothing():
    cfg = load_board("ulx3s-85f").cfg
    board = LoopBoard(cfg, bad_word=64)                 # block 2, every time
    link = Link(board, cfg.bus_bytes)
    with pytest.raises(HwqError, match=rf"block at DRAM word 64 failed its checksum "
                                       rf"{RETRIES + 1} times; check the cable and the baud rate"):
        link.write(0, bytes(4 * hp.BLOCK_BYTES))
    assert not board.started


def test_block_frame_checksum():
    frame = hp.block_frame(7, bytes(range(16)), 8)
    assert len(frame) == hp.BLOCK_FRAME and hp.crc16(frame) == 0
    assert hp.crc16(b"123456789") == 0x29B1              # CRC-16/IBM-3740's check value
    assert hp.parse_block(frame, 8) == (7, bytes(range(16)))


def test_board_baud_is_a_rate_the_clock_makes(tmp_path):
    import yaml
    from hwq.rtl.uart import MAX_BAUD_ERROR, baud_error, uart_divisor
    ulx = load_board("ulx3s-85f")
    assert ulx.baud == 3_000_000 and ulx.uart_divisor(ulx.clock_hz) == 33
    assert baud_error(ulx.clock_hz, ulx.baud) < 0.011
    for board in ("icebreaker", "orangecrab-25f"):
        b = load_board(board)
        assert baud_error(b.clock_hz, b.baud) <= MAX_BAUD_ERROR
    assert uart_divisor(25e6, 2_900_000) == 9
    data = yaml.safe_load((BOARDS / "ulx3s-85f.yaml").read_text())
    data["board"].update(clock_mhz=25, baud=2_900_000)          # 25 MHz / 9: 4.2% off
    f = tmp_path / "b.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(HwqError, match=r"board.baud 2900000 is not a rate the 25 MHz clock "
                                       r"makes within 2% \(it divides to 2777778 baud\)"):
        load_board(f)


def _board_file(tmp_path, memory=None, dram_words=512):
    import yaml
    data = yaml.safe_load((BOARDS / "ulx3s-85f.yaml").read_text())
    data["hardware"]["dram_words"] = dram_words
    if memory is None:
        data["board"].pop("memory")
    else:
        data["board"]["memory"] = memory
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def test_board_memory(tmp_path):
    assert load_board("ulx3s-85f").memory.to_dict() == {"kind": "block_ram", "bytes": 65536}
    assert load_board("icebreaker").memory.kind == "spram"
    assert load_board(_board_file(tmp_path)).memory.bytes == 512 * 8   # absent: the config's
    with pytest.raises(HwqError, match=r"board.memory.bytes 8192 is not the hardware's DRAM "
                                       r"\(dram_words x bus_bytes = 4096\)"):
        load_board(_board_file(tmp_path, {"kind": "block_ram", "bytes": 8192}))
    with pytest.raises(HwqError, match=r"board.memory.kind: 'sram' is not one of block_ram, spram"):
        load_board(_board_file(tmp_path, {"kind": "sram", "bytes": 4096}))


def test_run_refuses_a_package_the_boards_memory_does_not_hold(cli, lenet_package, tmp_path):
    """`hwq run` before it opens the port, and Package.run for a package that records a
    board's memory: one line with both sizes."""
    import hashlib

    import yaml

    import hwq
    from conftest import copy_package
    from hwq.package import DIGEST, MANIFEST
    need = len(hwq.load(lenet_package).image())
    assert need > 4096
    tiny = _board_file(tmp_path, {"kind": "block_ram", "bytes": 4096})
    code, _, err = cli("run", lenet_package, "--board", tiny, "--port", "/dev/null")
    assert code == 2 and err.count("\n") == 1, err
    assert f"its DRAM image is {need} bytes and tiny's memory (block RAM) holds 4096; " \
           "compile the model for a board with more memory" in err
    pkg_dir = copy_package(lenet_package, tmp_path / "lenet.hwq")
    manifest = yaml.safe_load((pkg_dir / MANIFEST).read_text())
    manifest["board"] = {"name": "tiny", "memory": {"kind": "block_ram", "bytes": 4096}}
    text = yaml.safe_dump(manifest, sort_keys=False).encode()
    (pkg_dir / MANIFEST).write_bytes(text)
    (pkg_dir / DIGEST).write_text(hashlib.sha256(text).hexdigest() + "\n")
    pkg = hwq.load(pkg_dir)
    with pytest.raises(HwqError, match=rf"its DRAM image is {need} bytes and tiny's memory "
                                       r"\(block RAM\) holds 4096"):
        pkg.run(pkg.reference()["input_int8"][:1], "iss")
