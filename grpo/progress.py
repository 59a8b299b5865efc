"""Long phases: progress lines with an ETA where there is no progress bar (cloning, evaluation), and the
request to stop at the next safe point (Ctrl-C).

A phase calls :meth:`Progress.update` as it goes; a line such as

    pretrain: demonstrations 40% (600/1,500 steps), 1m12s, ETA 1m48s

is printed at most every ``every_s`` seconds (and once at the end of a phase that printed before), so a user
always sees that work goes on and how long it still takes, while a phase shorter than ``every_s`` stays silent
and a log file gets no flood of lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


class Interrupted(Exception):
    """Training stopped on request (SIGINT or SIGTERM) at a safe point. ``checkpoint`` is the file it saved
    (None when it stopped before there was anything to resume, during the warm start)."""

    def __init__(self, checkpoint: Path | None, iteration: int):
        where = f"at iteration {iteration}, saved to {checkpoint}" if checkpoint else "during the warm start"
        super().__init__(f"interrupted {where}")
        self.checkpoint, self.iteration = checkpoint, iteration


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Prints ``label``'s progress through ``total`` ``unit`` with the elapsed time and an ETA (linear in the
    work done so far). ``report`` receives each line (``print`` by default). When ``should_stop()`` turns true,
    the next update raises :class:`Interrupted`: every update is a safe point to stop at."""

    def __init__(self, label: str, total: int, unit: str = "steps", every_s: float = 10.0,
                 report: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                 should_stop: Callable[[], bool] | None = None):
        self.should_stop = should_stop
        self.label, self.total, self.unit, self.every_s = label, max(1, total), unit, every_s
        self.report = report or (lambda line: print(line, flush=True))
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.printed = 0

    def update(self, done: int) -> None:
        """``done`` of ``total`` finished; prints a line when ``every_s`` has passed since the last one, and
        at completion if a line was printed before."""
        if self.should_stop is not None and self.should_stop():
            raise Interrupted(None, 0)
        self.done = min(done, self.total)
        now = self.clock()
        finished = self.done >= self.total
        if now - self.last < self.every_s and not (finished and self.printed):
            return
        if finished and self.printed < 0:  # the closing line is out already
            return
        self.last = now
        self.report(self.line(now))
        self.printed = -1 if finished else self.printed + 1

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.start
        text = f"{self.label} {100 * self.done // self.total}% ({self.done:,}/{self.total:,} {self.unit}), " \
               f"{duration(elapsed)}"
        if 0 < self.done < self.total:
            text += f", ETA {duration(elapsed * (self.total - self.done) / self.done)}"
        return text
