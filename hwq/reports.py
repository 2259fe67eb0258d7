"""What a person reads: a package's reports/ (the per-layer quantization and schedule
table, a picture of where the quantization error is) and `hwq quantize`'s ledger of
float, fake-quant and integer golden accuracy."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np

import torch

from hwq.compiler.ir import Graph, QModel
from hwq.compiler.quant.float_model import run_float
from hwq.compiler.quant.report import fake_quant_net, histogram_png, sqnr_db
from hwq.sim.cycles import schedule, span_cycles
from hwq.sim.golden import run_golden


def layer_sqnr(graph: Graph, qmodel: QModel, x: np.ndarray) -> dict[str, float]:
    """SQNR (dB) of every layer's int8 golden output against the float model's on x."""
    floats = run_float(graph, x)
    golden = run_golden(qmodel, qmodel.quantize_input(x))
    return {l.name: sqnr_db(floats[l.name], np.ldexp(golden[l.name].astype(np.float64), -l.f_out))
            for l in qmodel.layers}


def ledger(graph: Graph, qmodel: QModel, config, x: np.ndarray, labels=None) -> dict[str, float]:
    """Top-1 of float, fake-quant (torch) and integer golden on x: accuracy if labels are
    given, and agreement with float; logits SQNR of the golden output."""
    top = lambda v: v.reshape(len(v), -1).argmax(axis=1)  # noqa: E731
    out = graph.layers[-1].name
    f = run_float(graph, x)[out]
    with torch.no_grad():
        fake = fake_quant_net(graph, qmodel, config)(torch.from_numpy(x)).numpy()
    golden = np.ldexp(run_golden(qmodel, qmodel.quantize_input(x))[out].astype(np.float64), -qmodel.f_output)
    row = {"images": len(x), "agreement": float((top(f) == top(golden)).mean()),
           "fake_quant_agreement": float((top(f) == top(fake)).mean()),
           "logits_sqnr_db": sqnr_db(f, golden)}
    if labels is not None:
        row.update({"float": float((top(f) == labels).mean()), "fake_quant": float((top(fake) == labels).mean()),
                    "int8": float((top(golden) == labels).mean())})
    return row


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
    sqnr = layer_sqnr(b.graph, b.qmodel, b.reference["input_float"])
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
