"""The parts of a quantization report: per-layer fix positions, thresholds and SQNR
against float, a calibration histogram per layer with its threshold marked, and, when
the config asks for them, the weight clustering's compression and the fast finetune's
per-layer errors (hwq/reports.py puts them together with the golden model's figures)."""
from __future__ import annotations

import dataclasses
import io

import numpy as np

from hwq.compiler.ir import Graph, QModel
from hwq.compiler.quant.cluster import WEIGHT_BITS, bits_per_weight, compression
from hwq.compiler.quant.config import QuantConfig
from hwq.compiler.quant.qat import FakeQuantNet


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


def fake_quant_net(graph: Graph, qmodel: QModel, config: QuantConfig) -> FakeQuantNet:
    """QAT's torch model of `qmodel` itself, in eval mode: `graph` with every conv's weights
    replaced by the QModel's, dequantized (they round back to the same int8), so weights
    that clustering or fast finetune changed are the ones evaluated. The QModel's layers
    are already rewritten (CLE, ReLU6 -> ReLU), so the net must not rewrite them again."""
    by_name = {q.name: q for q in qmodel.layers}
    layers = []
    for layer in graph.layers:
        q = by_name[layer.name]
        layer = dataclasses.replace(layer, act=q.act, bn=None)
        if q.weight is not None:
            f_w = q.f_wc if q.f_wc is not None else np.full(len(q.weight), q.f_w)
            layer.weight = np.ldexp(q.weight.astype(np.float32), -f_w[:, None, None, None].astype(np.int32))
        layers.append(layer)
    as_is = dataclasses.replace(config, switches={**config.switches, "include_cle": False,
                                                  "convert_relu6_to_relu": False})
    return FakeQuantNet(dataclasses.replace(graph, layers=layers), qmodel, as_is).eval()


def method_label(stats: dict) -> str:
    """A layer's calibration method as the report names it: `auto` with the method it
    chose (the one most calibration batches chose)."""
    return f"auto: {stats['auto_method']}" if "auto_method" in stats else stats.get("method", "")


def histogram_png(qmodel: QModel) -> bytes:
    """One panel per calibrated tensor: the |activation| histogram (log counts) with the
    chosen threshold 127 * 2**-f as a red line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [l for l in qmodel.layers if "hist" in l.stats]
    cols = min(4, max(len(layers), 1))
    rows = max(1, -(-len(layers) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=90, squeeze=False)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    for ax, l in zip(axes.ravel(), layers):
        lo, hi = l.stats["hist_edges"]
        counts = np.asarray(l.stats["hist"])
        edges = np.linspace(lo, hi, len(counts) + 1)
        ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#4c72b0", log=True)
        ax.axvline(l.stats["threshold"], color="red", lw=1.2)
        ax.set_title(f"{l.name}: {method_label(l.stats)} f={l.f_out}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("|activation| on the calibration set; red: threshold 127*2^-f", fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def summary_markdown(qmodel: QModel, sqnr: dict[str, float], row: dict | None = None) -> str:
    lines = [f"# {qmodel.name}: quantization", "",
             f"- input fix position {qmodel.f_input}, output fix position {qmodel.f_output}", "",
             "| layer | kind | method | f_in | f_w | f_out | threshold | absmax | SQNR dB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for l in qmodel.layers:
        f_w = "" if l.weight is None else (f"{l.f_wc.min()}..{l.f_wc.max()} ({len(l.f_wc)} ch)"
                                           if l.f_wc is not None else str(l.f_w))
        lines.append(f"| {l.name} | {l.kind} | {method_label(l.stats)} | {l.f_in} | {f_w} | "
                     f"{l.f_out} | {l.stats.get('threshold', 127 * 2.0 ** -l.f_out):.4g} | "
                     f"{l.stats.get('absmax', float('nan')):.4g} | {sqnr[l.name]:.1f} |")
    lines += _fast_finetune_lines(qmodel) + _clustering_lines(qmodel)
    if row:
        lines += ["", "| ledger | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in row.items()]
    lines += ["", "![calibration histograms](calibration.png)", ""]
    return "\n".join(lines)


def _fast_finetune_lines(qmodel: QModel) -> list[str]:
    tuned = [l for l in qmodel.layers if "fast_finetune_mse" in l.stats]
    if not tuned:
        return []
    lines = ["", f"fast finetune ({qmodel.quant_config['fast_finetune_steps']} steps per layer): "
             "MSE against float, on the calibration data, of the layer's output before its own rounding", "",
             "| layer | PTQ | fast finetune |", "| --- | --- | --- |"]
    return lines + [f"| {l.name} | {l.stats['fast_finetune_mse'][0]:.4g} | {l.stats['fast_finetune_mse'][1]:.4g} |"
                    for l in tuned]


def _clustering_lines(qmodel: QModel) -> list[str]:
    """The weights stored as a codebook index per weight plus the codebook of int8 codes."""
    if not qmodel.quant_config.get("weight_clustering"):
        return []
    rows = compression(qmodel)
    total = bits_per_weight(rows)
    lines = ["", f"weight clustering (k = {qmodel.quant_config['weight_clusters']}): each weight an index "
             f"into the layer's codebook of int8 codes, against {WEIGHT_BITS} bits per weight", "",
             "| layer | weights | int8 codes | index bits | codebook bits | bits/weight | compression |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.layer} | {r.weights} | {r.codes} | {r.index_bits} | {r.codes * WEIGHT_BITS} | "
              f"{r.bits_per_weight:.3f} | {r.ratio:.2f}x |" for r in rows]
    return lines + [f"| total | {sum(r.weights for r in rows)} | | | "
                    f"{sum(r.codes for r in rows) * WEIGHT_BITS} | {total:.3f} | {WEIGHT_BITS / total:.2f}x |"]
