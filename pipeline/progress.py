"""Progress lines for long work (embedding, training, evaluation): count, rate and ETA, at most one line every
few seconds, so a run's output stays readable:

    [train] epoch 1: 40/187 steps (21%), 1.31 steps/s, ETA 1m52s, loss 2.310
"""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '1h02m' for a duration in seconds."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def say(line: str) -> None:
    """Print one line once. Ray Train patches print() in its workers to also send each line through the logging
    module, and both copies reach the driver; writing to stdout directly sends it once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Progress:
    """Counts units of work and prints `[label] done/total unit (pct), rate, ETA, extras` every `every_s` seconds.

    `total` None (unknown) prints count and rate only. `update(n, **extras)` adds n units; extras (floats are
    shown with 4 significant digits) describe the latest state, e.g. loss=2.31.
    """

    def __init__(self, label: str, total: int | None, unit: str, every_s: float = 10.0):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.done = 0
        self.started = self.last_line = time.perf_counter()

    def update(self, n: int = 1, **extras) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            say(self.line(now, extras))

    def line(self, now: float, extras: dict) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%)"
                 if self.total else f"{self.done} {self.unit}", f"{rate:.3g} {self.unit}/s"]
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts += [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                  for key, value in extras.items()]
        return f"[{self.label}] " + ", ".join(parts)

    def finish(self, **extras) -> float:
        """Print the closing line (count, rate, time taken); returns the seconds since start."""
        elapsed = time.perf_counter() - self.started
        rate = self.done / max(elapsed, 1e-9)
        tail = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in extras.items())
        say(f"[{self.label}] {self.done} {self.unit} in {format_seconds(elapsed)} ({rate:.3g} {self.unit}/s){tail}")
        return elapsed
