"""The SoC on a board: its clock (a PLL where the board's oscillator is not the target),
the UART on the board's `uart` 0 pins, and the SoC's LEDs on as many of the board's `led`
resources as there are (else its RGB LED)."""
from __future__ import annotations

from amaranth.build import ResourceError
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from hwq.arch.config import HwConfig
from hwq.rtl.clocking import BoardClock
from hwq.rtl.soc import LEDS, Soc
from hwq.rtl.uart import uart_divisor


class BoardTop(Elaboratable):
    """The SoC for hardware config `cfg` on `platform`, its sync clock at `clock_hz`
    (or the nearest the PLL makes) and its UART at `baud`."""

    def __init__(self, cfg: HwConfig, platform, clock_hz: float, baud: int):
        self.cfg, self.baud = cfg, baud
        self.clock = BoardClock(platform, clock_hz)

    def elaborate(self, platform):
        m = Module()
        if self.clock.domain is not None:
            # the PLL's domain: defined here, above the clock that drives it and the SoC
            m.domains += self.clock.domain
        m.submodules.clock = self.clock
        m.submodules.soc = soc = Soc(self.cfg, uart_divisor(self.clock.f_sync, self.baud))
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
