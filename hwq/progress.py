"""One progress display for every long operation (calibration, fine-tuning, simulation,
place-and-route): tqdm's bar on stderr, redrawn in place on a terminal; in a log (CI, a
pipe) a line every LOG_INTERVAL seconds and the last one, so logs stay short."""
from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL = 30.0     # seconds between lines where stderr is not a terminal


class Progress:
    """`update(done, note)` moves the bar to `done` of `total` (None: no total known, as
    in place-and-route: the bar shows the elapsed time and the note); it closes itself
    when `done` reaches `total`, or on `close()`."""

    def __init__(self, label: str, total: int | None, unit: str = "", enabled: bool = True):
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=max(total, 1) if total is not None else None, desc=label,
                        unit=f" {unit}" if unit else "it", file=sys.stderr, disable=not enabled,
                        leave=True, dynamic_ncols=tty, ascii=" #",
                        mininterval=0.1 if tty else LOG_INTERVAL,
                        bar_format="{desc}  [{bar:20}] {n_fmt}/{total_fmt}{unit}  {elapsed}{postfix}"
                        if total is not None else "{desc}  {elapsed}{postfix}")
        self.done = 0

    def update(self, done: int, note: str = "") -> None:
        if self.bar.disable:
            return
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(done - self.done)
        self.done = done
        if self.bar.total is not None and done >= self.bar.total:
            self.close()

    def close(self) -> None:
        self.bar.close()
