"""The host link's load time: the bytes the host driver (hwq/board/host.py) sends and
receives to load a package's DRAM image, and the time they take on the wire at a board's
baud rate (8N1: 10 bits a byte; the SoC answers each block as it arrives, and the driver
streams WINDOW blocks ahead of their answers, so the wire, not the round trips, sets the
time).

    .venv/bin/python bench/host_link.py [--board ulx3s-85f] [--hw default]

The package is the MLPerf Tiny ResNet-8 (hwq.examples.mlperf_tiny:ResNet8, input 3x32x32,
16 random normal calibration inputs) compiled for `--hw` (default: the `default` config,
the ULX3S's 8x8 array and 8-byte words with 512 KiB of DRAM: the 64 KiB of block RAM the
ULX3S gives hwq today do not hold it). The driver loads it, unchanged, into a board
model that checks every block frame as the SoC does; the byte count is the protocol's.
Printed beside it: the same load at 115,200 baud (the other boards' rate), and the
target (under 5 s).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import hwq
from hwq.arch import host_protocol as hp
from hwq.board.host import Link, load_package
from hwq.board.spec import load_board
from hwq.examples.mlperf_tiny import ResNet8

TARGET_S = 5.0
SLOW_BAUD = 115_200


class CheckingBoard:
    """The far end of the link as the SoC behaves: ident, block frames checked (ACK or
    NAK) and kept in a DRAM image."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.dram = bytearray(cfg.dram_words * cfg.bus_bytes)
        self.outbox = b""

    def write(self, data: bytes) -> None:
        if data[:1] == hp.CMD_IDENT:
            self.outbox += hp.ident_bytes(self.cfg)
        elif data[:1] == hp.CMD_BLOCK:
            parsed = hp.parse_block(data, self.cfg.bus_bytes)
            if parsed is None:
                self.outbox += hp.NAK
                return
            word, blob = parsed
            self.dram[word * self.cfg.bus_bytes:word * self.cfg.bus_bytes + len(blob)] = blob
            self.outbox += hp.ACK

    def read(self, n: int) -> bytes:
        out, self.outbox = self.outbox[:n], self.outbox[n:]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="ulx3s-85f", help="the board whose baud rate counts")
    ap.add_argument("--hw", default="default", help="hardware config ResNet-8 is compiled for")
    a = ap.parse_args()
    board = load_board(a.board)
    calib = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        pkg = hwq.compile(ResNet8.pretrained(), (3, 32, 32), calib, hw=a.hw,
                          out=Path(tmp) / "resnet8.hwq", n_ref=1)
        compile_s = time.monotonic() - t0
        if pkg.cfg.bus_bytes != board.cfg.bus_bytes:
            raise SystemExit(f"--hw {a.hw} has {pkg.cfg.bus_bytes}-byte words, the board "
                             f"{board.cfg.bus_bytes}-byte: the byte count would not be the board's")
        board_model = CheckingBoard(pkg.cfg)
        link = Link(board_model, pkg.cfg.bus_bytes)
        load_package(pkg, link)
        image = pkg.image()
        assert board_model.dram[:len(image)] == image, "the board model's DRAM differs"
    nbytes = link.sent                   # the answers come back on the other wire meanwhile
    blocks = -(-len(image) // hp.BLOCK_BYTES)
    fast = hp.link_seconds(nbytes, board.baud)
    slow = hp.link_seconds(nbytes, SLOW_BAUD)
    print(f"ResNet-8 package (hwq.examples.mlperf_tiny:ResNet8, input 3x32x32, hw {a.hw}; "
          f"compiled in {compile_s:.1f} s): DRAM image {len(image)} bytes "
          f"({len(image) / 1024:.1f} KiB) in {blocks} blocks of {hp.BLOCK_BYTES}")
    print(f"  protocol: {nbytes} bytes to the board ({nbytes / len(image):.3f} x the image: "
          f"{hp.BLOCK_FRAME} per block frame), {link.received} back (ident, one answer per "
          f"block)")
    print(f"  loading the ResNet-8 package (hwq.examples.mlperf_tiny:ResNet8, input 3x32x32) "
          f"takes {fast:.2f} s at {board.name}'s {board.baud} baud (from the protocol's byte "
          f"count); target < {TARGET_S:g} s: {'met' if fast < TARGET_S else 'MISSED'}")
    print(f"  at {SLOW_BAUD} baud it takes {slow:.1f} s")


if __name__ == "__main__":
    main()
