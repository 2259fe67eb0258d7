"""The SDRAM controller (hwq/rtl/sdram.py) against the chip model (hwq/sim/sdram.py) on
Amaranth's simulator: the model fails the test at any timing the datasheet forbids, and
every word read back is the last written."""
from __future__ import annotations

import dataclasses
import random
from functools import partial

import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwq.arch.sdram import MT48LC16M16A2, SdramTiming
from hwq.errors import HwqError
from hwq.rtl.sdram import SdramController
from hwq.sim.sdram import SdramModel, serve_amaranth

# the datasheet's 100 us power-up is 10,000 cycles; 2 us keeps the runs short
CHIP = dataclasses.replace(MT48LC16M16A2, power_up_us=2)
ADDR_BITS = 22


def _run(timing, ops, reads_in_flight, preload=None, limit=200_000):
    """Issue `ops` ([("r", word) | ("w", word, value) | ("gap", cycles)]) through the
    port, at most `reads_in_flight` reads outstanding; the values read, the cycles from
    the first request to the last answer, and the model."""
    dut = SdramController(timing, ADDR_BITS)
    model = SdramModel(timing)
    for word, value in (preload or {}).items():
        model.write_word(word, value.to_bytes(timing.word_bytes, "little"))
    port = dut.port
    got, expected_reads, span = [], [], {"cycles": 0}

    async def requests(ctx):
        await ctx.tick().until(dut.ready_for_use)
        for op in ops:
            if op[0] == "gap":
                await ctx.tick().repeat(op[1])
                span["cycles"] += op[1]
                continue
            while len(expected_reads) - len(got) >= reads_in_flight:
                await ctx.tick()
                span["cycles"] += 1
            ctx.set(port.addr, op[1])
            ctx.set(port.re, op[0] == "r")
            ctx.set(port.we, op[0] == "w")
            if op[0] == "w":
                ctx.set(port.wdata, op[2])
            while True:
                _, _, ready = await ctx.tick().sample(port.ready)
                span["cycles"] += 1
                if ready:
                    break
            if op[0] == "r":
                expected_reads.append(op[1])
            ctx.set(port.re, 0)
            ctx.set(port.we, 0)
        for _ in range(limit):
            if len(got) == len(expected_reads):
                break
            await ctx.tick()
            span["cycles"] += 1
        await ctx.tick().until(port.ready)          # the last request's command issued
        await ctx.tick().repeat(2 * timing.burst)   # ... and its write beats taken
        model.finish()

    async def answers(ctx):
        async for _, _, rvalid, rdata in ctx.tick().sample(port.rvalid, port.rdata):
            if rvalid:
                got.append(rdata)

    sim = Simulator(dut)
    sim.add_clock(1e-6 / timing.clock_mhz)
    sim.add_testbench(partial(serve_amaranth, pins=dut.sdram, model=model), background=True)
    sim.add_testbench(answers, background=True)
    sim.add_testbench(requests)
    sim.run()
    return got, span["cycles"], model


def _reference(ops, preload):
    mem, reads = dict(preload), []
    for op in ops:
        if op[0] == "w":
            mem[op[1]] = op[2]
        elif op[0] == "r":
            reads.append(mem.get(op[1], 0))
    return reads


@pytest.mark.parametrize("mhz", [100, 150])       # CAS latency 2 and 3
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_traffic_reads_what_was_written(mhz, data):
    timing = SdramTiming(CHIP, mhz, 8)
    wc, bb = timing.word_cols_bits, CHIP.bank_bits
    rows = data.draw(st.lists(st.integers(0, (1 << CHIP.row_bits) - 1), min_size=1,
                              max_size=3, unique=True))
    words = st.builds(lambda r, b, c: (r << (wc + bb)) | (b << wc) | c, st.sampled_from(rows),
                      st.integers(0, CHIP.banks - 1), st.integers(0, (1 << wc) - 1))
    op = st.one_of(st.tuples(st.just("r"), words),
                   st.tuples(st.just("w"), words, st.integers(0, (1 << 64) - 1)),
                   st.tuples(st.just("gap"), st.integers(1, 40)))
    ops = data.draw(st.lists(op, min_size=1, max_size=80))     # row hits, misses, banks
    in_flight = data.draw(st.integers(1, 8))
    got, _, model = _run(timing, ops, in_flight)
    assert got == _reference(ops, {})
    assert model.writes == sum(o[0] == "w" for o in ops)


def test_refresh_keeps_its_interval_under_load():
    """A stream long enough for several refreshes, on words that keep missing rows."""
    timing = SdramTiming(CHIP, 100, 8)
    rnd = random.Random(7)
    preload = {w: rnd.getrandbits(64) for w in rnd.sample(range(1 << ADDR_BITS), 600)}
    ops = [("r", w) for w in preload] + [("r", w) for w in list(preload)[:200]]
    got, _, model = _run(timing, ops, 4, preload)
    assert got == _reference(ops, preload)
    assert model.refreshes >= 4


def test_a_stream_of_words_moves_a_word_per_burst():
    """Reads of consecutive words with enough in flight: one READ every `burst` cycles,
    after the first row of each bank opens."""
    timing = SdramTiming(CHIP, 100, 8)
    n = 256
    ops = [("r", w) for w in range(n)]
    got, cycles, model = _run(timing, ops, 8)
    assert len(got) == n
    rows = n >> timing.word_cols_bits                   # each in a bank of its own
    assert model.activates <= rows * (1 + model.refreshes)
    # a refresh costs its PRECHARGE, tRP, tRFC and the rows' ACTIVEs again
    overhead = model.refreshes * (2 + timing.rp + timing.rfc + rows * timing.rcd)
    assert cycles <= n * timing.burst + overhead + 20


def test_timing_in_cycles_and_refusals():
    """The -6A at 100 MHz: CAS latency 2, the datasheet's nanoseconds rounded up to
    cycles; a word that is no burst, or a clock the chip cannot take, refused."""
    t = SdramTiming(MT48LC16M16A2, 100, 8)
    assert (t.cas_latency, t.burst, t.rcd, t.rp, t.ras, t.rc, t.rfc, t.wr) == (2, 4, 2, 2, 5, 6, 6, 2)
    assert t.refi == 781 and t.power_up == 10_000 and t.mode == 0b010_0_010
    assert SdramTiming(MT48LC16M16A2, 150, 16).cas_latency == 3
    with pytest.raises(HwqError, match="bus_bytes 2, 4, 8 or 16"):
        SdramTiming(MT48LC16M16A2, 100, 1)
    with pytest.raises(HwqError, match="faster than the MT48LC16M16A2-6A runs"):
        SdramTiming(MT48LC16M16A2, 200, 8)
