"""Progress bars (rich) for long work: training, calibration, evaluation, the cells of a run."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class Reporter:
    """Hands out progress bars. ``Reporter(None)`` is silent (library use and tests)."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if self.progress is None:
            yield from items
            return
        task = self.progress.add_task(description, total=total)
        try:
            for item in items:
                yield item
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)

    def set_description(self, task_description: str) -> None:
        """Change the description of the most recent task (e.g. to show loss and accuracy)."""
        if self.progress is not None and self.progress.task_ids:
            self.progress.update(self.progress.task_ids[-1], description=task_description)

    def log(self, message: str) -> None:
        (self.progress.console if self.progress is not None else console).print(message)


def make_progress(enabled: bool = True) -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
                    transient=False)


SILENT = Reporter(None)
