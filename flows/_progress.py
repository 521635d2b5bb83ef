"""Labeling progress: a bar with rate and cost on a terminal, one key=value line per shard in a
log (CI, a scheduled run), so a long job always shows where it is."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from stillroom import labelers


class Progress:
    """Counts answers as they arrive; `cost` says what the teacher has been paid so far."""

    def __init__(self, total: int, cost: Callable[[], float]) -> None:
        self.total, self.cost, self.done = total, cost, 0
        self.start = time.perf_counter()
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("labeling"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rec/s  ${task.fields[cost]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.task_id = self.bar.add_task("label", total=total, rate="-", cost="0.0000")

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, answer: labelers.Answer) -> None:
        self.done += 1
        if self.bar is not None:
            cost = f"{self.cost():.4f}"
            self.bar.update(self.task_id, advance=1, rate=f"{self._rate():.1f}", cost=cost)

    def shard_done(self) -> None:
        if self.bar is None:  # a log, not a terminal: one key=value line per shard
            rate = self._rate()
            print(
                f"labeling records={self.done}/{self.total} "
                f"elapsed_s={time.perf_counter() - self.start:.1f} rate_per_s={rate:.1f} "
                f"cost_usd={self.cost():.4f} eta_s={(self.total - self.done) / max(rate, 1e-9):.0f}",
                file=sys.stderr,
                flush=True,
            )
