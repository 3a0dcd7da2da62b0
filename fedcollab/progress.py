"""A rich progress bar for the round loop: rounds, accuracy, seconds per round."""
from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Optional

__all__ = ["RoundProgress"]


class RoundProgress:
    """Shows rounds done, the latest accuracy (or loss) and seconds per round.

    Off with ``quiet``, or when stderr is not a terminal and ``enabled`` is None.
    """

    def __init__(self, rounds: int, *, enabled: Optional[bool] = None, quiet: bool = False,
                 classification: bool = True) -> None:
        self.rounds = rounds
        self.enabled = (not quiet) and (sys.stderr.isatty() if enabled is None else enabled)
        self.classification = classification
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "RoundProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                TextColumn("{task.fields[metric]}"), TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("rounds", total=self.rounds, metric="",
                                                 speed="")
        return self

    def advance_to(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def update(self, line: dict[str, Any]) -> None:
        if self._progress is None:
            return
        if self.classification and line.get("accuracy") is not None:
            metric = f"acc {line['accuracy']:.3f}"
        else:
            metric = f"loss {line['loss']:.4f}"
        self._progress.update(self._task, completed=line["round"], metric=metric,
                              speed=f"{line['seconds']:.2f} s/round")

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
