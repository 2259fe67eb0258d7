"""A sweep's results: results.csv (a row per point), pareto.png (throughput against cost,
per model and board, the Pareto front drawn) and summary.md, each written whole.

Throughput and cost are what the points measured: with bitstreams, inferences/s (at the
lower of Fmax and the board's clock) against LUTs and DSPs; without, inferences per
million cycles (the ISS cycle model) against the array's MACs (rows x cols), the cost
a bitstream would count in DSPs.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from hwq.package import write_files
from hwq.sweeps.point import COLUMNS

REPORTS = ("results.csv", "pareto.png", "summary.md")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def results_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    return buf.getvalue().encode()


def measures(rows: list[dict]) -> tuple[str, list[tuple[str, str]]]:
    """(the throughput column, [(cost column, its axis label)]) the rows have figures for."""
    if any(r.get("inferences_s") for r in rows):
        return "inferences_s", [("lut", "LUTs (iCE40: logic cells)"), ("dsp", "DSPs")]
    return "inferences_per_mcycle", [("macs", "MACs in the array (rows x cols)")]


def figures(row: dict) -> dict:
    """The row with the derived measures the plot and the summary use."""
    out = dict(row)
    if row.get("cycles"):
        out["inferences_per_mcycle"] = 1e6 / row["cycles"]
    if row.get("rows") not in (None, "") and row.get("cols") not in (None, ""):
        out["macs"] = row["rows"] * row["cols"]
    return out


def pareto_front(rows: list[dict], cost: str, gain: str) -> list[dict]:
    """The rows no other beats on both: none cheaper (or as cheap) with more throughput;
    by cost, ascending."""
    have = sorted((r for r in rows if r.get(cost) is not None and r.get(gain)),
                  key=lambda r: (r[cost], -r[gain]))
    front, best = [], float("-inf")
    for r in have:
        if r[gain] > best:
            front.append(r)
            best = r[gain]
    return front


def _groups(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """model -> board (or "no board") -> its finished rows, with their measures."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if r["status"] == "ok":
            out.setdefault(r["model"], {}).setdefault(r["board"] or "no board", []).append(figures(r))
    return out


def pareto_png(rows: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    gain, costs = measures(rows)
    groups = _groups(rows)
    fig = Figure(figsize=(4.6 * len(costs), 3.2 * max(len(groups), 1)), dpi=90)
    axes = fig.subplots(max(len(groups), 1), len(costs), squeeze=False)
    if not groups:
        axes[0][0].text(0.5, 0.5, "no point finished", ha="center", va="center")
        axes[0][0].axis("off")
    ylabel = "inferences/s" if gain == "inferences_s" else "inferences per Mcycle"
    for axrow, (model, boards) in zip(axes, groups.items()):
        for ax, (cost, xlabel) in zip(axrow, costs):
            for board, rs in boards.items():
                have = [r for r in rs if r.get(cost) is not None]
                front = pareto_front(have, cost, gain)
                dots = ax.scatter([r[cost] for r in have], [r[gain] for r in have], s=18,
                                  alpha=0.5, label=board)
                ax.step([r[cost] for r in front], [r[gain] for r in front], where="post",
                        color=dots.get_facecolor()[0], alpha=1.0, lw=1.2)
                for r in front:
                    ax.annotate(f"{r['rows']}x{r['cols']}", (r[cost], r[gain]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
            ax.set_title(f"{model}", fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("throughput against cost; lines: Pareto fronts", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _num(v, fmt: str) -> str:
    return "" if v in (None, "") else format(v, fmt)


def summary_markdown(name: str, description: str, rows: list[dict], ran: int, cached: int,
                     seconds: float) -> str:
    status = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "mismatch")}
    stages = sorted({r["stages"] for r in rows})
    lines = [f"# Sweep: {name}", "", *([description, ""] if description else []),
             f"{len(rows)} points: {status['ok']} ok, {status['failed']} failed, "
             f"{status['mismatch']} mismatch; {ran} run, {cached} from the cache "
             f"(points/), in {seconds:.1f} s. Stages: {', '.join(stages)}.", "",
             "Every point's figures: [results.csv](results.csv); throughput against cost: "
             "[pareto.png](pareto.png).", ""]
    gain, costs = measures(rows)
    fpga = gain == "inferences_s"
    lines += [f"## Pareto front: per model and board, the points no other beats on both "
              f"{costs[0][1]} and throughput", "",
              "| model | board | config | array | cycles | MAC util. |"
              + (" LUT | DSP | Fmax MHz | inferences/s |" if fpga else " inferences/Mcycle |"),
              "| --- | --- | --- | --- | ---: | ---: |" + (" ---: |" * (4 if fpga else 1))]
    for model, boards in _groups(rows).items():
        for board, rs in boards.items():
            for r in pareto_front(rs, costs[0][0], gain):
                tail = (f" {_num(r.get('lut'), 'd')} | {_num(r.get('dsp'), 'd')} | "
                        f"{_num(r.get('fmax_mhz'), '.1f')} | {_num(r['inferences_s'], '.0f')} |"
                        if fpga else f" {_num(r['inferences_per_mcycle'], '.1f')} |")
                lines.append(f"| {model} | {board} | {r['config']} | {r['rows']}x{r['cols']} | "
                             f"{r['cycles']} | {100 * r['utilization']:.1f}% |{tail}")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "## Points that failed", "", "| point | model | config | status | why |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['point']} | {r['model']} | {r['config']} | {r['status']} | "
                  f"{r['error'].replace('|', '/')} |" for r in bad]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, name: str, description: str, rows: list[dict], ran: int,
                  cached: int, seconds: float) -> None:
    write_files(out, {"results.csv": results_csv(rows), "pareto.png": pareto_png(rows),
                      "summary.md": summary_markdown(name, description, rows, ran, cached,
                                                     seconds).encode()})
