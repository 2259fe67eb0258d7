"""GemmUnit on Amaranth's simulator: back-to-back GEMMs against the sequential ISA
semantics, and the exact cycle contract of gemm.py's timeline (busy, wbuf/ibuf reads,
abuf reads/writes, draining, done)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.rtl.gemm import gemm_latency
from hwq.rtl.gemm import GemmUnit
from hwq.arch.timing import read_regs

WBUF, IBUF, ABUF = 32, 64, 64


def _pack(vals, bits):
    out = 0
    for k, v in enumerate(vals):
        out |= (int(v) & ((1 << bits) - 1)) << (k * bits)
    return out


def _unpack(word, bits, n):
    out = []
    for k in range(n):
        v = (word >> (k * bits)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


def _cfg(R, C):
    """With overlap, which back-to-back GEMMs need (without it the front end starts one
    when every unit is idle, and the unit reads the args after the start): the abuf read
    register (timing.read_regs) and multipliers' registers (timing.mul_regs) with it."""
    return HwConfig(name="gemm", rows=R, cols=C, bus_bytes=1, ibuf_depth=IBUF,
                    wbuf_depth=WBUF, bbuf_depth=8, abuf_depth=ABUF, obuf_depth=8, dram_words=64,
                    overlap=True)


def _reference(gemms, wbuf, ibuf, abuf, R):
    """isa.py's GEMM pseudo-code, one instruction after the other (int64, wrapped)."""
    abuf = abuf.astype(np.int64).copy()
    for f in gemms:
        Wt = wbuf[f["wgt"]:f["wgt"] + R].astype(np.int64)
        for o in range(f["n_outer"]):
            for i in range(f["n_inner"]):
                x = ibuf[f["inp"] + o * f["inp_so"] + i * f["inp_si"]].astype(np.int64)
                a = f["acc"] + o * f["acc_so"] + i * f["acc_si"]
                new = (0 if f["reset"] else abuf[a]) + x @ Wt
                abuf[a] = (new + (1 << 31)) % (1 << 32) - (1 << 31)
    return abuf


def _expected(cfg, gemms, starts):
    """The cycle contract of gemm.py for GEMM g started in cycle starts[g]."""
    R, C = cfg.rows, cfg.cols
    L, early = gemm_latency(cfg), read_regs(cfg)
    busy, drain, wb, ib, ard, awr = set(), set(), [], [], [], []
    active_by = []                           # (start, cycles busy or draining)
    for f, S in zip(gemms, starts):
        V = f["n_outer"] * f["n_inner"]
        O = max(V + 1, R, C)
        act = set(range(S + 1, S + O))
        busy |= act
        if V:
            wb += [(S + 1 + r, f["wgt"] + r) for r in range(R)]
        for v in range(V):
            o, i = divmod(v, f["n_inner"])
            ib.append((S + 2 + v, f["inp"] + o * f["inp_so"] + i * f["inp_si"]))
            a = f["acc"] + o * f["acc_so"] + i * f["acc_si"]
            ard.append((S + 2 + v + L - early, a))
            awr.append((S + 3 + v + L, a))
            d = set(range(S + 2 + v, S + 4 + v + L))
            drain |= d
            act |= d
        active_by.append((S, act))
    end = max(max(busy | drain, default=0), max(starts)) + 2
    done = set()
    for t in range(end):
        old = [act for S, act in active_by if S < t]   # absent a start in cycle t
        if any(t in a for a in old) and not any(t + 1 in a for a in old):
            done.add(t)
    return dict(busy=busy, draining=drain, done=done, vector={c for c, _ in ib},
                wbuf=sorted(wb), ibuf=sorted(ib), abuf_rd=sorted(ard), abuf_wr=sorted(awr)), end


def _run_gemms(cfg, gemms, gaps, seed):
    """Start gemms[g] `gaps[g]` cycles after busy is first seen low (0: at once), with
    the args scrambled outside start cycles; return what happened and the final abuf."""
    R, C = cfg.rows, cfg.cols
    rng = np.random.default_rng(seed)
    wbuf = rng.integers(-128, 128, (WBUF, C))
    wbuf[0] = -128
    ibuf = rng.integers(-128, 128, (IBUF, R))
    ibuf[0] = -128
    abuf = rng.integers(-(1 << 31), 1 << 31, (ABUF, C))
    model = abuf.copy()
    dut = GemmUnit(cfg)
    words = [isa.encode(isa.Instr.make("GEMM", **f)) >> isa.OPCODE_BITS for f in gemms]
    prng = random.Random(seed)
    seen = {k: [] for k in ("busy", "draining", "done", "vector", "wbuf", "ibuf",
                            "abuf_rd", "abuf_wr", "abuf_rw")}
    starts = []

    async def bench(ctx):
        rd = {"w": 0, "i": 0, "a": 0}
        g, wait, t, idle = 0, None, 0, 0
        while True:
            ctx.set(dut.wbuf.data, rd["w"])
            ctx.set(dut.ibuf.data, rd["i"])
            ctx.set(dut.abuf_rd.data, rd["a"])
            busy = ctx.get(dut.busy)
            start = 0
            if g < len(gemms) and not busy:
                wait = gaps[g] if wait is None else wait
                if wait == 0:
                    start, wait = 1, None
                    starts.append(t)
                    ctx.set(dut.args.as_value(), words[g])
                    g += 1
                else:
                    wait -= 1
            if not start:       # the unit must not look at args outside the start cycle
                ctx.set(dut.args.as_value(), prng.getrandbits(len(dut.args.as_value())))
            ctx.set(dut.start, start)
            for k in ("busy", "draining", "done", "vector"):
                if ctx.get(getattr(dut, k)):
                    seen[k].append(t)
            if ctx.get(dut.wbuf.en):
                a = ctx.get(dut.wbuf.addr)
                seen["wbuf"].append((t, a))
                rd["w"] = _pack(wbuf[a], 8)
            if ctx.get(dut.ibuf.en):
                a = ctx.get(dut.ibuf.addr)
                seen["ibuf"].append((t, a))
                rd["i"] = _pack(ibuf[a], 8)
            ra = ctx.get(dut.abuf_rd.addr) if ctx.get(dut.abuf_rd.en) else None
            if ra is not None:
                seen["abuf_rd"].append((t, ra))
                rd["a"] = _pack(model[ra], 32)            # old value: not transparent
            if ctx.get(dut.abuf_wr.en):
                a = ctx.get(dut.abuf_wr.addr)
                seen["abuf_wr"].append((t, a))
                if a == ra:     # the read gets the old value: the unit must forward the new
                    seen["abuf_rw"].append((t, a))
                model[a] = _unpack(ctx.get(dut.abuf_wr.data), 32, C)
            await ctx.tick()
            t += 1
            idle = idle + 1 if not (ctx.get(dut.busy) or ctx.get(dut.draining)) else 0
            if g == len(gemms) and t > starts[-1] + 2 and idle > R + C + 4:
                break           # (and nothing happened in the idle cycles)
            assert t < 2000

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = _reference(gemms, wbuf, ibuf, abuf, R)
    return seen, starts, model, want


def _check(cfg, gemms, gaps, seed=0):
    """Returns the (cycle, entry) of each read of an entry written in the same cycle."""
    R, C = cfg.rows, cfg.cols
    seen, starts, got, want = _run_gemms(cfg, gemms, gaps, seed)
    exp, end = _expected(cfg, gemms, starts)
    for k in ("busy", "draining", "done", "vector"):
        assert set(seen[k]) == exp[k], (k, sorted(set(seen[k]) ^ exp[k]))
    for k in ("wbuf", "ibuf", "abuf_rd", "abuf_wr"):
        assert seen[k] == exp[k], (k, seen[k], exp[k])
    # back-to-back: each start is the first cycle busy is low after the previous start
    for g in range(1, len(gemms)):
        V = gemms[g - 1]["n_outer"] * gemms[g - 1]["n_inner"]
        assert starts[g] - starts[g - 1] == max(V + 1, R, C) + gaps[g]
    assert np.array_equal(got, want.astype(np.int64)), np.argwhere(got != want)[:5]
    return seen["abuf_rw"]


def _gemm(n_outer, n_inner, reset, acc, acc_si=1, acc_extra=0, wgt=0, inp=0, inp_so=3,
          inp_si=1):
    return dict(wgt=wgt, inp=inp, acc=acc, reset=reset, n_outer=n_outer, n_inner=n_inner,
                inp_so=inp_so, inp_si=inp_si, acc_so=n_inner * acc_si + acc_extra,
                acc_si=acc_si)


@pytest.mark.parametrize("R,C", [(4, 4), (2, 6), (6, 3)])
def test_gemm_back_to_back_fixed(R, C):
    """V = 0, 1, < R, > R, conv-tap style accumulation into the same entries with new
    weights each time, started at the first cycle busy is low, then with gaps."""
    gemms = [
        _gemm(2, 3, 1, acc=0, wgt=0, inp=0),          # V = 6, reset
        _gemm(2, 3, 0, acc=0, wgt=R, inp=5),          # accumulate into the same 6 entries
        _gemm(1, 1, 0, acc=5, wgt=1, inp=4),          # the entry written last, at once
        _gemm(1, 1, 0, acc=2, wgt=2 * R, inp=9),      # V = 1
        _gemm(0, 4, 0, acc=0, wgt=3, inp=0),          # V = 0
        _gemm(1, R - 1, 0, acc=1, wgt=1, inp=2),      # V < R
        _gemm(3, R, 0, acc=0, acc_si=2, wgt=5, inp=1, inp_so=0, inp_si=2),   # V > R
        _gemm(1, 2, 1, acc=8, wgt=7, inp=30),
    ]
    cfg = _cfg(R, C)
    same = _check(cfg, gemms, [0] * len(gemms))
    # the read goes out a cycle early: the third GEMM reads entry 5 as the second writes it
    assert [a for _, a in same] == [5], same
    _check(cfg, gemms, [3, 1, 0, 0, 2, 5, 0, 1], seed=1)


@st.composite
def _programs(draw):
    R = draw(st.integers(2, 8))
    C = draw(st.integers(2, 8))
    gemms, gaps = [], []
    for _ in range(draw(st.integers(2, 4))):
        n_inner = draw(st.integers(0, 5))
        n_outer = draw(st.integers(0, 3))
        acc_si = draw(st.integers(1, 2))
        gemms.append(_gemm(n_outer, n_inner, draw(st.integers(0, 1)),
                           acc=draw(st.sampled_from([0, 3, 8])), acc_si=acc_si,
                           acc_extra=draw(st.integers(0, 1)), wgt=draw(st.integers(0, WBUF - R)),
                           inp=draw(st.integers(0, 20)), inp_so=draw(st.integers(0, 8)),
                           inp_si=draw(st.integers(0, 3))))
        gaps.append(draw(st.sampled_from([0, 0, 0, 1, 4])))
    return _cfg(R, C), gemms, gaps, draw(st.integers(0, 1000))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_programs())
def test_gemm_back_to_back_random(prog):
    cfg, gemms, gaps, seed = prog
    _check(cfg, gemms, gaps, seed)
