"""The host driver: run a package on a board through the SoC's UART protocol
(hwq/rtl/soc.py documents it).

The driver talks to a `Transport` (write bytes, read exactly n bytes): a serial port
(`SerialTransport`, pyserial) for a real board, or the simulated UART of the system test
(hwq/board/host_tb.py), so the same code runs against both.

Memory is written in checked blocks ('B' frames, hwq/arch/host_protocol.py): the driver
streams up to WINDOW frames before it reads their answers, and sends again every block
the SoC answers with NAK (its checksum failed on the way; the SoC wrote nothing of it),
up to RETRIES times; a block that still fails ends the load with an error, so nothing
runs on memory that did not arrive intact.

`run_package` checks the bitstream's identity (protocol version and hardware-config
fingerprint) against the package, loads the DRAM image (data, then program), and for
each of the package's reference inputs: writes the input slot, starts the accelerator,
polls its status until done, reads the output tensor back and compares it with the
package's golden output.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hwq.errors import HwqError
from hwq.package import Package
from hwq.sim.runner import batches
from hwq.arch.host_protocol import (ACK, BLOCK_BYTES, CMD_IDENT, CMD_READ, CMD_START,
                                    CMD_STATUS, IDENT_BYTES, IDENT_MAGIC, NAK, STATUS_BYTES,
                                    block_frame, ident_bytes)

CHUNK_WORDS = 1024          # words per 'R' command
WINDOW = 8                  # block frames sent before their answers are read
RETRIES = 3                 # sends of a block after the first


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def read(self, n: int) -> bytes: ...      # exactly n bytes, or HwqError on timeout


class SerialTransport:
    def __init__(self, port: str, baud: int, timeout: float = 2.0):
        try:
            import serial
        except ImportError:
            raise HwqError("pyserial is not installed (pip install pyserial)") from None
        try:
            self.ser = serial.Serial(port, baud, timeout=timeout)
        except (serial.SerialException, OSError) as e:
            raise HwqError(f"cannot open serial port {port}: {e}") from None
        self.port = port

    def write(self, data: bytes) -> None:
        self.ser.write(data)

    def read(self, n: int) -> bytes:
        data = self.ser.read(n)
        if len(data) < n:
            raise HwqError(f"the board on {self.port} did not answer ({len(data)}/{n} bytes); "
                           "is the hwq bitstream loaded and the baud rate right?")
        return data


@dataclass
class Status:
    done: bool
    busy: bool
    status: int
    pc: int
    cycles: int
    macs: int


class Link:
    """The SoC's commands, for DRAM words of `bus_bytes` bytes."""

    """The SoC's commands, for DRAM words of `bus_bytes` bytes. It counts the bytes each
    way (`sent`, `received`: the protocol's cost of what it did) and the blocks it sent
    again (`retries`)."""

    def __init__(self, transport: Transport, bus_bytes: int):
        self.t = transport
        self.bus = bus_bytes
        self.sent = self.received = self.retries = 0

    def _send(self, data: bytes) -> None:
        self.sent += len(data)
        self.t.write(data)

    def _recv(self, n: int) -> bytes:
        data = self.t.read(n)
        self.received += len(data)
        return data

    def _ack(self, what: str) -> None:
        got = self._recv(1)
        if got != ACK:
            raise HwqError(f"the board answered {got!r} to {what}, not {ACK!r}")

    def ident(self) -> bytes:
        self._send(CMD_IDENT)
        return self._recv(IDENT_BYTES)

    def write(self, word: int, blob: bytes) -> None:
        """Write `blob` from DRAM word `word` in checked blocks; a partial last word is
        zero-filled (hwq's regions are whole words)."""
        blob = bytes(blob) + bytes(-len(blob) % self.bus)
        todo = deque((word + k // self.bus, blob[k:k + BLOCK_BYTES], 0)
                     for k in range(0, len(blob), BLOCK_BYTES))
        flight: deque = deque()
        while todo or flight:
            while todo and len(flight) < WINDOW:
                at, part, tries = todo.popleft()
                self._send(block_frame(at, part, self.bus))
                flight.append((at, part, tries))
            at, part, tries = flight.popleft()
            got = self._recv(1)
            if got == ACK:
                continue
            if got != NAK:
                raise HwqError(f"the board answered {got!r} to the block write at word {at}, "
                               "not ACK or NAK: the link lost step; reset the board and load again")
            if tries == RETRIES:
                raise HwqError(f"the block at DRAM word {at} failed its checksum {tries + 1} "
                               "times; check the cable and the baud rate (--baud)")
            self.retries += 1
            todo.appendleft((at, part, tries + 1))

    def read(self, word: int, nbytes: int) -> bytes:
        nwords = -(-nbytes // self.bus)
        out = bytearray()
        for k in range(0, nwords, CHUNK_WORDS):
            n = min(CHUNK_WORDS, nwords - k)
            self._send(CMD_READ + (word + k).to_bytes(4, "little") + n.to_bytes(4, "little"))
            out += self._recv(n * self.bus)
        return bytes(out[:nbytes])

    def start(self, pc: int) -> None:
        self._send(CMD_START + pc.to_bytes(4, "little"))
        self._ack("start")

    def status(self) -> Status:
        self._send(CMD_STATUS)
        r = self._recv(STATUS_BYTES)
        return Status(done=bool(r[0] & 1), busy=bool(r[0] & 2), status=r[1],
                      pc=int.from_bytes(r[2:6], "little"),
                      cycles=int.from_bytes(r[6:14], "little"),
                      macs=int.from_bytes(r[14:22], "little"))

    def run(self, pc: int, timeout: float) -> Status:
        self.start(pc)
        t0 = time.monotonic()
        while True:
            st = self.status()
            if st.done and not st.busy:
                return st
            if time.monotonic() - t0 > timeout:
                raise HwqError(f"the accelerator did not finish within {timeout:g} s "
                               f"(pc {st.pc}, {st.cycles} cycles)")


def check_ident(pkg: Package, got: bytes) -> None:
    """Refuse a bitstream that is not hwq's, or not the hardware the package targets."""
    want = ident_bytes(pkg.cfg)
    if got[:len(IDENT_MAGIC)] != IDENT_MAGIC:
        raise HwqError(f"the board did not identify as an hwq SoC (answered {got[:8]!r}); "
                       "load the package's bitstream first")
    if got[:4] != want[:4]:
        raise HwqError(f"the board speaks hwq protocol v{got[3]}, this hwq v{want[3]}; "
                       "rebuild the bitstream with this hwq")
    if got != want:
        raise HwqError(f"the board's bitstream is hardware {got[4:12].hex()}, the package "
                       f"{pkg.path} was compiled for {pkg.cfg.fingerprint} "
                       f"({pkg.cfg.name}); load the package's bitstream")


@dataclass
class HostRun:
    outputs: np.ndarray          # (N, C, H, W) int8, read back from the board
    cycles: list[int]            # per run of the program (a batch of inputs)
    mismatches: list[int]        # indices of the images whose output differs from golden


def load_package(pkg: Package, link: Link, progress: bool = False) -> None:
    """Check that the board runs the package's hardware, then write its DRAM image (data,
    then program)."""
    check_ident(pkg, link.ident())
    if progress:
        print(f"  loading {len(pkg.image())} bytes of DRAM image", file=sys.stderr, flush=True)
    link.write(0, pkg.image())


def run_inputs(pkg: Package, link: Link, x_int8: np.ndarray, progress: bool = False,
               timeout: float = 10.0, golden: np.ndarray | None = None) -> HostRun:
    """Run int8 inputs (N, C, H, W) on a board loaded with the package, a batch of the
    package's `batch` after the other; with `golden`, the outputs each input must give."""
    tensors, shapes = pkg.tensors(), pkg.shapes()
    inp, out = tensors["input"], tensors[pkg.output_name]
    outputs, cycles, bad = [], [], []
    i = 0
    for run, x in enumerate(batches(x_int8, pkg.batch)):
        link.write(inp.region.word, inp.pack(x))
        st = link.run(pkg.start_pc, timeout)
        if st.status != 0:
            which = f"input {i}" if pkg.batch == 1 else f"inputs {i}..{i + len(x) - 1}"
            raise HwqError(f"{which}: the accelerator stopped with status {st.status} at pc {st.pc}")
        y = out.unpack(link.read(out.region.word, out.nbytes), shapes[pkg.output_name])[:len(x)]
        outputs.append(y)
        cycles.append(st.cycles)
        if golden is not None:
            bad += [i + k for k in range(len(x)) if not np.array_equal(y[k], golden[i + k])]
        i += len(x)
        if progress:
            print(f"\r  input {i}/{len(x_int8)}: {st.cycles} cycles"
                  f"{'' if golden is None else ', MISMATCH' if bad else ', ok'}",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return HostRun(np.concatenate(outputs), cycles, bad)


def run_package(pkg: Package, link: Link, progress: bool = False,
                timeout: float = 10.0, load: bool = True) -> HostRun:
    """Load the package and run its reference inputs, each checked against its golden
    output; `load` False: the board holds its DRAM image already (only its hardware is
    checked)."""
    if load:
        load_package(pkg, link, progress)
    else:
        check_ident(pkg, link.ident())
    return run_inputs(pkg, link, pkg.reference()["input_int8"], progress, timeout,
                      golden=pkg.golden()[pkg.output_name])
