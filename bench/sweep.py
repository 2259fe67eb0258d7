"""Scheduling overhead of `hwq sweep`: the wall time of a 12-point ISS sweep on a
two-worker LocalCluster against the sum of its points' own run times divided by the
worker count (what a perfect scheduler with no overhead would take), target <= 1.3.

    .venv/bin/python bench/sweep.py [--repeats N] [--workers N]

The points: the README's example, docs/sweep-lenet.yaml -- the digits LeNet on the
default config with rows 2/4/8/16 x cols 4/8/16, compiled and its 8 reference images run
on the ISS (each checked against the golden model). A point's own run time is the one its worker measures (results.csv's wall_s);
the sweep's wall time is hwq.sweep's, from reading the spec to writing the reports. The
cluster is started once and warmed up with one sweep (the workers' first point imports
torch and hwq); each repeat then sweeps into a new directory, so nothing comes from the
cache. The cold figure beside it is the warm-up's: cluster start-up and imports in.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# the workers import this checkout's hwq too (a point refuses a worker that runs other code)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from hwq.sweeps.engine import sweep  # noqa: E402

SPEC = ROOT / "docs" / "sweep-lenet.yaml"


def one_sweep(address: str, workers: int) -> tuple[float, float]:
    """(wall time, sum of the points' own times / workers) of one uncached sweep."""
    with tempfile.TemporaryDirectory(prefix="hwq-bench-sweep-") as out:
        t0 = time.perf_counter()
        r = sweep(SPEC, out, scheduler=address)
        wall = time.perf_counter() - t0
    assert r.ran == 12 and not r.failed, [row["error"] for row in r.failed]
    return wall, sum(row["wall_s"] for row in r.rows) / workers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    import dask
    from distributed import LocalCluster

    t0 = time.perf_counter()
    # as hwq sweep starts its own (hwq/sweeps/engine.py)
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
    with cluster:
        wall, ideal = one_sweep(cluster.scheduler_address, a.workers)
        cold = time.perf_counter() - t0
        print(f"warm-up (cold: cluster start-up and the workers' imports in): {cold:.1f} s "
              f"wall, points {ideal:.1f} s per worker: ratio {cold / ideal:.2f}")
        ratios = []
        for i in range(a.repeats):
            wall, ideal = one_sweep(cluster.scheduler_address, a.workers)
            ratios.append(wall / ideal)
            print(f"repeat {i + 1}: 12 points, wall {wall:.2f} s, sum of the points' own "
                  f"times / {a.workers} workers {ideal:.2f} s: ratio {wall / ideal:.3f}")
    med = statistics.median(ratios)
    print(f"ratio wall / (sum / workers): median {med:.3f}, spread {min(ratios):.3f}-"
          f"{max(ratios):.3f} over {a.repeats} repeats; target <= 1.3: "
          f"{'met' if max(ratios) <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
