"""cocotb testbench of the host link: the SoC's RTL (hwq/rtl/soc.py) with the host
driver (hwq/board/host.py) talking to it through a simulated UART.

The driver runs unchanged in a thread, on a `QueueTransport`; this coroutine side turns
the bytes it writes into 8N1 frames on `uart_rx`, and the frames the SoC sends on
`uart_tx` back into bytes for it. Started by hwq/board/host_sim.py, which passes the package,
the UART divisor, the block frames to corrupt on the wire (`corrupt`: their ordinals
among the driver's 'B' frames; one data bit flipped in each) and, for an SoC with its DRAM
in SDRAM, that board and the clock its chip's timings are taken at (`board`,
`sdram_mhz`; hwq/sim/sdram.py's model serves the SoC's `sdram` pins; with `preload` the
package's DRAM image is in the model before the run, and the driver sends only the
inputs) in the JSON file named by $HWQ_SOC_SPEC, and reads the results from the file the
spec names.
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
RUN_TIMEOUT_S = 1800       # ... and runs a model of a million cycles for minutes


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


async def _trace_pc(dut, out: list) -> None:
    """[cycle, pc] at each change of the accelerator's pc (the instruction in its front
    end), the cycle counted from the start of the simulation."""
    from cocotb.simtime import get_sim_time
    pc = dut.accel.pc
    while True:
        await pc.value_change
        out.append([get_sim_time("ns") // CLOCK_PERIOD_NS, int(pc.value)])


def _serve_sdram(dut, spec: dict, fault: dict):
    """The chip model on the SoC's `sdram` pins, where the spec names the board with its
    memory there and the clock; a timing violation lands in `fault` and ends the run."""
    if not spec.get("sdram_mhz"):
        return None
    from hwq.board.spec import load_board
    from hwq.package import open_package
    from hwq.sim.sdram import SdramModel, SdramViolation, serve_cocotb

    timing = load_board(spec["board"]).memory.sdram(open_package(spec["package"]).cfg,
                                                    spec["sdram_mhz"] * 1e6)
    model = SdramModel(timing)

    async def chip():
        try:
            await serve_cocotb(dut, model)
        except SdramViolation as e:
            fault["error"] = f"SdramViolation: {e}"
    cocotb.start_soon(chip())
    return model


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
    fault: dict = {}
    model = _serve_sdram(dut, spec, fault)
    if spec.get("preload"):
        model.load(open_package(spec["package"]).image())

    def driver():
        try:
            pkg = open_package(spec["package"])
            link = Link(transport, pkg.cfg.bus_bytes)
            result["link"] = link.__dict__       # updated as the driver goes
            run = run_package(pkg, link, timeout=RUN_TIMEOUT_S, load=not spec.get("preload"))
            result.update(outputs=run.outputs.tolist(), cycles=run.cycles,
                          mismatches=run.mismatches)
        except Exception as e:  # reported to the caller through the results file
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            transport.to_dev.put(None)

    pc_trace: list[list[int]] = []
    cocotb.start_soon(_trace_pc(dut, pc_trace))
    cocotb.start_soon(_receive(dut, transport.from_dev, bit_ns))
    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    corrupt, frames = set(spec.get("corrupt", ())), 0
    while not fault:
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
    if fault:                           # the driver waits on a SoC that broke the chip's rules
        Path(spec["results"]).write_text(json.dumps(fault))
        return
    thread.join()
    link = result.pop("link", {})
    result.update(sent=link.get("sent"), retries=link.get("retries"), frames=frames,
                  pc_trace=pc_trace)
    if model is not None:
        from hwq.sim.sdram import SdramViolation
        try:
            model.finish()
        except SdramViolation as e:
            result["error"] = f"SdramViolation: {e}"
        result["sdram"] = {k: getattr(model, k) for k in
                           ("cycle", "refreshes", "activates", "reads", "writes", "precharges")}
    Path(spec["results"]).write_text(json.dumps(result))
