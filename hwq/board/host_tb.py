"""cocotb testbench of the host link: the SoC's RTL (hwq/rtl/soc.py) with the host
driver (hwq/board/host.py) talking to it through a simulated UART.

The driver runs unchanged in a thread, on a `QueueTransport`; this coroutine side turns
the bytes it writes into 8N1 frames on `uart_rx`, and the frames the SoC sends on
`uart_tx` back into bytes for it. Started by hwq/board/host_sim.py, which passes the package,
the UART divisor and the block frames to corrupt on the wire (`corrupt`: their ordinals
among the driver's 'B' frames; one data bit flipped in each) in the JSON file named by
$HWQ_SOC_SPEC and reads the results from the file the spec names.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer

CLOCK_PERIOD_NS = 10
REPLY_TIMEOUT_S = 120      # wall clock: the simulated SoC answers far slower than a board


class QueueTransport:
    """hwq.host.Transport over two queues: `to_dev` carries writes (None ends the run),
    `from_dev` the bytes the SoC sent."""

    def __init__(self):
        self.to_dev: queue.Queue = queue.Queue()
        self.from_dev: queue.Queue = queue.Queue()
        self.pending = b""

    def write(self, data: bytes) -> None:
        self.to_dev.put(bytes(data))

    def read(self, n: int) -> bytes:
        from hwq.errors import HwqError
        while len(self.pending) < n:
            try:
                self.pending += self.from_dev.get(timeout=REPLY_TIMEOUT_S)
            except queue.Empty:
                raise HwqError(f"the simulated SoC did not answer ({len(self.pending)}/{n} "
                               "bytes)") from None
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


async def _send(dut, data: bytes, bit_ns: int) -> None:
    for byte in data:
        for level in (0, *((byte >> k) & 1 for k in range(8)), 1):
            dut.uart_rx.value = level
            await Timer(bit_ns, unit="ns")


async def _receive(dut, out: queue.Queue, bit_ns: int) -> None:
    while True:
        await FallingEdge(dut.uart_tx)
        await Timer(bit_ns + bit_ns // 2, unit="ns")      # middle of data bit 0
        byte = 0
        for k in range(8):
            byte |= int(dut.uart_tx.value) << k
            await Timer(bit_ns, unit="ns")
        out.put(bytes([byte]))                           # now in the stop bit


@cocotb.test()
async def host_link(dut):
    from hwq.arch.host_protocol import BLOCK_FRAME, CMD_BLOCK
    from hwq.board.host import Link, run_package
    from hwq.package import open_package

    spec = json.loads(Path(os.environ["HWQ_SOC_SPEC"]).read_text())
    bit_ns = spec["divisor"] * CLOCK_PERIOD_NS
    Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start()
    dut.uart_rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0

    transport = QueueTransport()
    result: dict = {}

    def driver():
        try:
            pkg = open_package(spec["package"])
            link = Link(transport, pkg.cfg.bus_bytes)
            result["link"] = link.__dict__       # updated as the driver goes
            run = run_package(pkg, link, timeout=REPLY_TIMEOUT_S)
            result.update(outputs=run.outputs.tolist(), cycles=run.cycles,
                          mismatches=run.mismatches)
        except Exception as e:  # reported to the caller through the results file
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            transport.to_dev.put(None)

    cocotb.start_soon(_receive(dut, transport.from_dev, bit_ns))
    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    corrupt, frames = set(spec.get("corrupt", ())), 0
    while True:
        try:
            data = transport.to_dev.get_nowait()
        except queue.Empty:
            await Timer(10 * bit_ns, unit="ns")         # let the SoC run while the host waits
            continue
        if data is None:
            break
        if data[:1] == CMD_BLOCK and len(data) == BLOCK_FRAME:
            if frames in corrupt:
                data = bytearray(data)
                data[10] ^= 0x10                         # a data byte, one bit
                data = bytes(data)
            frames += 1
        await _send(dut, data, bit_ns)
    thread.join()
    link = result.pop("link", {})
    result.update(sent=link.get("sent"), retries=link.get("retries"), frames=frames)
    Path(spec["results"]).write_text(json.dumps(result))
