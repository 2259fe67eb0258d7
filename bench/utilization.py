"""MAC utilization per layer and per model on an 8x8 array: measured on the RTL
(Verilator), with the ISS cycle model's prediction beside it.

    .venv/bin/python bench/utilization.py [--sim verilator|icarus] [--skip-resnet]

Utilization = useful MACs / (rows * cols * cycles); the physical limit is 100%. Per-layer
cycles are measured, not modelled: the program runs once per layer boundary with an END
written over the first instruction of the next layer, and consecutive totals are
subtracted (the ISS column does the same with the cycle model). The units overlap, so
the rest of a layer's cycles do not split into additive losses; the columns after the
utilization show the array's other streamed cycles (`pad`: lanes that carry channel
padding) and how the front end spent the layer's cycles: fetching and checking
instructions (`fetch`), and holding an instruction back because its unit was busy
(`unit`: mostly the array, which is the point), a port was in use (`port`) or a data
hazard held (`data`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets import PlainResNet18, ResNet18, lenet  # noqa: E402

from hwq.arch import isa  # noqa: E402
from hwq.compiler.datasets import calibration_set  # noqa: E402
from hwq.compiler.frontend import trace  # noqa: E402
from hwq.compiler.lower import compile_model  # noqa: E402
from hwq.compiler.quant.pipeline import quantize  # noqa: E402
from hwq.compiler.quant.config import load_quant_config  # noqa: E402
from hwq.arch.config import load_hw_config  # noqa: E402
from hwq.sim.cycles import Timeline  # noqa: E402

from hwq.sim.rtl_sim import run_rtl  # noqa: E402

TARGET = 0.85


def compiled_nets(skip_resnet: bool):
    cfg = load_hw_config("default")
    model = lenet()
    q = quantize(trace(model, (1, 8, 8), "LeNet"), calibration_set("digits", (1, 8, 8)),
                 load_quant_config(), progress=False)
    yield "digits LeNet", q, compile_model(q, cfg), calibration_set("digits", (1, 8, 8), n=1)
    if skip_resnet:
        return
    big = dataclasses.replace(cfg, name="default-16MiB", dram_words=1 << 22)
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    for name, net in (("ResNet-18-style (no residual adds), 32x32", PlainResNet18()),
                      ("ResNet-18 (residual adds, 1x1 downsampling), 32x32", ResNet18())):
        q = quantize(trace(net, (3, 32, 32), type(net).__name__), x, load_quant_config(),
                     progress=False)
        yield name, q, compile_model(q, big), x[:1]


def boundaries(compiled) -> list[tuple[str, int]]:
    """(layer, index of its first instruction) in program order, then ('end', END)."""
    out = []
    for i, layer in enumerate(compiled.layer_of):
        if not out or out[-1][0] != layer:
            out.append((layer, i))
    return out


def rtl_layer_cycles(compiled, x_q, sim: str) -> dict[str, int]:
    cfg = compiled.cfg
    end_word = isa.to_bytes([isa.Instr.make("END")])
    prog = compiled.program_bytes
    at = lambda i: compiled.start_pc + i * cfg.instr_words  # noqa: E731
    inp = compiled.layouts["input"]
    marks = boundaries(compiled)
    jobs, prev = [], None
    for _, first in marks:
        writes = [(inp.region.word, inp.pack(x_q))]
        if prev is not None:  # put back the instruction the last job replaced
            writes.append((at(prev), prog[prev * isa.INSTR_BYTES:(prev + 1) * isa.INSTR_BYTES]))
        writes.append((at(first), end_word))
        jobs.append({"writes": writes, "reads": []})
        prev = first
    runs = run_rtl(cfg, compiled.image, jobs, sim=sim, start_pc=compiled.start_pc)
    assert all(r.status == "ok" for r in runs), [r.status for r in runs]
    totals = [r.cycles for r in runs]  # totals[0]: END alone, which every total includes
    return {layer: totals[k + 1] - totals[k] for k, (layer, _) in enumerate(marks[:-1])}


def model_layers(compiled) -> dict[str, dict[str, int]]:
    """Per layer, what the cycle model predicts for the same END-patched runs as the RTL's:
    the cycles and the performance counters between consecutive boundaries, and the
    vectors the layer streams."""
    timeline = Timeline(compiled.cfg)
    marks = dict((first, layer) for layer, first in boundaries(compiled))
    snaps = []
    for idx, instr in enumerate(compiled.program):
        if idx in marks:
            snap = copy.deepcopy(timeline)
            snap.stop()
            snaps.append((marks[idx], snap.counters))
        if instr.op != "END":
            timeline.issue(instr)
    out = {}
    for (layer, before), (_, after) in zip(snaps, snaps[1:]):
        out[layer] = {k: after[k] - before[k] for k in after}
        out[layer]["vectors"] = 0
    for layer, instr in zip(compiled.layer_of, compiled.program):
        if instr.op == "GEMM":
            out[layer]["vectors"] += instr["n_outer"] * instr["n_inner"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    for name, q, compiled, x in compiled_nets(args.skip_resnet):
        cfg = compiled.cfg
        peak = cfg.rows * cfg.cols
        t = time.perf_counter()
        rtl = rtl_layer_cycles(compiled, q.quantize_input(x), args.sim)
        seconds = time.perf_counter() - t
        model = model_layers(compiled)
        print(f"\n{name} on {cfg.rows}x{cfg.cols} ({len(compiled.program)} instructions; "
              f"RTL per-layer runs took {seconds:.1f} s on {args.sim})")
        print(f"{'layer':<10}{'MACs':>12}{'RTL cyc':>11}{'RTL util':>9}{'ISS cyc':>11}{'ISS util':>9}"
              f"   {'pad':>5}  front end: {'fetch':>6}{'unit':>6}{'port':>6}{'data':>6}   target")
        for layer in rtl:
            macs = compiled.layer_macs.get(layer, 0)
            m = model[layer]
            ru, mu = macs / (peak * rtl[layer]), macs / (peak * m["cycles"])
            pad = (m["vectors"] * peak - macs) / peak  # cycles spent on padding lanes
            share = lambda c: f"{100 * c / m['cycles']:5.0f}%"  # noqa: E731
            fills = next((l for l in q.layers if l.name == layer), None)
            verdict = ""
            if fills is not None and fills.kind == "conv" and fills.in_shape[1:] == (1, 1):
                verdict = "(linear: one vector per weight tile at batch 1)"
            elif fills is not None and fills.kind == "conv":
                full = fills.in_shape[0] >= cfg.rows and fills.out_shape[0] >= cfg.cols
                verdict = ("met" if ru >= TARGET else "MISSED") if full else "(does not fill the array)"
            print(f"{layer:<10}{macs:>12}{rtl[layer]:>11}{100 * ru:>8.1f}%{m['cycles']:>11}{100 * mu:>8.1f}%"
                  f"   {share(pad)}             {share(m['fetch'])}{share(m['stall_unit'])}"
                  f"{share(m['stall_port'])}{share(m['stall_data'])}   {verdict}")
        total_rtl = sum(rtl.values())
        total_model = sum(model[layer]["cycles"] for layer in rtl)
        print(f"{'model':<10}{compiled.useful_macs:>12}{total_rtl:>11}"
              f"{100 * compiled.useful_macs / (peak * total_rtl):>8.1f}%{total_model:>11}"
              f"{100 * compiled.useful_macs / (peak * total_model):>8.1f}%   (physical limit 100%; "
              f"target {100 * TARGET:.0f}% on conv layers that fill the array)")


if __name__ == "__main__":
    main()
