"""Terminal output: one shared rich console, progress bars that vanish when done."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

T = TypeVar("T")

console = Console(stderr=True, soft_wrap=True)  # progress and messages
stdout = Console(width=None if sys.stdout.isatty() else 200)  # results: tables (a file or pipe has no width of its own)


class RateColumn(ProgressColumn):
    """Items per second, once rich has an estimate."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.0f}/s" if task.speed else "")


def progress(enabled: bool = True, rate: bool = False) -> Progress:
    """A transient multi-task progress display on stderr (`enabled=False`: a silent one, e.g. in worker processes); `rate`
    adds items per second."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([RateColumn()] if rate else []),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )


def track(items: Sequence[T] | Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar and the items' rate (shown only for more than a few items); an iterator is consumed
    lazily when its `total` is given."""
    if total is None:
        items = list(items)
        total = len(items)
    if total < 20:
        yield from items
        return
    with progress(rate=True) as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.advance(task)


def quiet_libraries() -> None:
    """Keep MLflow's, Alembic's and Optuna's info logging (and MLflow's database tracebacks) out of colorbench's own output."""
    import logging

    import mlflow  # noqa: F401 - MLflow configures its loggers on import: import first, then quiet them
    import optuna

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # its database errors arrive as one StoreError line instead
    optuna.logging.set_verbosity(optuna.logging.WARNING)
