"""Whole-accelerator programs on the generated RTL (Verilator and Icarus through cocotb)
against the ISS: final DRAM regions bit for bit, status, pc, and every performance
counter (cycles exactly, by hwq/sim/cycles.py).

Every test batches its programs as jobs of one run_rtl call (one simulator process).
DRAM and buffers persist from job to job in the RTL, so the reference is one ISS
Machine that runs the same jobs in the same order.
"""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest

from hwq.arch import isa
from hwq.arch.requant import ROUND_MODES
from hwq.arch.config import HwConfig, load_hw_config
from hwq.arch.perf import COUNTERS, FRONT_END
from hwq.arch import timing as cycle_model
from hwq.sim.iss import Machine
from hwq.sim.rtl_sim import ensure_build, run_rtl

pytestmark = pytest.mark.slow

I = isa.Instr.make
CONFIGS = ("default", "small", "tall")
_NO_ICARUS = pytest.mark.skipif(not shutil.which("iverilog"), reason="Icarus Verilog not installed")


def _case(sim, config):
    return pytest.param(sim, config, marks=[_NO_ICARUS] if sim == "icarus" else [],
                        id=f"{config}-{sim}")

# DRAM map of the test programs (words): scratch, program, data, outputs
SCRATCH, PROG, DATA, OUT, END_ = 0, 64, 512, 1024, 1536
FUZZ = int(os.environ.get("HWQ_RTL_FUZZ", "40"))   # random programs per config (Verilator)


def _reads(cfg):
    return [(0, END_ * cfg.bus_bytes), (cfg.dram_words - 16, 16 * cfg.bus_bytes)]


def _job(cfg, program, data: bytes = b"", data_addr: int = DATA):
    blob = isa.to_bytes(program)
    assert len(blob) <= (DATA - PROG) * cfg.bus_bytes
    writes = [(PROG, blob)]
    if data:
        writes.append((data_addr, data))
    return {"writes": writes, "reads": _reads(cfg)}


def _iss_runs(cfg, image, jobs):
    m = Machine(cfg, image)
    bus = cfg.bus_bytes
    out = []
    for job in jobs:
        for word, blob in job["writes"]:
            idx = (word * bus + np.arange(len(blob))) % m.dram.size
            m.dram[idx] = np.frombuffer(blob, np.uint8)
        r = m.run(PROG)
        reads = []
        for word, n in job["reads"]:
            idx = (word * bus + np.arange(n)) % m.dram.size
            reads.append(m.dram[idx].tobytes())
        out.append((r, reads))
    return out


def _compare(cfg, jobs, sim, image=b"", **kw):
    got = run_rtl(cfg, image, jobs, sim=sim, start_pc=PROG, **kw)
    want = _iss_runs(cfg, image, jobs)
    assert len(got) == len(jobs)
    for k, (g, (w, wreads)) in enumerate(zip(got, want)):
        assert g.status == w.status, (k, g.status, w.status)
        assert g.pc == w.pc, (k, g.pc, w.pc)
        for region, (gb, wb) in enumerate(zip(g.reads, wreads)):
            if gb != wb:
                ga, wa = np.frombuffer(gb, np.uint8), np.frombuffer(wb, np.uint8)
                bad = np.flatnonzero(ga != wa)
                raise AssertionError(
                    f"job {k} region {region}: {bad.size} bytes differ, first at byte "
                    f"{bad[0]} (word {bad[0] // cfg.bus_bytes}): rtl {ga[bad[:8]]} iss {wa[bad[:8]]}")
        if not kw.get("stall"):
            assert g.cycles == w.cycles, (k, g.cycles, w.cycles)
            assert g.counters == w.counters, (k, g.counters, w.counters)
        else:
            assert g.cycles >= w.cycles
            for name in ("instructions", "macs"):
                assert g.counters[name] == w.counters[name], (k, name, g.counters, w.counters)
            front = sum(g.counters[u] for u in FRONT_END)
            assert front == g.cycles and g.counters["stall_mem"] > 0, g.counters
    return got, want


# ---------------------------------------------------------------- hand-built programs

def conv_program(cfg, H, W, shift, mode, lo, hi):
    """A 3x3 'same' convolution of an H x W x rows image to cols channels, then bias,
    requantization, 2x2 max-pool and stores; the input load pads one pixel all round."""
    R, C = cfg.rows, cfg.cols
    Ei, Ew = cfg.entry_words("ibuf"), cfg.entry_words("wbuf")
    x_at, w_at = DATA, DATA + H * W * Ei
    b_at = w_at + 9 * R * Ew
    Wp = W + 2
    prog = [
        I("LOAD", buf=0, sram=0, dram=x_at, y_size=H, x_size=W, y_stride=W * Ei, x_stride=Ei,
          pad_top=1, pad_bottom=1, pad_left=1, pad_right=1),
        I("LOAD", buf=1, sram=0, dram=w_at, y_size=9, x_size=R, y_stride=R * Ew, x_stride=Ew,
          pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
        I("LOAD", buf=2, sram=3, dram=b_at, y_size=1, x_size=1, y_stride=0, x_stride=0,
          pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
    ]
    for tap in range(9):
        ky, kx = divmod(tap, 3)
        prog.append(I("GEMM", wgt=tap * R, inp=ky * Wp + kx, acc=0, reset=int(tap == 0),
                      n_outer=H, n_inner=W, inp_so=Wp, inp_si=1, acc_so=W, acc_si=1))
    Ho, Wo = H // 2, W // 2
    eo = cfg.entry_words("obuf")
    prog += [
        I("POST", acc=0, out=0, bias=3, n=H * W, shift=shift, round=ROUND_MODES[mode], lo=lo, hi=hi),
        I("MAXPOOL", src=0, dst=200, out_h=Ho, out_w=Wo, in_w=W, k_h=2, k_w=2, stride=2),
        I("STORE", sram=0, dram=OUT, y_size=H, x_size=W, y_stride=W * eo, x_stride=eo),
        I("STORE", sram=200, dram=OUT + H * W * eo, y_size=Ho, x_size=Wo, y_stride=Wo * eo,
          x_stride=eo),
        I("END"),
    ]
    rng = np.random.default_rng(H * 100 + W + shift)
    x = rng.integers(-20, 21, H * W * R, dtype=np.int8)
    x[:R] = -128                                   # one extreme pixel
    x = x.tobytes()
    w = rng.integers(-20, 21, 9 * R * C, dtype=np.int8).tobytes()
    b = rng.integers(-(1 << 8), 1 << 8, C, dtype=np.int32).tobytes()
    data = x + w + b
    return prog, data


def dma_program(cfg):
    """LOAD/STORE corner cases: strides, x_stride 0, all paddings, wide entries into bbuf
    ending exactly at the end of DRAM, a block ending at the last buffer entry, a STORE
    ending at the last DRAM word, overlapping stores."""
    eo, Eb = cfg.entry_words("obuf"), cfg.entry_words("bbuf")
    D = cfg.obuf_depth
    nw = cfg.dram_words
    return [
        # obuf <- 3x4 block with strides, pads 2/1/3/0
        I("LOAD", buf=3, sram=5, dram=DATA + 3, y_size=3, x_size=4, y_stride=17, x_stride=2 * eo,
          pad_top=2, pad_bottom=1, pad_left=3, pad_right=0),
        # x_stride 0 repeats one element; max paddings; 16 x 16 entries up to obuf's end
        I("LOAD", buf=3, sram=D - 16 * 16, dram=DATA + 40, y_size=2, x_size=2, y_stride=3,
          x_stride=0, pad_top=7, pad_bottom=7, pad_left=7, pad_right=7),
        I("STORE", sram=0, dram=OUT, y_size=4, x_size=20, y_stride=20 * eo, x_stride=eo),
        I("STORE", sram=D - 38, dram=OUT + 100 * eo, y_size=2, x_size=19, y_stride=19 * eo,
          x_stride=eo),
        # only padding; y_size 0
        I("LOAD", buf=3, sram=100, dram=DATA, y_size=0, x_size=3, y_stride=1, x_stride=1,
          pad_top=1, pad_bottom=1, pad_left=1, pad_right=1),
        I("STORE", sram=98, dram=OUT + 200 * eo, y_size=1, x_size=14, y_stride=0, x_stride=eo),
        # bias entries (several words each) read up to the last DRAM word
        I("LOAD", buf=2, sram=0, dram=nw - 2 * Eb, y_size=1, x_size=2,
          y_stride=0, x_stride=Eb, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
        I("POST", acc=0, out=300, bias=1, n=2, shift=0, round=0, lo=-128, hi=127),
        # STORE with x_stride 0 (last write wins), and one ending at the last DRAM word
        I("STORE", sram=0, dram=OUT + 300 * eo, y_size=2, x_size=3, y_stride=eo, x_stride=0),
        I("STORE", sram=300, dram=nw - 4 * eo, y_size=1, x_size=4, y_stride=0, x_stride=eo),
        I("END"),
    ]


def gemm_post_program(cfg, rng):
    """GEMM with reset / accumulate, loops with steps, up to abuf's last entry; POST in
    every mode and clamp, shifts -32..31."""
    R, C = cfg.rows, cfg.cols
    Ei, Ew, Eb = cfg.entry_words("ibuf"), cfg.entry_words("wbuf"), cfg.entry_words("bbuf")
    A = cfg.abuf_depth
    prog = [
        I("LOAD", buf=0, sram=0, dram=DATA, y_size=1, x_size=40, y_stride=0, x_stride=Ei,
          pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
        I("LOAD", buf=1, sram=0, dram=DATA + 40 * Ei, y_size=1, x_size=2 * R, y_stride=0,
          x_stride=Ew, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
        I("LOAD", buf=2, sram=0, dram=DATA + 40 * Ei + 2 * R * Ew, y_size=1, x_size=4,
          y_stride=0, x_stride=Eb, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
        I("GEMM", wgt=0, inp=0, acc=A - 12, reset=1, n_outer=3, n_inner=4, inp_so=10, inp_si=2,
          acc_so=4, acc_si=1),
        I("GEMM", wgt=R, inp=1, acc=A - 12, reset=0, n_outer=3, n_inner=4, inp_so=10, inp_si=2,
          acc_so=4, acc_si=1),
        I("GEMM", wgt=R, inp=3, acc=A - 12, reset=0, n_outer=1, n_inner=12, inp_so=0, inp_si=1,
          acc_so=0, acc_si=1),
        I("GEMM", wgt=0, inp=0, acc=20, reset=1, n_outer=0, n_inner=5, inp_so=0, inp_si=1,
          acc_so=0, acc_si=1),
    ]
    out = 0
    for mode, code in ROUND_MODES.items():
        for shift in (-32, -3, 0, 1, 4, 9, 31):
            lo, hi = [(-128, 127), (0, 127), (0, 6), (-127, 50)][rng.randrange(4)]
            prog.append(I("POST", acc=A - 12, out=out, bias=rng.randrange(4), n=12, shift=shift,
                          round=code, lo=lo, hi=hi))
            out += 12
    eo = cfg.entry_words("obuf")
    prog.append(I("STORE", sram=0, dram=OUT, y_size=1, x_size=out, y_stride=0, x_stride=eo))
    prog.append(I("END"))
    # small values, so that most results land inside int8 and rounding ties occur
    x = np.random.default_rng(5).integers(-6, 7, 40 * R, dtype=np.int8).tobytes()
    w = np.random.default_rng(6).integers(-6, 7, 2 * R * C, dtype=np.int8).tobytes()
    b = np.random.default_rng(7).integers(-200, 201, 4 * C, dtype=np.int32)
    b[:C] = [(1 << 31) - 1 - c if c % 2 else -(1 << 31) + c for c in range(C)]  # POST wraps
    b = b.tobytes()
    return prog, x + w + b


def _random_data(cfg, seed, small=False):
    """Random bytes for the data region; `small`: int8 values in [-8, 8], so that sums stay
    inside the int8 range after the shifts and rounding ties happen."""
    rng = np.random.default_rng(seed)
    n = (OUT - DATA) * cfg.bus_bytes
    if small:
        return rng.integers(-8, 9, n, dtype=np.int8).tobytes()
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------- random programs

def _sram(rng, depth, wild):
    """A buffer address: mostly low, some near the end (the extents decide whether the
    instruction fits); `wild` programs also draw anywhere in the field (mostly out of
    range: status address_range)."""
    r = rng.random()
    if r < 0.8:
        return rng.randrange(48)
    if r < 0.9 or not wild:
        return max(0, depth - rng.randrange(1, 60))
    return rng.randrange(1 << isa.SRAM_ADDR_BITS)


def random_program(cfg, rng, n=14, wild=False):
    """A legal stream with hazards (later instructions read what earlier ones wrote, in
    the same buffer regions), padding edges, full and partial tiles; address near the ends
    of buffers and DRAM make some instructions leave their memory (address_range)."""
    prog = []

    def addr(depth):
        return _sram(rng, depth, wild)
    while len(prog) < n:
        kind = rng.choice(["LOAD", "LOAD", "LOAD", "GEMM", "GEMM", "POST", "MAXPOOL", "STORE"])
        if kind == "LOAD":
            buf = rng.randrange(4)
            name = isa.LOAD_TARGETS[buf]
            pads = [rng.choice([0, 0, 1, 2, 7]) for _ in range(4)]
            ys, xs = rng.randrange(0, 5), rng.randrange(0, 7)
            if ys + pads[0] + pads[1] == 0 or xs + pads[2] + pads[3] == 0:
                pads = [1, 0, 1, 0]    # the ISS cannot do an empty block (numpy reshape)
            prog.append(I("LOAD", buf=buf, sram=addr(getattr(cfg, f"{name}_depth")),
                          dram=rng.choice([DATA + rng.randrange(300), cfg.dram_words - rng.randrange(1, 40)]) if wild else DATA + rng.randrange(300), y_size=ys,
                          x_size=xs, y_stride=rng.randrange(0, 24),
                          x_stride=rng.choice([0, 1, 2, cfg.entry_words(name), 3]),
                          pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2],
                          pad_right=pads[3]))
        elif kind == "GEMM":
            for _ in range(20):
                no, ni = rng.randrange(0, 5), rng.randrange(1, 6)
                acc, acc_so, acc_si = addr(cfg.abuf_depth), rng.randrange(0, 12), rng.randrange(0, 4)
                a = acc + np.arange(no)[:, None] * acc_so + np.arange(ni)[None, :] * acc_si
                if np.unique(a).size == a.size:
                    break
            else:
                continue
            prog.append(I("GEMM", wgt=addr(cfg.wbuf_depth), inp=addr(cfg.ibuf_depth),
                          acc=acc, reset=rng.randrange(2), n_outer=no, n_inner=ni,
                          inp_so=rng.randrange(0, 12), inp_si=rng.randrange(0, 4),
                          acc_so=acc_so, acc_si=acc_si, inp_unsigned=rng.randrange(2)))
        elif kind == "POST":
            # int8's clamps, uint8's (hi up to 255) and any other 9-bit one
            lo = rng.choice([-128, 0, -127, rng.randrange(-256, 256)])
            hi = rng.choice([127, 6, 255, rng.randrange(-256, 256)])
            prog.append(I("POST", acc=addr(cfg.abuf_depth), out=addr(cfg.obuf_depth),
                          bias=rng.randrange(cfg.bbuf_depth + 4), n=rng.randrange(0, 10),
                          shift=rng.choice([rng.randrange(-32, 32), rng.randrange(0, 16)]),
                          round=rng.randrange(4), lo=lo, hi=hi,
                          # without the multipliers a slope stops the run (`unsupported`)
                          slope=rng.choice([256, 256, rng.randrange(512)] if cfg.leaky_relu
                                           else [256] * 9 + [rng.randrange(512)])))
        elif kind == "MAXPOOL":
            prog.append(I("MAXPOOL", src=addr(cfg.obuf_depth), dst=addr(cfg.obuf_depth),
                          out_h=rng.randrange(0, 4), out_w=rng.randrange(1, 4),
                          in_w=rng.randrange(1, 9), k_h=rng.randrange(1, 4), k_w=rng.randrange(1, 4),
                          stride=rng.randrange(0, 4), unsigned=rng.randrange(2)))
        else:
            eo = cfg.entry_words("obuf")
            prog.append(I("STORE", sram=addr(cfg.obuf_depth),
                          dram=cfg.dram_words - rng.randrange(1, 40) if wild and rng.random() < 0.2
                          else OUT + rng.randrange(400),
                          y_size=rng.randrange(1, 4), x_size=rng.randrange(1, 6),
                          y_stride=rng.randrange(0, 30), x_stride=rng.choice([0, eo, 2 * eo, 1])))
    prog.append(I("END"))
    return prog


# ---------------------------------------------------------------- tests

# beyond configs/: multi-word obuf/ibuf entries on a 16-bit bus with a small DRAM, and
# the largest array on the widest bus
EXTRA = {
    "narrowbus": HwConfig(name="narrowbus", rows=4, cols=8, bus_bytes=2, ibuf_depth=256,
                          wbuf_depth=128, bbuf_depth=16, abuf_depth=128, obuf_depth=256,
                          dram_words=4096),
    "wide": HwConfig(name="wide", rows=16, cols=16, bus_bytes=16, ibuf_depth=512,
                     wbuf_depth=256, bbuf_depth=16, abuf_depth=256, obuf_depth=512,
                     dram_words=8192),
    # the smallest array, a 16-bit bus (bias entries 4 words)
    "tiny": HwConfig(name="tiny", rows=2, cols=2, bus_bytes=2, ibuf_depth=256, wbuf_depth=64,
                     bbuf_depth=8, abuf_depth=128, obuf_depth=256, dram_words=4096),
    # one instruction at a time, no slope multipliers (the iCE40 build)
    "serial": HwConfig(name="serial", rows=4, cols=4, bus_bytes=4, ibuf_depth=256,
                       wbuf_depth=128, bbuf_depth=16, abuf_depth=128, obuf_depth=256,
                       dram_words=4096, overlap=False, leaky_relu=False),
}


def _cfg(name):
    return EXTRA[name] if name in EXTRA else load_hw_config(name)


@pytest.mark.parametrize("sim,config", [_case(s, c) for s in ("verilator", "icarus") for c in CONFIGS]
                         + [_case("verilator", c) for c in EXTRA] + [_case("icarus", "narrowbus")])
def test_programs_match_iss(config, sim):
    cfg = _cfg(config)
    rng = random.Random(config)
    jobs = []
    # hand-built: conv + pool in every rounding mode, DMA corners, GEMM/POST sweep
    for k, (mode, (lo, hi)) in enumerate(zip(ROUND_MODES, [(-128, 127), (0, 127), (0, 6),
                                                          (-127, 127)])):
        prog, data = conv_program(cfg, 4 + (k % 2) * 2, 6, 6 + k, mode, lo, hi)
        jobs.append(_job(cfg, prog, data))
    jobs.append(_job(cfg, dma_program(cfg), _random_data(cfg, 1)))
    prog, data = gemm_post_program(cfg, rng)
    jobs.append(_job(cfg, prog, data))
    # constrained random programs (the DRAM data is rewritten every few jobs)
    r = random.Random(1234 + len(config))
    for k in range(FUZZ if sim == "verilator" else max(8, FUZZ // 5)):
        data = _random_data(cfg, 100 + k, small=k % 6 == 3) if k % 3 == 0 else b""
        jobs.append(_job(cfg, random_program(cfg, r, wild=k % 4 == 1), data))
    statuses = {w.status for w, _ in _iss_runs(cfg, b"", jobs)}
    assert {"ok", "address_range"} <= statuses, statuses
    assert ("unsupported" in statuses) == (not cfg.leaky_relu), statuses
    _compare(cfg, jobs, sim)


def test_illegal_opcodes_stop():
    """Every illegal opcode stops the run with status illegal_opcode and its pc, after
    some legal work; a following job on the same simulator still runs normally."""
    cfg = load_hw_config("small")
    jobs = []
    legal = set(isa.BY_OPCODE)
    for opcode in range(1 << isa.OPCODE_BITS):
        if opcode in legal:
            continue
        word = (random.Random(opcode).getrandbits(isa.INSTR_BITS) & ~((1 << isa.OPCODE_BITS) - 1)) | opcode
        prog = isa.to_bytes([I("LOAD", buf=3, sram=0, dram=DATA, y_size=1, x_size=3, y_stride=0,
                                 x_stride=1, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0),
                             I("STORE", sram=0, dram=OUT + opcode * 4, y_size=1, x_size=3,
                               y_stride=0, x_stride=1)])
        prog += word.to_bytes(isa.INSTR_BYTES, "little")
        jobs.append({"writes": [(PROG, prog), (DATA, bytes([opcode] * 64))], "reads": _reads(cfg)})
    jobs.append(_job(cfg, [I("END")]))
    got, want = _compare(cfg, jobs, "verilator")
    for g in got[:-1]:
        assert g.status == "illegal_opcode" and g.pc == PROG + 2 * cfg.instr_words
    assert got[-1].status == "ok" and got[-1].cycles == cycle_model.fetch_cycles(cfg)


def _edge_cases(cfg):
    """(instruction, fits) pairs: every extent of every op placed to end exactly at the
    last address of its memory (fits) and one address further (address_range)."""
    eo, Eb = cfg.entry_words("obuf"), cfg.entry_words("bbuf")
    D, A, nw = cfg.obuf_depth, cfg.abuf_depth, cfg.dram_words
    load = dict(buf=3, sram=0, dram=DATA, y_size=2, x_size=3, y_stride=10, x_stride=eo,
                pad_top=1, pad_bottom=0, pad_left=0, pad_right=1)   # 3 x 4 entries
    store = dict(sram=0, dram=OUT, y_size=2, x_size=3, y_stride=10, x_stride=eo)
    gemm = dict(wgt=0, inp=0, acc=0, reset=1, n_outer=2, n_inner=3, inp_so=5, inp_si=1,
                acc_so=3, acc_si=1)
    post = dict(acc=0, out=0, bias=0, n=5, shift=2, round=0, lo=-128, hi=127)
    pool = dict(src=0, dst=100, out_h=2, out_w=2, in_w=6, k_h=2, k_w=3, stride=2)
    cases = [
        ("LOAD", load, "sram", D - 12), ("LOAD", {**load, "buf": 2}, "sram", cfg.bbuf_depth - 12),
        ("LOAD", load, "dram", nw - (10 + 2 * eo + eo)),
        ("LOAD", {**load, "buf": 2, "x_stride": Eb}, "dram", nw - (10 + 2 * Eb + Eb)),
        ("STORE", store, "sram", D - 6), ("STORE", store, "dram", nw - (10 + 2 * eo + eo)),
        ("GEMM", gemm, "wgt", cfg.wbuf_depth - cfg.rows), ("GEMM", gemm, "inp", cfg.ibuf_depth - 8),
        ("GEMM", gemm, "acc", A - 6), ("POST", post, "acc", A - 5), ("POST", post, "out", D - 5),
        ("POST", post, "bias", cfg.bbuf_depth - 1),
        ("MAXPOOL", pool, "src", D - (2 * 6 + 6 + 2 + 3)), ("MAXPOOL", pool, "dst", D - 4),
    ]
    out = []
    for op, base, field, edge in cases:
        for extra, fits in ((0, True), (1, False)):
            out.append((I(op, **{**base, field: edge + extra}), fits))
    # empty loops touch nothing, wherever they point (GEMM's weights excepted)
    out += [(I("LOAD", **{**load, "y_size": 0, "pad_top": 0, "sram": 0, "dram": nw - 1}), True),
            (I("STORE", **{**store, "x_size": 0, "sram": D + 5, "dram": nw - 1}), True),
            (I("GEMM", **{**gemm, "n_outer": 0, "inp": cfg.ibuf_depth, "acc": A}), True),
            (I("POST", **{**post, "n": 0, "acc": A, "out": D, "bias": cfg.bbuf_depth}), True),
            (I("MAXPOOL", **{**pool, "k_w": 0, "src": D, "dst": D}), True)]
    return out


def test_address_range_stops():
    """Each extent one past its memory's end stops the run with status address_range at
    that instruction, having changed nothing; at the end exactly it runs (ISS and RTL
    agree on status, pc, state and cycles -- _compare)."""
    cfg = load_hw_config("small")
    jobs, cases = [], _edge_cases(cfg)
    warm = I("LOAD", buf=3, sram=0, dram=DATA, y_size=1, x_size=3, y_stride=0, x_stride=1,
             pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)
    for instr, fits in cases:
        jobs.append(_job(cfg, [warm, instr, I("END")], _random_data(cfg, 7) if not jobs else b""))
    got, want = _compare(cfg, jobs, "verilator")
    for (instr, fits), g in zip(cases, got):
        assert isa.range_violation(instr, cfg) is None if fits else not None
        assert g.status == ("ok" if fits else "address_range"), (instr, g.status)
        assert g.pc == PROG + (2 if fits else 1) * cfg.instr_words


@pytest.mark.parametrize("late", [False, True], ids=["next-cycle", "late"])
def test_reads_in_flight(late):
    """A config that keeps 4 DRAM reads in flight (dram_reads: 4): from a memory that
    answers in the next cycle, the cycles and counters the model says (_compare); from
    one that answers 1-8 cycles later, in order, and drops `ready` a quarter of the
    cycles, the same results."""
    import dataclasses
    cfg = dataclasses.replace(load_hw_config("tall"), name="tall-reads4", dram_reads=4)
    rng = random.Random(41)
    prog, data = conv_program(cfg, 4, 4, 7, "half_even", -128, 127)
    jobs = [_job(cfg, prog, data), _job(cfg, dma_program(cfg), _random_data(cfg, 3)),
            _job(cfg, random_program(cfg, rng)), _job(cfg, random_program(cfg, rng))]
    got, want = _compare(cfg, jobs, "verilator", stall=late, latency=late)
    if late:
        assert all(g.cycles > w.cycles for g, (w, _) in zip(got, want))


def test_a_next_cycle_config_refuses_a_late_memory():
    from hwq.errors import HwqError
    with pytest.raises(HwqError, match="dram_reads: 1"):
        run_rtl(load_hw_config("tall"), b"", [], latency=True)


def test_backpressure_and_timeout():
    """A DRAM that stalls a quarter of the cycles changes the timing, not the results;
    the watchdog reports a timeout and the next job runs cleanly."""
    cfg = load_hw_config("tall")
    rng = random.Random(99)
    prog, data = conv_program(cfg, 4, 4, 7, "half_even", -128, 127)
    jobs = [_job(cfg, prog, data), _job(cfg, dma_program(cfg), _random_data(cfg, 3)),
            _job(cfg, random_program(cfg, rng))]
    _compare(cfg, jobs, "verilator", stall=True)
    long = [I("GEMM", wgt=0, inp=0, acc=0, reset=1, n_outer=1023, n_inner=1, inp_so=1,
              inp_si=0, acc_so=0, acc_si=0), I("END")]
    # acc_so=0: not distinct entries -- never finishes within 200 cycles anyway
    runs = run_rtl(cfg, b"", [_job(cfg, long), _job(cfg, [I("END")])], start_pc=PROG,
                   max_cycles=200)
    assert runs[0].status == "timeout"
    assert runs[1].status == "ok" and runs[1].cycles == cycle_model.fetch_cycles(cfg)


def test_build_cache(tmp_path):
    """The second run of a config reuses the build: no rebuild, same directory."""
    cfg = load_hw_config("default")
    first = ensure_build(cfg, "verilator")
    stamp = first.path / "BUILD_OK"
    mtime = stamp.stat().st_mtime_ns
    run = run_rtl(cfg, isa.to_bytes([I("END")]), [{"writes": [], "reads": [(0, 8)]}])
    assert run[0].status == "ok"
    second = ensure_build(cfg, "verilator")
    assert not second.built and second.path == first.path
    assert stamp.stat().st_mtime_ns == mtime


def test_run_rtl_api(tmp_path, capsys):
    """Partial-word and wrapping writes keep the other bytes; reads wrap the DRAM end;
    progress lines go to stderr; simulate_program runs a list of instructions."""
    from hwq.sim.rtl_sim import simulate_program
    cfg = load_hw_config("small")            # 4-byte words
    nw = cfg.dram_words
    image = bytearray(16) + bytes(range(1, 41))        # words 4..13 hold 1..40
    image += bytes(80 - len(image)) + isa.to_bytes([I("END")])   # the program at word 20
    jobs = [
        {"writes": [(5, b"\xaa" * 5)], "reads": [(4, 16)]},               # word 5 + 1 byte of 6
        {"writes": [(nw - 1, b"\x11\x22\x33\x44\x55\x66")], "reads": [(nw - 1, 8), (0, 16)]},
    ]
    runs = run_rtl(cfg, bytes(image), jobs, start_pc=20, progress=True, work_dir=tmp_path / "run")
    assert [r.status for r in runs] == ["ok", "ok"]
    assert runs[0].reads[0] == bytes([1, 2, 3, 4]) + b"\xaa" * 5 + bytes([10, 11, 12]) + bytes(range(13, 17))
    assert runs[1].reads[0] == b"\x11\x22\x33\x44\x55\x66" + image[6:8]
    assert runs[1].pc == 20
    assert runs[1].reads[1][:16] == b"\x55\x66" + image[2:16]
    f = cycle_model.fetch_cycles(cfg)
    assert runs[1].counters == {**dict.fromkeys(COUNTERS, 0), "cycles": f, "instructions": 1,
                                "fetch": f}
    err = capsys.readouterr().err
    assert "2/2 images" in err  # the progress line reaches the last job
    assert (tmp_path / "run" / "sim.log").exists()

    prog = [I("LOAD", buf=3, sram=0, dram=100, y_size=1, x_size=2, y_stride=0, x_stride=1,
              pad_top=0, pad_bottom=0, pad_left=1, pad_right=0),
            I("STORE", sram=0, dram=200, y_size=1, x_size=3, y_stride=0, x_stride=1), I("END")]
    r = simulate_program(cfg, prog, bytes(range(8)), data_addr=100, reads=[(200, 12)])
    assert r.status == "ok" and r.reads[0] == bytes(4) + bytes(range(8))


def test_per_instruction_diff_catches_broken_rounding(tmp_path):
    """The per-instruction differential check agrees with a correct RTL to the end, and
    on an RTL built with POST's half_up rounding broken names the first bad instruction
    (index, disassembly, the note) and element, with a waveform of that instruction."""
    from hwq.sim.difftest import first_divergence
    cfg = load_hw_config("small")
    prog, data = conv_program(cfg, 4, 6, 3, "half_up", -128, 127)
    image = bytearray(DATA * cfg.bus_bytes) + data
    image[PROG * cfg.bus_bytes:PROG * cfg.bus_bytes + len(isa.to_bytes(prog))] = isa.to_bytes(prog)
    notes = {k: f"conv: step {k}" for k in range(len(prog))}
    assert first_divergence(cfg, bytes(image), PROG, notes=notes, work_dir=tmp_path / "ok") is None
    d = first_divergence(cfg, bytes(image), PROG, notes=notes, fault="post_round",
                         work_dir=tmp_path / "bad")
    post = next(k for k, ins in enumerate(prog) if ins.op == "POST")
    assert d is not None and d.index == post, d
    msg = str(d)
    assert msg.startswith(f"instruction {post} at pc {PROG + post * cfg.instr_words}: POST ")
    assert f"(conv: step {post})" in msg and "obuf entry" in msg and "lane" in msg
    assert d.window is not None and d.window.stat().st_size > 0
    times = [int(l[1:]) for l in d.window.read_text().splitlines() if l.startswith("#")]
    per_cycle = 10_000          # 10 ns clock, 1 ps timescale
    assert (times[-1] - times[0]) // per_cycle <= cycle_model.instr_cycles(prog[post], cfg) + 2


def test_hazards_hold_instructions_back():
    """Overlapping units keep the meaning of the program run one instruction at a time:
    a LOAD that would overwrite the inputs a running GEMM still streams waits for it
    (data), a STORE waits for the POST that writes its entries (data), a LOAD waits for
    a STORE on the one DRAM port (port). RTL, ISS and the overlap-free variant agree."""
    import dataclasses
    cfg = load_hw_config("default")
    R, Ei, Ew, Eb, Eo = (cfg.rows, cfg.entry_words("ibuf"), cfg.entry_words("wbuf"),
                         cfg.entry_words("bbuf"), cfg.entry_words("obuf"))
    n = 48
    load = lambda buf, sram, dram, count, ew: I(  # noqa: E731
        "LOAD", buf=buf, sram=sram, dram=dram, y_size=1, x_size=count, y_stride=0,
        x_stride=ew, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)
    gemm = lambda reset: I("GEMM", wgt=0, inp=0, acc=0, reset=reset, n_outer=1,  # noqa: E731
                           n_inner=n, inp_so=0, inp_si=1, acc_so=0, acc_si=1)
    prog = [load(0, 0, DATA, n, Ei), load(1, 0, DATA + 2 * n * Ei, R, Ew),
            load(2, 0, DATA + 2 * n * Ei + R * Ew, 1, Eb),
            gemm(1),
            load(0, 0, DATA + n * Ei, n, Ei),          # WAR on the ibuf the GEMM streams
            gemm(0),
            I("POST", acc=0, out=0, bias=0, n=n, shift=4, round=0, lo=-128, hi=127),
            I("STORE", sram=0, dram=OUT, y_size=1, x_size=n, y_stride=0, x_stride=Eo),  # RAW
            load(0, 0, OUT, n, Ei),                   # after the STORE: DRAM port, RAW
            I("END")]
    jobs = [_job(cfg, prog, _random_data(cfg, 7, small=True))]
    _, ((iss, _),) = _compare(cfg, jobs, "verilator"), _iss_runs(cfg, b"", jobs)
    assert iss.counters["stall_data"] > 0 and iss.counters["stall_port"] > 0, iss.counters
    serial = dataclasses.replace(cfg, name="default-serial", overlap=False)
    ((one, reads),) = _iss_runs(serial, b"", jobs)
    assert reads == _iss_runs(cfg, b"", jobs)[0][1]
    assert one.cycles > iss.cycles
