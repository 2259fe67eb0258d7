"""The board's UART (hwq/rtl/uart.py) in Amaranth's simulator: bytes through a
transmitter-receiver loop, the receiver against hand-made frames, its error flags."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hwq.errors import HwqError
from hwq.rtl.uart import UartRx, UartTx


def _frame_bits(byte: int, stop: int = 1) -> list[int]:
    return [0, *((byte >> k) & 1 for k in range(8)), stop]


def _loop(divisor: int, payload: list[int]) -> list[int]:
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    got = []

    async def send(ctx):
        for b in payload:
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)

    async def receive(ctx):
        ctx.set(rx.data.ready, 1)
        while len(got) < len(payload):
            await ctx.tick()
            if ctx.get(rx.data.valid):
                got.append(ctx.get(rx.data.payload))
            assert not ctx.get(rx.overrun) and not ctx.get(rx.frame_error)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(receive)
    sim.run_until(1e-6 * divisor * 12 * (len(payload) + 2))
    return got


@pytest.mark.parametrize("divisor", [4, 5, 13])
def test_loopback(divisor):
    payload = [0x00, 0xFF, 0x55, 0xAA] + [random.Random(divisor).randrange(256) for _ in range(28)]
    assert _loop(divisor, payload) == payload


def _drive_rx(divisor: int, bits: list[int], ready: bool = True):
    dut = UartRx(divisor)
    seen = {"bytes": [], "overrun": 0, "frame_error": 0}

    async def drive(ctx):
        ctx.set(dut.data.ready, int(ready))
        for b in [1, 1, *bits, 1, 1]:
            ctx.set(dut.rx, b)
            for _ in range(divisor):
                await ctx.tick()
                if ctx.get(dut.data.valid) and ready:
                    seen["bytes"].append(ctx.get(dut.data.payload))
                seen["overrun"] += ctx.get(dut.overrun)
                seen["frame_error"] += ctx.get(dut.frame_error)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.run()
    return seen


def test_receiver_frames_and_errors():
    d = 7
    assert _drive_rx(d, _frame_bits(0xA5) + _frame_bits(0x3C))["bytes"] == [0xA5, 0x3C]
    bad = _drive_rx(d, _frame_bits(0xA5, stop=0) + [1] * 3 + _frame_bits(0x11))
    assert bad["frame_error"] == 1 and bad["bytes"] == [0x11]
    # nobody reads: the second byte is dropped, the first stays offered
    unread = _drive_rx(d, _frame_bits(0x01) + _frame_bits(0x02), ready=False)
    assert unread["overrun"] == 1


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_divisor_is_checked():
    with pytest.raises(HwqError, match="divisor"):
        UartTx(3)
