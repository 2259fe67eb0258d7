"""The SoC on a board: its clock (a PLL where the board's oscillator is not the target),
the UART on the board's `uart` 0 pins, the SoC's LEDs on as many of the board's `led`
resources as there are (else its RGB LED), and the board's `sdram` 0 where the DRAM is
there.

The SDRAM's pins leave through I/O registers, and its clock is the SoC's inverted (a DDR
output of 0 then 1): the chip takes each command and write beat half a cycle after the
I/O register launches it, with half a cycle of setup and of hold. The read data is
sampled at the falling edge, half a cycle into the chip's output window (valid from tAC
after one chip edge to tOH after the next), and handed to the rising edge. Against the
simulation's timing (the chip a cycle after the controller's register, data sampled at
the rising edge) the round trip of a read is `SDRAM_IO_DELAY` cycles longer."""
from __future__ import annotations

from amaranth.build import ResourceError
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from hwq.arch.config import HwConfig
from hwq.rtl.clocking import BoardClock
from hwq.rtl.soc import LEDS, Soc
from hwq.rtl.uart import uart_divisor

SDRAM_IO_DELAY = 2          # the output registers' cycle and the falling-edge capture's


class BoardTop(Elaboratable):
    """The SoC for hardware config `cfg` on `platform`, its sync clock at `clock_hz`
    (or the nearest the PLL makes), its UART at `baud` and its DRAM in `memory` (a
    hwq/board/spec.py BoardMemory)."""

    def __init__(self, cfg: HwConfig, platform, clock_hz: float, baud: int, memory):
        self.cfg, self.baud = cfg, baud
        self.clock = BoardClock(platform, clock_hz)
        self.sdram = memory.sdram(cfg, self.clock.f_sync)

    def elaborate(self, platform):
        m = Module()
        if self.clock.domain is not None:
            # the PLL's domain: defined here, above the clock that drives it and the SoC
            m.domains += self.clock.domain
        m.submodules.clock = self.clock
        m.submodules.soc = soc = Soc(self.cfg, uart_divisor(self.clock.f_sync, self.baud),
                                     self.sdram, io_delay=SDRAM_IO_DELAY)
        if self.sdram is not None:
            _sdram_pins(m, platform.request("sdram", 0, dir="-"), soc.sdram)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [soc.uart_rx.eq(rx.i), tx.o.eq(soc.uart_tx)]
        pins = []
        for k in range(LEDS):
            try:
                pins.append(platform.request("led", k, dir="-"))
            except ResourceError:
                break
        if not pins:
            try:
                rgb = platform.request("rgb_led", 0, dir="-")
                pins = [rgb.r, rgb.g, rgb.b]
            except ResourceError:
                pass
        leds = []
        for k, pin in enumerate(pins):
            m.submodules[f"led{k}"] = buf = io.Buffer("o", pin)
            leds.append(buf.o)
        m.d.comb += [led.eq(soc.leds[k]) for k, led in enumerate(leds)]
        return m


def _sdram_pins(m, res, pins):
    """The controller's `pins` on the board's sdram resource `res` (the module doc)."""
    m.submodules.sdram_clk = clk = io.DDRBuffer("o", res.clk)
    m.d.comb += [clk.o[0].eq(0), clk.o[1].eq(1)]
    outputs = {"clk_en": pins.cke, "cs": ~pins.cs_n, "ras": ~pins.ras_n, "cas": ~pins.cas_n,
               "we": ~pins.we_n, "ba": pins.ba, "a": pins.a, "dqm": pins.dqm}
    for name, value in outputs.items():     # cs, ras, cas, we: the resource inverts them
        m.submodules[f"sdram_{name}"] = buf = io.FFBuffer("o", getattr(res, name))
        m.d.comb += buf.o.eq(value)
    m.submodules.sdram_dq = dq = io.DDRBuffer("io", res.dq)
    m.d.comb += [dq.o[0].eq(pins.dq_o), dq.o[1].eq(pins.dq_o), dq.oe.eq(pins.dq_oe),
                 pins.dq_i.eq(dq.i[1])]
