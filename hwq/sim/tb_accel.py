"""cocotb test module run by hwq.sim.rtl_sim.run_rtl inside the simulator.

It reads the run spec (JSON, path in $HWQ_RTL_SPEC), runs every job on the one
simulated accelerator and writes the results (JSON, path in the spec). The DRAM is
preloaded by the Verilog top; job writes and region reads go through $readmemh /
$writememh host commands (see hwq/rtl/export.py), so Python touches the design only a
few times per job: it never polls per cycle -- it awaits `done` or a watchdog Timer, and
the clock runs inside the Verilog top. It steps cycle by cycle on `tb_tick` (toggled at
every posedge), not on `clk`, which is a pulse within one time step in the normal build:
what it writes there is what the next posedge sees, what it reads is the state after the
last posedge.
Only the standard library and cocotb are imported here (fast simulator start-up).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.triggers import First, ReadWrite, RisingEdge, Timer

CLOCK_PERIOD_NS = 10


async def _step(dut) -> None:
    """To the next posedge, then past its NBA region (where a value-change callback on
    `tb_tick` may come, on Icarus, before the other registers are updated): there reads
    see the state after the posedge, and writes reach the next one."""
    await dut.tb_tick.value_change
    await ReadWrite()


def _words_hex(words: dict[int, int], width_hex: int) -> str:
    lines, prev = [], None
    for addr in sorted(words):
        if prev is None or addr != prev + 1:
            lines.append(f"@{addr:x}")
        lines.append(f"{words[addr]:0{width_hex}x}")
        prev = addr
    return "\n".join(lines) + "\n"


def _parse_memh(text: str, lo: int) -> list[int]:
    out, addr, base = {}, lo, lo
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        for tok in line.split():
            if tok.startswith("@"):
                addr = int(tok[1:], 16)
                continue
            out[addr] = int(tok, 16)
            addr += 1
    return [out[a] for a in sorted(out) if a >= base]


class Host:
    def __init__(self, dut, spec):
        self.dut = dut
        self.dir = Path(spec["dir"])
        self.bus = spec["bus_bytes"]
        self.nw = spec["dram_words"]

    async def _cmd(self, cmd: int, lo: int = 0, hi: int = 0) -> None:
        d = self.dut
        d.tb_lo.value = lo
        d.tb_hi.value = hi
        d.tb_cmd.value = cmd
        await _step(d)
        d.tb_cmd.value = 0
        await _step(d)

    def _runs(self, addr: int, nwords: int):
        """Contiguous (lo, hi) word ranges covering nwords from addr, wrapping."""
        addr %= self.nw
        while nwords > 0:
            n = min(nwords, self.nw - addr)
            yield addr, addr + n - 1
            nwords -= n
            addr = 0

    async def read_words(self, addr: int, nwords: int) -> list[int]:
        out = []
        for lo, hi in self._runs(addr, nwords):
            await self._cmd(2, lo, hi)
            words = _parse_memh((self.dir / "dump.hex").read_text(), lo)
            assert len(words) == hi - lo + 1, (lo, hi, len(words))
            out += words
        return out

    async def read(self, addr: int, nbytes: int) -> bytes:
        nwords = -(-nbytes // self.bus)
        words = await self.read_words(addr, nwords)
        return b"".join(w.to_bytes(self.bus, "little") for w in words)[:nbytes]

    async def write(self, writes: list[tuple[int, bytes]]) -> None:
        words: dict[int, int] = {}
        for addr, blob in writes:
            if len(blob) % self.bus:      # a partial last word keeps its other bytes
                last = addr + len(blob) // self.bus
                old = (await self.read_words(last, 1))[0].to_bytes(self.bus, "little")
                blob = blob + old[len(blob) % self.bus:]
            for k in range(len(blob) // self.bus):
                words[(addr + k) % self.nw] = int.from_bytes(
                    blob[k * self.bus:(k + 1) * self.bus], "little")
        if words:
            (self.dir / "load.hex").write_text(_words_hex(words, 2 * self.bus))
            await self._cmd(1)


@cocotb.test()
async def run_jobs(dut):
    spec = json.loads(Path(os.environ["HWQ_RTL_SPEC"]).read_text())
    host = Host(dut, spec)
    results_path = Path(spec["results"])
    progress = Path(spec["progress"]) if spec.get("progress") else None
    max_cycles = spec["max_cycles"]
    results = []
    for _ in range(5):                    # past the power-on reset
        await _step(dut)
    for idx, job in enumerate(spec["jobs"]):
        t0 = time.time()
        await host.write([(a, bytes.fromhex(h)) for a, h in job["writes"]])
        dut.tb_start_pc.value = spec["start_pc"]
        dut.tb_start.value = 1
        await _step(dut)
        dut.tb_start.value = 0
        stops = [RisingEdge(dut.done), Timer(max_cycles * CLOCK_PERIOD_NS, unit="ns")]
        if spec.get("window"):            # a waveform window: end with it
            stops.append(RisingEdge(dut.wave_done))
        await First(*stops)
        await _step(dut)
        if spec.get("window") and int(dut.wave_done.value) == 1:
            results.append({"status": None, "pc": int(dut.pc.value), "cycles": 0, "macs": 0,
                            "perf": "0", "reads": []})
            results_path.write_text(json.dumps(results))
            return
        if int(dut.done.value) == 1:
            status = int(dut.status.value)
        else:
            status = None
        res = {"status": status, "pc": int(dut.pc.value),
               "cycles": int(dut.cycles.value), "macs": int(dut.macs.value),
               "perf": f"{int(dut.perf.value):x}"}
        if status is None:                # watchdog: reset the accelerator, keep going
            dut.tb_rst.value = 1
            await _step(dut)
            dut.tb_rst.value = 0
            await _step(dut)
        res["reads"] = [(await host.read(a, n)).hex() for a, n in job["reads"]]
        results.append(res)
        results_path.write_text(json.dumps(results))
        if progress is not None:
            with progress.open("a") as f:
                name = "timeout" if status is None else spec["status_names"].get(str(status), status)
                f.write(f"job {idx + 1}/{len(spec['jobs'])}: {name}, {res['cycles']} cycles, "
                        f"{time.time() - t0:.2f}s\n")
