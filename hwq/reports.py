"""What a person reads in a package's reports/: the per-layer quantization and schedule
table, and a picture of where the quantization error is."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np

from hwq.compiler.quant.calibrate import run_float
from hwq.compiler.quant.report import histogram_png, sqnr_db
from hwq.sim.cycles import schedule, span_cycles


def layer_sqnr(b) -> dict[str, float]:
    """SQNR of every layer's int8 golden output against the float model's, in dB."""
    floats = run_float(b.graph, b.reference["input_float"])
    return {l.name: sqnr_db(floats[l.name], np.ldexp(b.reference[f"golden/{l.name}"]
                                                     .astype(np.float64), -l.f_out))
            for l in b.qmodel.layers}


def _error_plot(sqnr: dict[str, float]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sqnr)
    values = [min(v, 99.0) for v in sqnr.values()]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 3.2), dpi=100)
    ax.bar(names, values, color="#4c72b0")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title("int8 golden output error, per layer")
    ax.tick_params(axis="x", rotation=30)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def compile_report(b) -> dict[str, bytes]:
    cfg, q = b.compiled.cfg, b.qmodel
    instrs = Counter(b.compiled.layer_of)
    starts, total = schedule(b.compiled.program, cfg)
    cycles = span_cycles(b.compiled.layer_of, starts, total)
    sqnr = layer_sqnr(b)
    lines = [f"# {b.meta['name']} on {cfg.rows}x{cfg.cols} ({cfg.name}, fingerprint {cfg.fingerprint})", "",
             f"- input fix position {q.f_input}, output fix position {q.f_output}",
             f"- {len(b.compiled.program)} instructions, {total} cycles per inference (ISS cycle model), "
             f"{b.compiled.useful_macs} MACs: MAC utilization "
             f"{100 * b.compiled.useful_macs / (cfg.rows * cfg.cols * total):.1f}%", "",
             "| layer | kind | in | out | f_in | f_w | f_out | shift | act | round | instructions | cycles | SQNR dB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for l in q.layers:
        conv = l.kind == "conv"
        lines.append(f"| {l.name} | {l.kind} | {'x'.join(map(str, l.in_shape))} | "
                     f"{'x'.join(map(str, l.out_shape))} | {l.f_in} | {l.f_w if conv else ''} | "
                     f"{l.f_out} | {l.shift if conv else ''} | {l.act if conv else ''} | "
                     f"{l.round_mode if conv else ''} | {instrs[l.name]} | {cycles.get(l.name, 0)} | "
                     f"{sqnr[l.name]:.1f} |")
    lines += ["", "![per-layer error](layer_error.png)", "",
              "![calibration histograms and thresholds](calibration.png)", ""]
    return {"reports/summary.md": "\n".join(lines).encode(),
            "reports/layer_error.png": _error_plot(sqnr),
            "reports/calibration.png": histogram_png(q)}
