"""Progress of long work: library code reports it, the command line shows it.

Library code (no Dagster, no terminal) wraps a long loop in `task`, whose `advance` it calls as
each piece ends; the description says what it is doing:

    with progress.task("top3000: daily bars of 20 sessions", total=20) as advance:
        for day in days:
            ...
            advance(1, f"top3000: daily bars of {day}")

Nothing is shown unless a command shows it (`shown`): a rich progress bar on stderr, with the
description, the count and the elapsed time. Dagster runs the CLI's steps in the command's own
process, so a step's progress reaches the bar; a step on a Celery worker or under the daemon
reports to nobody. Reports from worker threads are fine (rich's bar is thread-safe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[..., None]
_Sink = Callable[[str, int], "contextmanager[Advance]"]

_sink: _Sink | None = None
_lock = threading.Lock()


def _ignore(steps: int = 1, description: str | None = None) -> None:
    return None


@contextmanager
def task(description: str, total: int) -> Iterator[Advance]:
    """A unit of long work of `total` steps: yields `advance(steps=1, description=None)`."""
    sink = _sink
    if sink is None or total <= 0:
        yield _ignore
        return
    with sink(description, total) as advance:
        yield advance


@contextmanager
def shown(*, transient: bool = True) -> Iterator[None]:
    """Show the tasks reported inside the block as progress bars on stderr (a command's choice)."""
    global _sink
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=transient and console.is_terminal)

    @contextmanager
    def sink(description: str, total: int) -> Iterator[Advance]:
        task_id = bars.add_task(description, total=total)

        def advance(steps: int = 1, text: str | None = None) -> None:
            bars.update(task_id, advance=steps, **({"description": text} if text else {}))

        try:
            yield advance
        finally:
            bars.update(task_id, visible=console.is_terminal and not transient)

    with _lock:
        previous, _sink = _sink, sink
    try:
        with bars:
            yield
    finally:
        with _lock:
            _sink = previous
