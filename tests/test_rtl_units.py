"""Unit tests of the RTL blocks on Amaranth's own simulator (fast start-up)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.arch import isa
from hwq.arch.requant import ROUND_MODES, SLOPE_ONE, requantize
from hwq.rtl import decode
from hwq.rtl.array import SystolicArray, array_latency
from hwq.rtl.post import RequantLanes


def _run(dut, bench, clock=False):
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def _byte(code) -> int:
    """The byte POST stores of a requantized int8 or uint8 code, read as the lanes' int8."""
    return int(np.asarray(code).view(np.int8))


def _wrap(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


# ---------------- post-processing vs requant.requantize ----------------

NARROW = 10
LANES = 64


def _pack(vals, bits):
    out = 0
    for k, v in enumerate(vals):
        out |= (v & ((1 << bits) - 1)) << (k * bits)
    return out


def _unpack(word, bits, n):
    return [_wrap(word >> (k * bits), bits) for k in range(n)]


def _wrap_shift(s):
    """A lane's shift modulo 64, into -32..31 (POST's lane_shifts)."""
    return (s + 32) % 64 - 32


@pytest.mark.slow
@pytest.mark.parametrize("deep", [False, True])
def test_post_exhaustive_narrow(deep):
    """Every 10-bit accumulator value x every shift (-32..31) x every rounding mode, with
    clamps drawn at random; bias adds wrap at the accumulator width. Each lane shifts by
    its own amount: the base shift plus a random per-lane offset, modulo 64 -- over the
    64 base shifts every lane still sees every shift. Each batch draws a LeakyReLU slope
    (256: none) at random. The requantizer is pipelined (deep: with the ECP5's two extra
    stages): each result is read `latency` clock cycles after its inputs."""
    dut = RequantLanes(LANES, acc_bits=NARROW, deep=deep)
    rng = random.Random(1)
    values = list(range(-(1 << (NARROW - 1)), 1 << (NARROW - 1)))
    clamps = [(-128, 127), (0, 127), (0, 6), (-127, 127), (-5, 17), (3, -3), (0, 0), (0, 255),
              (0, 192), (-256, 255), (-200, 100), (100, 255)]
    slopes = [SLOPE_ONE, SLOPE_ONE, 0, 1, 26, 77, 128, 255, 257, 511]
    failures = []

    async def bench(ctx):
        for mode, code in ROUND_MODES.items():
            ctx.set(dut.round, code)
            for shift in range(-32, 32):
                for base in range(0, len(values), LANES):
                    shifts = [_wrap_shift(shift + rng.randrange(64)) for _ in range(LANES)]
                    ctx.set(dut.shift.as_value(), _pack(shifts, 6))
                    lo, hi = clamps[rng.randrange(len(clamps))]
                    ctx.set(dut.lo, lo)
                    ctx.set(dut.hi, hi)
                    slope = rng.choice(slopes)
                    ctx.set(dut.slope, slope)
                    chunk = values[base:base + LANES]
                    bias = [rng.randrange(-(1 << (NARROW - 1)), 1 << (NARROW - 1)) for _ in chunk]
                    acc = [_wrap(v - b, NARROW) for v, b in zip(chunk, bias)]
                    ctx.set(dut.acc.as_value(), _pack(acc, NARROW))
                    ctx.set(dut.bias.as_value(), _pack(bias, NARROW))
                    await ctx.tick().repeat(dut.latency)
                    got = _unpack(ctx.get(dut.y.as_value()), 8, LANES)
                    want = [_byte(requantize(np.int64(x), s, mode, lo, hi, slope))
                            for x, s in zip(chunk, shifts)]
                    if got != want:
                        failures.extend((mode, shift, slope, x, lo, hi, g, w)
                                        for x, g, w in zip(chunk, got, want) if g != w)
    _run(dut, bench, clock=True)
    assert not failures, failures[:10]


_full = {deep: RequantLanes(4, acc_bits=32, deep=deep) for deep in (False, True)}


@settings(max_examples=300, deadline=None)
@given(acc=st.lists(st.integers(-(1 << 31), (1 << 31) - 1), min_size=4, max_size=4),
       bias=st.lists(st.integers(-(1 << 31), (1 << 31) - 1), min_size=4, max_size=4),
       shift=st.lists(st.integers(-32, 31), min_size=4, max_size=4),
       mode=st.sampled_from(sorted(ROUND_MODES)),
       lo=st.integers(-256, 255), hi=st.integers(-256, 255),
       slope=st.one_of(st.just(SLOPE_ONE), st.integers(0, 511)), deep=st.booleans())
def test_post_random_full_width(acc, bias, shift, mode, lo, hi, slope, deep):
    """Per-lane shifts (one each) and a LeakyReLU slope on full-width accumulators, on
    the lanes with and without the two extra stages; any 9-bit clamp, int8's and
    uint8's among them: the lanes give the byte POST stores."""
    dut = _full[deep]
    got = []

    async def bench(ctx):
        for k in range(4):
            ctx.set(dut.shift[k], shift[k])
        ctx.set(dut.round, ROUND_MODES[mode])
        ctx.set(dut.lo, lo)
        ctx.set(dut.hi, hi)
        ctx.set(dut.slope, slope)
        for k in range(4):
            ctx.set(dut.acc[k], acc[k])
            ctx.set(dut.bias[k], bias[k])
        await ctx.tick().repeat(dut.latency)
        got.extend(ctx.get(dut.y[k]) for k in range(4))
    _run(dut, bench, clock=True)
    total = (np.array(acc, np.int64) + np.array(bias, np.int64)).astype(np.int32)  # int32 wrap
    assert got == [_byte(requantize(t, s, mode, lo, hi, slope)) for t, s in zip(total, shift)]


@pytest.mark.parametrize("has_slope,deep", [(True, False), (False, False), (True, True)])
def test_post_ties_and_extremes(has_slope, deep):
    """Hand-picked: exact ties in every mode, int32 extremes, shifts 0/31/-32, slopes none,
    0, 1/256 and the largest (none only, on lanes built without the multiplier)."""
    dut = RequantLanes(8, acc_bits=32, slope=has_slope, deep=deep)
    xs = [-(1 << 31), (1 << 31) - 1, -3 << 4, 3 << 4, -(1 << 4) - 8, (1 << 4) + 8, 1, -1]
    failures = []

    async def bench(ctx):
        for k, v in enumerate(xs):
            ctx.set(dut.acc[k], v)
            ctx.set(dut.bias[k], 0)
        for mode, code, slope in ((m, c, sl) for m, c in ROUND_MODES.items()
                                  for sl in ((SLOPE_ONE, 0, 1, 511) if has_slope else (SLOPE_ONE,))):
            ctx.set(dut.round, code)
            ctx.set(dut.slope, slope)
            for shift in (-32, -31, -8, -7, -1, 0, 1, 4, 5, 30, 31):
                ctx.set(dut.shift.as_value(), _pack([shift] * 8, 6))
                for lo, hi in ((-128, 127), (0, 127), (-127, 6), (0, 255)):
                    ctx.set(dut.lo, lo)
                    ctx.set(dut.hi, hi)
                    want = requantize(np.array(xs, np.int64), shift, mode, lo, hi, slope).view(np.int8)
                    await ctx.tick().repeat(dut.latency)
                    got = [ctx.get(dut.y[k]) for k in range(8)]
                    if got != want.tolist():
                        failures.append((mode, slope, shift, lo, hi, got, want.tolist()))
    _run(dut, bench, clock=True)
    assert not failures, failures[:5]


async def _run_unit(ctx, dut, cfg, ins, memory, overlap, limit, obuf, machine):
    """Start unit `dut` on `ins`, its buffers played by `memory()` (called every cycle),
    wait for done and compare with the ISS `machine` that ran it: what differs -- obuf
    (then set to the ISS's, so the next instruction starts equal) or the cycles from start
    to done against the cycle model. With overlap the fields are gone after the start
    cycle (the unit must keep its own copy, held_args); before it they are there a cycle
    early, as the top holds an instruction's fields through its check."""
    from hwq.arch import timing as cycle_model
    ctx.set(dut.args.as_value(), isa.encode(ins) >> isa.OPCODE_BITS)
    memory()
    await ctx.tick()
    ctx.set(dut.start, 1)
    memory()
    await ctx.tick()
    ctx.set(dut.start, 0)
    if overlap:
        ctx.set(dut.args.as_value(), 0)
    cycles = 1
    while True:
        memory()
        done = ctx.get(dut.done)
        await ctx.tick()
        if done:
            break
        cycles += 1
        assert cycles < limit
    failures = []
    if not np.array_equal(obuf, machine.buf["obuf"]):
        failures.append((isa.format_instr(ins), "data"))
        obuf[:] = machine.buf["obuf"]
    want = cycle_model.unit_cycles(ins, cfg)
    if cycles != want:
        failures.append((isa.format_instr(ins), cycles, want))
    await ctx.tick()
    return failures


@pytest.mark.parametrize("overlap", [True, False])
def test_post_unit_lane_shifts(overlap):
    """PostUnit with its buffers played by the testbench: random POSTs, lane_shifts 0 and
    1 (offsets of every size, the modulo-64 wrap included), LeakyReLU slopes, n = 0 too;
    obuf after each equals the ISS's and the cycles from start to done the cycle model's."""
    import dataclasses
    from hwq.rtl.pe import ACC_BITS
    from hwq.rtl.post import PostUnit
    from hwq.sim.iss import Machine
    cfg = dataclasses.replace(_dma_cfg(), overlap=overlap)
    C, rng = cfg.cols, random.Random(31 + overlap)
    nrng = np.random.default_rng(32 + overlap)
    dut = PostUnit(cfg)
    abuf = nrng.integers(-(1 << 31), 1 << 31, (cfg.abuf_depth, C)).astype(np.int32)
    abuf[:8] = nrng.integers(-3000, 3000, (8, C))          # values that do not all saturate
    bbuf = nrng.integers(-2000, 2000, (cfg.bbuf_depth, C)).astype(np.int32)
    for e in range(1, cfg.bbuf_depth, 2):                  # odd entries: shift offsets
        bbuf[e] = nrng.integers(0, 12, C) if e < 40 else nrng.integers(-200, 200, C)
    programs = []
    while len(programs) < 40:
        lane = rng.randrange(2)
        ins = isa.Instr.make("POST", acc=rng.randrange(12), out=rng.randrange(40),
                             bias=rng.randrange(cfg.bbuf_depth), n=rng.choice([0, 1, 2, 5, 9]),
                             shift=rng.randrange(-8, 12), round=rng.randrange(4),
                             lo=rng.choice([-128, 0, -5]), hi=rng.choice([127, 6, 100]),
                             lane_shifts=lane, slope=rng.choice([SLOPE_ONE, 0, 26, 300]))
        if isa.range_violation(ins, cfg) is None:
            programs.append(ins)
    failures = []

    def lanes(word, bits):
        return [_wrap(word >> (k * bits), bits) for k in range(C)]

    async def bench(ctx):
        obuf = np.zeros((cfg.obuf_depth, C), np.int8)
        pending = {"abuf": 0, "bbuf": 0}
        mems = {"abuf": abuf, "bbuf": bbuf}

        def memory():
            for name in mems:
                port = getattr(dut, name)
                ctx.set(port.data, pending[name])
            for name, mem in mems.items():
                port = getattr(dut, name)
                if ctx.get(port.en):
                    pending[name] = _pack(mem[ctx.get(port.addr)].tolist(), ACC_BITS)
            if ctx.get(dut.obuf.en):
                obuf[ctx.get(dut.obuf.addr)] = lanes(ctx.get(dut.obuf.data), 8)

        for ins in programs:
            m = Machine(cfg, b"")
            m.buf["abuf"][:], m.buf["bbuf"][:], m.buf["obuf"][:] = abuf, bbuf, obuf
            m.POST(**ins.fields)
            failures.extend(await _run_unit(ctx, dut, cfg, ins, memory, overlap, 100, obuf, m))
    _run(dut, bench, clock=True)
    assert not failures, failures[:5]


# ---------------- registered multiplier ----------------

@settings(max_examples=25, deadline=None)
@given(a_bits=st.integers(2, 18), b_bits=st.integers(2, 18), a_signed=st.booleans(),
       b_signed=st.booleans(), seed=st.integers(0, 2**31))
def test_multiplier_product_and_latency(a_bits, b_bits, a_signed, b_signed, seed):
    """p is the exact product of the operands presented LATENCY cycles earlier, a new
    pair every cycle, extremes included."""
    from amaranth.hdl import Shape

    from hwq.arch.timing import MUL_LATENCY as LATENCY
    from hwq.rtl.mul import Multiplier
    sa, sb = Shape(a_bits, a_signed), Shape(b_bits, b_signed)
    dut = Multiplier(sa, sb)
    rng = random.Random(seed)

    def values(shape):
        lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
            else (0, (1 << shape.width) - 1)
        return [lo, hi] + [rng.randint(lo, hi) for _ in range(10)]
    pairs = list(zip(values(sa), values(sb)))
    got = []

    async def bench(ctx):
        for t in range(len(pairs) + LATENCY):
            if t < len(pairs):
                ctx.set(dut.a, pairs[t][0])
                ctx.set(dut.b, pairs[t][1])
            await ctx.tick()
            if t + 1 >= LATENCY:
                got.append(ctx.get(dut.p))
    _run(dut, bench, clock=True)
    assert got[:len(pairs)] == [a * b for a, b in pairs]


def test_multiplier_on_ecp5_is_a_registered_dsp_block():
    """On an ECP5 the registers are the MULT18X18D's own: its A and B input registers and
    its output register on CLK0 (the sync clock), signed 18-bit operands, and no fabric
    multiplier; the other platforms and the simulator get the Amaranth pipeline."""
    from amaranth.back import rtlil

    from hwq.rtl.mul import Multiplier

    class Ecp5:                         # what Multiplier looks at of a platform
        family = "ecp5"
    text = rtlil.convert(Multiplier(signed(8), signed(8)), platform=Ecp5())
    assert "cell \\MULT18X18D" in text
    for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert f'parameter \\{reg} "CLK0"' in text
    assert 'parameter \\REG_PIPELINE_CLK "NONE"' in text
    assert "$mul" not in text
    assert "MULT18X18D" not in rtlil.convert(Multiplier(signed(8), signed(8)))
    # too wide for one block: the Amaranth pipeline, which yosys maps as it can
    assert "MULT18X18D" not in rtlil.convert(Multiplier(signed(20), signed(8)), platform=Ecp5())


# ---------------- systolic array ----------------

@pytest.mark.parametrize("rows,cols,mul_regs", [(4, 4, 0), (4, 4, 1), (8, 4, 0), (3, 5, 1),
                                                (2, 7, 0)])
def test_systolic_array(rows, cols, mul_regs):
    """Three batches of vectors back to back, each with its own weights: the next
    batch's weights go to the shadow rows while the previous batch flows, and the
    `swap` tag on a batch's first vector makes them active. Batch 2's shadow rows load
    at the earliest cycle allowed (row r at t1 + r + C - 1, batch 1 started at t1),
    batch 3's at the latest (row r at t3 + r - 1). With and without the multipliers'
    operand registers (mul_regs), which only delay the dot products."""
    rng = np.random.default_rng(rows * 10 + cols)
    R, C = rows, cols
    Ws = [rng.integers(-128, 128, (R, C)) for _ in range(3)]
    Ws[0][0] = -128                   # extreme products
    ns = [C + 2, max(R, C), 5]        # batch sizes (>= C: the shadow of row r is free
    Xs = [rng.integers(-128, 128, (n, R)) for n in ns]   # once the swap passed column C-1)
    Xs[0][0] = -128
    dut = SystolicArray(R, C, mul_regs=mul_regs)
    L = array_latency(R, C, mul_regs)
    t1 = R                            # batch 1 weights preloaded in cycles 0..R-1
    ts = [t1, t1 + ns[0], t1 + ns[0] + ns[1]]
    loads = {r: (0, r) for r in range(R)}                         # cycle -> (batch, row)
    loads.update({ts[0] + r + C - 1: (1, r) for r in range(R)})
    loads.update({ts[2] + r - 1: (2, r) for r in range(R)})
    assert len(loads) == 3 * R
    xin = {}                                                      # cycle -> (batch, k)
    for b in range(3):
        xin.update({ts[b] + k: (b, k) for k in range(ns[b])})
    outs = {}

    async def bench(ctx):
        for t in range(ts[2] + ns[2] + L + 1):
            ctx.set(dut.w_row, 0)
            if t in loads:
                b, r = loads[t]
                ctx.set(dut.w_row, 1 << r)
                for c in range(C):
                    ctx.set(dut.w_data[c], int(Ws[b][r, c]))
            ctx.set(dut.swap, 0)
            if t in xin:
                b, k = xin[t]
                ctx.set(dut.swap, int(k == 0))
                for r in range(R):
                    ctx.set(dut.x[r], int(Xs[b][k, r]))
            if t - L in xin:
                outs[xin[t - L]] = [ctx.get(dut.y[c]) for c in range(C)]
            await ctx.tick()
    _run(dut, bench, clock=True)
    for b in range(3):
        want = Xs[b] @ Ws[b]
        for k in range(ns[b]):
            assert outs[b, k] == want[k].tolist(), (b, k)


# ---------------- decoder ----------------

def test_layout_offsets_match_isa():
    for op in isa.OPS:
        assert decode.field_offsets(op.name) == op.offsets()
        assert decode.op_layout(op.name).size <= isa.INSTR_BITS
    assert decode.instr_layout().size == isa.INSTR_BITS


def _random_instr(op, rng):
    return isa.Instr.make(op.name, **{f.name: rng.randint(f.lo, f.hi) for f in op.fields})


def test_decoder_fields():
    dut = decode.Decoder()
    rng = random.Random(7)
    cases = []
    for op in isa.OPS:
        cases.append(isa.Instr.make(op.name, **{f.name: f.hi for f in op.fields}))
        cases.append(isa.Instr.make(op.name, **{f.name: f.lo for f in op.fields}))
        cases += [_random_instr(op, rng) for _ in range(20)]
    bad = []

    async def bench(ctx):
        for ins in cases:
            word = isa.encode(ins)
            ctx.set(dut.word, word)
            assert ctx.get(dut.legal) == 1
            k = [op.name for op in isa.OPS].index(ins.op)
            assert ctx.get(dut.op) == 1 << k
            ref = isa.decode(word)
            view = dut.fields[ins.op]
            for name, v in ref.args:
                if ctx.get(getattr(view, name)) != v:
                    bad.append((ins, name, ctx.get(getattr(view, name)), v))
            args = decode.args_of(dut.fields, ins.op)
            for name, v in ref.args:
                if ctx.get(getattr(args, name)) != v:
                    bad.append((ins, "args." + name))
        for opcode in range(1 << isa.OPCODE_BITS):
            word = opcode | (random.Random(opcode).getrandbits(isa.INSTR_BITS) >> isa.OPCODE_BITS
                             << isa.OPCODE_BITS)
            ctx.set(dut.word, word)
            legal = opcode in isa.BY_OPCODE
            assert ctx.get(dut.legal) == legal, opcode
            if not legal:
                assert ctx.get(dut.op) == 0
    _run(dut, bench)
    assert not bad, bad[:5]


# ---------------- address-range check ----------------

def test_range_check_matches_isa():
    """RangeCheck (the RTL's dispatch check) agrees with isa.range_violation (the ISS's)
    on random instructions whose fields cluster around the memories' ends, after its
    CHECK_CYCLES."""
    from hwq.arch.config import load_hw_config
    from hwq.rtl.check import RangeCheck
    from hwq.arch.timing import CHECK_CYCLES
    cfg = load_hw_config("small")
    dut = RangeCheck(cfg)
    rng = random.Random(3)
    sizes = [cfg.dram_words, cfg.obuf_depth, cfg.abuf_depth, cfg.bbuf_depth, 0, 1]

    def value(f):
        r = rng.random()
        if r < 0.4:
            return rng.randint(0, min(f.hi, 6))
        if r < 0.8:
            return max(f.lo, min(f.hi, rng.choice(sizes) - rng.randint(0, 40)))
        return rng.randint(f.lo, f.hi)

    cases = [isa.Instr.make(op.name, **{f.name: value(f) for f in op.fields})
             for op in isa.OPS for _ in range(300)]
    bad = []

    async def bench(ctx):
        for ins in cases:
            ctx.set(dut.fields.as_value(), isa.encode(ins))
            ctx.set(dut.op, 1 << [op.name for op in isa.OPS].index(ins.op))
            ctx.set(dut.run, 1)
            for _ in range(CHECK_CYCLES):
                await ctx.tick()
            ctx.set(dut.run, 0)
            want = isa.range_violation(ins, cfg) is None
            if ctx.get(dut.in_range) != want:
                bad.append((ins, want))
            await ctx.tick()
    _run(dut, bench, clock=True)
    assert not bad, bad[:5]
    assert sum(isa.range_violation(i, cfg) is None for i in cases) not in (0, len(cases))


def test_range_check_schedule_is_tight(monkeypatch):
    """The ISA's extents fill the check's slots: with one slot fewer (CHECK_CYCLES - 1)
    the products do not fit -- MAXPOOL's product of products, issued in the last slot,
    waits for its pipelined operand -- so CHECK_CYCLES is no longer than it must be."""
    from amaranth.hdl import Fragment

    from hwq.arch.config import load_hw_config
    from hwq.rtl import check
    cfg = load_hw_config("small")
    Fragment.get(check.RangeCheck(cfg), None)
    monkeypatch.setattr(check, "STAGES", check.STAGES - 1)
    with pytest.raises(ValueError, match="raise CHECK_CYCLES"):
        Fragment.get(check.RangeCheck(cfg), None)


# ---------------- DMA: LOAD and STORE units against the ISS ----------------

DMA_CFG = dict(name="dma", rows=4, cols=8, bus_bytes=2, ibuf_depth=256, wbuf_depth=128,
               bbuf_depth=64, abuf_depth=64, obuf_depth=256, dram_words=1024)


def _dma_cfg(**changes):
    from hwq.arch.config import HwConfig
    return HwConfig(**{**DMA_CFG, **changes})


def _random_load(cfg, rng):
    while True:
        buf = rng.randrange(4)
        f = dict(buf=buf, sram=rng.randrange(24), dram=rng.randrange(200),
                 y_size=rng.randrange(0, 4), x_size=rng.randrange(0, 5),
                 y_stride=rng.randrange(0, 40), x_stride=rng.choice([0, 1, 3, cfg.entry_words(isa.LOAD_TARGETS[buf])]),
                 **{p: rng.choice([0, 0, 1, 2, 7]) for p in ("pad_top", "pad_bottom", "pad_left", "pad_right")})
        ins = isa.Instr.make("LOAD", **f)
        if isa.range_violation(ins, cfg) is None:
            return ins


async def _run_dma(ctx, dut, ins, rng, stall, each_cycle) -> int:
    """Start a DMA unit on `ins` and clock it to `done`, with the memory dropping `ready`
    on random cycles when `stall`; `each_cycle(ready)` plays the memory and the buffer
    before each edge. Returns the cycles from start to done."""
    ctx.set(dut.args.as_value(), isa.encode(ins) >> isa.OPCODE_BITS)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    cycles = 1
    while True:
        ready = int(rng.random() < 0.6) if stall else 1
        ctx.set(dut.dram.ready, ready)
        each_cycle(ready)
        done = ctx.get(dut.done)
        await ctx.tick()
        if done:
            return cycles
        cycles += 1
        assert cycles < 5000


def _dma_verdict(cfg, ins, same: bool, cycles: int, stall: bool, failures: list) -> None:
    from hwq.arch import timing as cycle_model
    if not same:
        failures.append((isa.format_instr(ins), "data"))
    expect = cycle_model.instr_cycles(ins, cfg) - cycle_model.fetch_cycles(cfg)
    if not stall and cycles != expect:
        failures.append((isa.format_instr(ins), cycles, expect))


@pytest.mark.parametrize("reads,late", [(1, False), (4, False), (4, True), (2, True)],
                         ids=["next-cycle", "queued", "queued-late", "queued-2-late"])
@pytest.mark.parametrize("stall", [False, True], ids=["ready", "backpressure"])
def test_load_unit(stall, reads, late):
    """LoadUnit: strides (0 included), every padding, entries of 1..16 bus words, with the
    memory dropping `ready` on random cycles; with reads in flight, a memory answering
    each read in the next cycle or 1..5 cycles later (in order). The buffer contents equal
    the ISS's and, from a memory that neither stalls nor lags, the cycle count equals the
    cycle model's."""
    from hwq.rtl.dma import LoadUnit
    from hwq.sim.iss import Machine
    cfg = _dma_cfg(dram_reads=reads)
    rng = random.Random(11 + stall + 2 * late + reads)
    dram = np.random.default_rng(5).integers(0, 256, cfg.dram_words * cfg.bus_bytes, dtype=np.uint8)
    dut = LoadUnit(cfg)
    B = cfg.bus_bytes
    programs = [_random_load(cfg, rng) for _ in range(25)]
    failures = []

    async def bench(ctx):
        for ins in programs:
            name = isa.LOAD_TARGETS[ins["buf"]]
            m = Machine(cfg, dram.tobytes())
            model = m.buf[name].copy().view(np.uint8).reshape(m.buf[name].shape[0], -1)
            pending = [0]
            answers, clock = [], [0]            # reads in flight: [cycle due, data]

            def memory(ready):
                clock[0] += 1
                if reads == 1:
                    ctx.set(dut.dram.rdata, pending[0])
                else:
                    now = bool(answers) and answers[0][0] <= clock[0]
                    ctx.set(dut.dram.rvalid, int(now))
                    if now:
                        ctx.set(dut.dram.rdata, answers.pop(0)[1])
                en, addr, data = ctx.get(dut.wr.en), ctx.get(dut.wr.addr), ctx.get(dut.wr.data)
                for k in range(cfg.entry_words(name)):
                    if en >> k & 1:
                        model[addr, k * B:(k + 1) * B] = np.frombuffer(
                            ((data >> (8 * B * k)) & ((1 << 8 * B) - 1)).to_bytes(B, "little"), np.uint8)
                if ctx.get(dut.dram.re) and ready:
                    a = ctx.get(dut.dram.addr)
                    pending[0] = int.from_bytes(dram[a * B:(a + 1) * B].tobytes(), "little")
                    due = clock[0] + 1 + (rng.randrange(5) if late else 0)
                    answers.append([max([due] + [d for d, _ in answers[-1:]]), pending[0]])

            cycles = await _run_dma(ctx, dut, ins, rng, stall, memory)
            m.LOAD(**ins.fields)
            want = m.buf[name].view(np.uint8).reshape(model.shape)
            _dma_verdict(cfg, ins, np.array_equal(model, want), cycles, stall or late, failures)
    _run(dut, bench, clock=True)
    assert not failures, failures[:5]


@pytest.mark.parametrize("stall", [False, True], ids=["ready", "backpressure"])
def test_store_unit(stall):
    """StoreUnit: strides (0: the last write wins), multi-word entries, back-pressure;
    DRAM after the run equals the ISS's."""
    from hwq.rtl.dma import StoreUnit
    from hwq.sim.iss import Machine
    cfg = _dma_cfg()
    rng = random.Random(21 + stall)
    dut = StoreUnit(cfg)
    B, E = cfg.bus_bytes, cfg.entry_words("obuf")
    obuf = np.random.default_rng(6).integers(-128, 128, (cfg.obuf_depth, cfg.cols), dtype=np.int8)
    programs = []
    while len(programs) < 25:
        ins = isa.Instr.make("STORE", sram=rng.randrange(40), dram=rng.randrange(300),
                             y_size=rng.randrange(0, 4), x_size=rng.randrange(0, 5),
                             y_stride=rng.randrange(0, 30), x_stride=rng.choice([0, 1, E, 2 * E]))
        if isa.range_violation(ins, cfg) is None:
            programs.append(ins)
    failures = []

    async def bench(ctx):
        for ins in programs:
            m = Machine(cfg, b"")
            m.buf["obuf"][:] = obuf
            dram = m.dram.copy()
            rdata = [0]

            def memory(ready):
                ctx.set(dut.rd.data, rdata[0])
                if ctx.get(dut.dram.we) and ready:
                    a, w = ctx.get(dut.dram.addr), ctx.get(dut.dram.wdata)
                    dram[a * B:(a + 1) * B] = np.frombuffer(w.to_bytes(B, "little"), np.uint8)
                if ctx.get(dut.rd.en):
                    rdata[0] = int.from_bytes(obuf[ctx.get(dut.rd.addr)].tobytes(), "little")

            cycles = await _run_dma(ctx, dut, ins, rng, stall, memory)
            m.STORE(**ins.fields)
            _dma_verdict(cfg, ins, np.array_equal(dram, m.dram), cycles, stall, failures)
    _run(dut, bench, clock=True)
    assert not failures, failures[:5]


# ---------------- MAXPOOL unit ----------------


@pytest.mark.parametrize("overlap", [True, False])
def test_pool_unit_in_place(overlap):
    """PoolUnit with obuf played by the testbench (a synchronous read port, writes at
    the clock edge): random MAXPOOLs whose destination overlaps their source just ahead
    of the reads (each window reads what the previous windows wrote, in every position
    of the forwarding), and disjoint ones; obuf after each equals the ISS's and the
    cycles from start to done the cycle model's."""
    import dataclasses
    from hwq.rtl.pool import PoolUnit
    from hwq.sim.iss import Machine
    cfg = dataclasses.replace(_dma_cfg(), overlap=overlap)
    C, rng = cfg.cols, random.Random(41 + overlap)
    nrng = np.random.default_rng(42 + overlap)
    dut = PoolUnit(cfg)
    programs = []
    while len(programs) < 60:
        k_h, k_w, stride = rng.choice([1, 2, 3]), rng.choice([1, 2, 3]), rng.choice([1, 2])
        out_h, out_w = rng.choice([0, 1, 2, 3]), rng.choice([1, 2, 4])
        in_w = (out_w - 1) * stride + k_w + rng.randrange(2)
        src = rng.randrange(20)
        dst = src + rng.choice([-2, -1, 0, 1, 2, 3, 4, 40])
        ins = isa.Instr.make("MAXPOOL", src=src, dst=max(0, dst), out_h=out_h, out_w=out_w,
                             in_w=in_w, k_h=k_h, k_w=k_w, stride=stride)
        if isa.range_violation(ins, cfg) is None:
            programs.append(ins)
    failures = []

    async def bench(ctx):
        obuf = nrng.integers(-128, 128, (cfg.obuf_depth, C)).astype(np.int8)
        pending = 0

        def memory():
            nonlocal pending
            ctx.set(dut.rd.data, pending)
            if ctx.get(dut.rd.en):
                pending = _pack(obuf[ctx.get(dut.rd.addr)].tolist(), 8)
            if ctx.get(dut.wr.en):        # after the read: a read sees the old entry
                obuf[ctx.get(dut.wr.addr)] = _unpack(ctx.get(dut.wr.data), 8, C)

        for ins in programs:
            m = Machine(cfg, b"")
            m.buf["obuf"][:] = obuf
            m.MAXPOOL(**ins.fields)
            failures.extend(await _run_unit(ctx, dut, cfg, ins, memory, overlap, 200, obuf, m))
    _run(dut, bench, clock=True)
    assert not failures, failures[:5]
