"""One progress line for long operations (calibration, simulation): redrawn in place on
a terminal; in a log (CI, a pipe) a line at every tenth of the way, so logs stay short."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, unit: str = "", enabled: bool = True):
        self.label, self.total, self.unit, self.enabled = label, max(total, 1), unit, enabled
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.shown_tenth = -1

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        width = 20
        filled = width * done // self.total
        line = (f"{self.label}  [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
                f"{' ' + self.unit if self.unit else ''}  {time.perf_counter() - self.start:5.1f} s"
                f"{'  ' + note if note else ''}")
        last = done >= self.total
        if self.tty:
            sys.stderr.write(f"\r\033[K{line}" + ("\n" if last else ""))
        elif (tenth := 10 * done // self.total) > self.shown_tenth:
            self.shown_tenth = tenth
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
