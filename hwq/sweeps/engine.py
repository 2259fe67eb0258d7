"""A sweep on Dask distributed: every point a task, on a LocalCluster sized to the machine
or on the cluster behind a scheduler's address.

Dask does the scheduling: a task whose worker dies is run again on another
(distributed's `allowed-failures`, 3 by default, after which it ends as KilledWorker:
here a failed row), and points that compile the same model for the same config (seeds
of one bitstream) or build the same bitstream (models on one board config) share one
task by its key. Nothing is scheduled here.

Finished rows are kept in the output directory, `points/<key>.json`, one file per point
under the hash of its inputs (hwq/sweeps/point.py), written whole or not at all: a sweep
run again, killed half way and restarted, or grown by more models, seeds or values, runs
only the points it has no row for. They live beside the results they make rather than in
hwq's cache directory because they are results: copied, archived or deleted with them,
and written by this client alone, so a cluster needs no shared file system. (What
points rebuild -- simulator builds and bitstreams -- is cached on each worker, in hwq's
cache directory.)
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from asyncio import CancelledError
from collections import Counter, defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from hwq.errors import HwqError
from hwq.package import write_files
from hwq.progress import Progress
from hwq.sweeps.point import (COLUMNS, Point, bitstream_task, code_digest, point_task,
                              with_bitstream)
from hwq.sweeps.report import REPORTS, write_reports
from hwq.sweeps.spec import Spec, load_spec

POINTS = "points"           # the output directory's row cache
EMPTY_ROW = dict.fromkeys(COLUMNS)     # what a point that failed early did not measure
STEPS = ("compile", "rtl", "bitstream")


@dataclass
class SweepResult:
    """What `hwq.sweep` returns: a row per point in the spec's order (results.csv's
    columns, hwq/sweeps/point.py COLUMNS), and how many ran or came from the cache."""

    spec: Spec
    out: Path
    rows: list[dict]
    ran: int
    cached: int
    seconds: float

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]


def sweep(spec: str | Path | dict, out: str | Path = "build/sweep", scheduler: str | None = None,
          workers: int | None = None, progress: bool = False) -> SweepResult:
    """Run the points of `spec` (a spec file, a shipped spec's name such as
    "regression", or the mapping a spec file holds) and write results.csv, pareto.png and
    summary.md into `out`. On a LocalCluster of `workers` processes (default: one per
    core), or on the cluster whose scheduler is at `scheduler` ("tcp://host:8786")."""
    t0 = time.perf_counter()
    s = load_spec(spec)
    out = Path(out)
    _check_output(out)
    code = code_digest()
    keys = [p.key(code) for p in s.points]
    rows = {k: _refused_row(k, p) for k, p in zip(keys, s.points) if p.cfg is None}
    rows |= {k: row for k in keys if k not in rows and (row := _kept_row(out, k)) is not None}
    cached = len(rows) - sum(p.cfg is None for p in s.points)
    todo = {k: p for k, p in zip(keys, s.points) if k not in rows}
    # the directory is made once the cluster answers: a scheduler that cannot be reached
    # leaves nothing behind
    with _client(scheduler, workers) if todo else nullcontext() as client:
        _prepare_output(out)
        if todo:
            bar = SweepProgress(len(todo), cached, progress)
            for key, row in _run(client, todo, code, bar):
                if not row.pop("retry", False):
                    _keep_row(out, key, row)
                rows[key] = row
            bar.close()
    result = SweepResult(s, out, [{**EMPTY_ROW, **rows[k]} for k in keys], len(todo), cached,
                         time.perf_counter() - t0)
    try:
        write_reports(out, s.name, s.description, result.rows, result.ran, cached,
                      result.seconds)
    except OSError as e:
        raise HwqError(f"cannot write the sweep's reports in {out}: {e.strerror or e}") from None
    return result


def _check_output(out: Path) -> None:
    """Refuse, before any work, an output the sweep must not write into: a file, or a
    directory of other files than a sweep's (its reports would replace the user's)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise HwqError(f"output {out} is a file; give a directory for the sweep's results (-o)")
    if not out.exists():
        return
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise HwqError(f"cannot read output directory {out} ({e.strerror}); give another "
                       "(-o)") from None
    if not empty and not (out / POINTS).is_dir():
        raise HwqError(f"output directory {out} holds files a sweep did not write; give a new "
                       "or empty directory, or a sweep's results directory (-o)")


def _prepare_output(out: Path) -> None:
    try:
        (out / POINTS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HwqError(f"cannot create output directory {out}: {e.strerror or e}") from None
    # what a killed sweep was writing
    for stale in [*(out / POINTS).glob(".*.tmp"), *(f for name in REPORTS
                                                    for f in out.glob(f".{name}.*.tmp"))]:
        stale.unlink(missing_ok=True)


def _keep_row(out: Path, key: str, row: dict) -> None:
    try:
        write_files(out / POINTS, {f"{key}.json": json.dumps(row, sort_keys=True).encode()})
    except OSError as e:
        raise HwqError(f"cannot keep a finished point in {out / POINTS}: "
                       f"{e.strerror or e}") from None


def _kept_row(out: Path, key: str) -> dict | None:
    """The row a sweep kept for `key`, marked cached; None when there is none (or it is
    unreadable: the point runs again)."""
    try:
        row = json.loads((out / POINTS / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return {**row, "cached": True} if isinstance(row, dict) else None


def _refused_row(key: str, p: Point) -> dict:
    return {"point": key, **p.columns(), "status": "failed", "failed_stage": "config",
            "error": f"config: {p.refused}", "cached": False}


def machine_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _client(scheduler: str | None, workers: int | None):
    """A Dask client: of the scheduler at `scheduler`, or of a LocalCluster of `workers`
    single-threaded processes (a point is CPU-bound Python and NumPy on one core)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise HwqError(f"scheduler {scheduler}: cannot connect ({str(e).splitlines()[0]}); "
                           f"start one with 'dask scheduler' and its workers with 'dask worker "
                           f"{scheduler}'") from None
        with client:
            yield client
        return
    # One task per worker at a time: none waits in a worker's queue, where a worker's death
    # would count against it as well as against the task that killed the worker.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=workers or machine_cores(), threads_per_worker=1,
                               processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    with cluster, Client(cluster) as client:
        yield client


def _run(client, todo: dict[str, Point], code: str, bar: "SweepProgress"):
    """Submit the points' tasks and yield (key, row) as each point's tasks finish."""
    topic = f"hwq-sweep-{uuid.uuid4().hex[:12]}"
    client.subscribe_topic(topic, bar.event)
    tasks = {}                                      # task name -> its future
    parts: dict[str, tuple[str, str | None]] = {}  # point key -> (compile task, bitstream task)
    for key, p in todo.items():
        ct = f"hwq-compile-{p.compile_key(code)}"
        if ct not in tasks:
            tasks[ct] = client.submit(point_task, p, code, topic, ct, key=ct)
        bt = None
        if "bitstream" in p.stages:
            bt = f"hwq-bitstream-{p.bitstream_key(code)}"
            if bt not in tasks:          # minutes each: started before the compiles
                tasks[bt] = client.submit(bitstream_task, p.board, code, topic, bt, key=bt,
                                          priority=1)
        parts[key] = (ct, bt)
    waiting = defaultdict(list)
    for key, names in parts.items():
        for name in filter(None, names):
            waiting[name].append(key)
    results: dict[str, dict] = {}
    from distributed import as_completed
    try:
        for fut in as_completed(list(tasks.values())):
            name = fut.key
            results[name] = _task_result(fut, bar)
            fut.release()       # its worker may die now: nothing to compute again
            for key in waiting.pop(name):
                ct, bt = parts[key]
                if ct in results and (bt is None or bt in results):
                    row = results[ct] if bt is None else with_bitstream(results[ct], results[bt])
                    bar.point_done()
                    yield key, {"point": key, **todo[key].columns(), **row, "cached": False}
    finally:
        client.unsubscribe_topic(topic)


def _task_result(fut, bar: "SweepProgress") -> dict:
    """A task's row; a task that did not return one (its workers died, or the cluster
    lost it) a failed row to retry on the next run."""
    from distributed import KilledWorker

    try:
        return fut.result()
    except KilledWorker as e:
        step = bar.lost(fut.key)
        why = (f"the worker running it died {e.allowed_failures + 1} times (KilledWorker; "
               "a crash or the worker's memory limit)")
    except (Exception, CancelledError) as e:        # the cluster gave up on it
        step = bar.lost(fut.key)
        why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return {"status": "failed", "failed_stage": step, "error": f"{step}: {why}", "retry": True}


class SweepProgress:
    """The bar of points finished of those to run, noted per step with the tasks done,
    failed and running, as the workers report them (Dask's structured events)."""

    def __init__(self, total: int, cached: int, enabled: bool):
        self.bar = Progress(f"sweep{f' ({cached} cached)' if cached else ''}", total,
                            "points", enabled)
        self.lock = threading.Lock()
        self.running: dict[str, str] = {}          # task -> its step
        self.done, self.failed = Counter(), Counter()
        self.finished = 0

    def event(self, event) -> None:
        """A worker's (timestamp, {task, step, state}); called on the client's thread."""
        msg = event[1]
        with self.lock:
            if msg["state"] == "start":
                self.running[msg["task"]] = msg["step"]
            else:
                self.running.pop(msg["task"], None)
                (self.done if msg["state"] == "ok" else self.failed)[msg["step"]] += 1
            self._show()

    def lost(self, task: str) -> str:
        """Count `task` failed without its word (its worker died); the step it was last
        seen running, or its first."""
        with self.lock:
            step = self.running.pop(task, None) or (
                "bitstream" if task.startswith("hwq-bitstream-") else "compile")
            self.failed[step] += 1
            self._show()
            return step

    def point_done(self) -> None:
        with self.lock:
            self.finished += 1
            self._show()

    def _show(self) -> None:
        running = Counter(self.running.values())
        note = " | ".join(f"{s} {self.done[s]} done, {self.failed[s]} failed, {running[s]} running"
                          for s in STEPS if self.done[s] or self.failed[s] or running[s])
        self.bar.update(self.finished, note)

    def close(self) -> None:
        self.bar.close()
