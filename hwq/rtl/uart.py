"""An 8N1 UART: the board's host link (amaranth 0.5 has no UART in its core library).

Both halves run at `divisor` clock cycles per bit (clock frequency / baud rate, at
least 4 so the receiver can sample in the middle of a bit).

`UartTx`: a byte taken from `data` (an amaranth.lib.stream: taken on valid & ready) is
sent as start bit, 8 data bits LSB first, stop bit; `ready` is high while idle.

`UartRx`: `rx` is synchronised (two flip-flops), a falling edge starts a frame; the
start bit is checked in its middle, the data bits are sampled in theirs, and a frame
whose stop bit is high is offered on `data` (valid held until ready). A byte that
arrives while the previous one is still unread is dropped and `overrun` pulses; a frame
with a low stop bit is dropped and `frame_error` pulses.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from hwq.errors import HwqError


# How far the rate a divisor makes may be from the asked-for baud: the receiver samples
# bit k at (k + 1/2) bit times, so a rate off by e drifts 9.5 e of a bit by the stop bit;
# 2% on this side leaves the far end's UART the rest of a comfortable margin.
MAX_BAUD_ERROR = 0.02


def uart_divisor(f_sync: float, baud: int) -> int:
    """Clock cycles per bit for `baud` at a `f_sync` clock."""
    return round(f_sync / baud)


def baud_error(f_sync: float, baud: int) -> float:
    """The relative error of the rate `uart_divisor` makes against `baud`."""
    return abs(f_sync / uart_divisor(f_sync, baud) - baud) / baud


def _check_divisor(divisor: int) -> None:
    if not isinstance(divisor, int) or divisor < 4:
        raise HwqError(f"UART divisor {divisor!r} must be an integer >= 4 "
                       "(clock frequency / baud rate)")


class UartTx(wiring.Component):
    def __init__(self, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        # 10 bits go out LSB first: start (0), data, stop (1); the register shifts in ones
        # so that an idle line stays high
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        timer = Signal(range(self.divisor))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq(Cat(0, self.data.payload, 1)), bits.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1),
                         timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UartRx(wiring.Component):
    def __init__(self, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8)),
                          "overrun": Out(1), "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += [self.overrun.eq(0), self.frame_error.eq(0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(rx):               # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1),
                                 timer.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(~rx):
                        m.d.sync += self.frame_error.eq(1)
                    with m.Elif(self.data.valid & ~self.data.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                    # back to IDLE in the middle of the stop bit: the next start edge
                    # may come right after it
                    m.next = "IDLE"
        return m
