"""The progress display of ``convert`` and ``inspect``: rich on a terminal (stderr), nothing otherwise.

A pipe, ``--json`` and ``--quiet`` get no progress at all, so stdout and stderr hold only the
result (and errors). On a terminal each phase is a line with a spinner, a bar when its size is
known, and the time spent; the lines are cleared when the command ends, leaving the result.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ckpt_migrate.reports.progress import SILENT, Phase, ProgressReporter


class _RichPhase(Phase):
    def __init__(self, owner: "RichProgress", task: Any) -> None:
        self.owner, self.task = owner, task
        self.ended = False

    def advance(self, amount: int = 1) -> None:
        self.owner.progress.update(self.task, advance=amount)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        task = self.owner.progress.tasks[self.owner.progress.task_ids.index(self.task)]
        self.owner.progress.update(self.task, total=task.total if task.total is not None else 1,
                                   completed=task.total if task.total is not None else 1)
        self.owner.progress.stop_task(self.task)


class RichProgress(ProgressReporter):
    """Phases as rich progress lines on ``console`` (a terminal), cleared when closed."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[size]}"), TimeElapsedColumn(), console=console, transient=True)
        self.started = False

    def phase(self, label: str, total: int | None = None, unit: str = "bytes") -> Phase:
        from ckpt_migrate.reports.inert import inert_text
        from ckpt_migrate.reports.units import human_size

        if not self.started:
            self.progress.start()
            self.started = True
        size = "" if total is None else human_size(total) if unit == "bytes" else f"{total} {unit}"
        task = self.progress.add_task(inert_text(label, markup=True), total=total, size=size)
        self.progress.refresh()
        return _RichPhase(self, task)

    def close(self) -> None:
        if self.started:
            self.started = False
            self.progress.stop()


def reporter_for(*, quiet: bool = False, as_json: bool = False, console: Any = None) -> ProgressReporter:
    """The reporter a command uses: rich when stderr is a terminal, silent otherwise or with ``--quiet``/``--json``.

    Args:
        quiet: ``--quiet`` was given.
        as_json: ``--json`` was given.
        console: the stderr console to draw on (default: a new inert console on stderr).

    Returns:
        A :class:`RichProgress` or :data:`~ckpt_migrate.reports.progress.SILENT`.
    """
    if quiet or as_json:
        return SILENT
    from ckpt_migrate.reports.inert import inert_console

    console = console or inert_console(stderr=True, highlight=False)
    return RichProgress(console) if console.is_terminal else SILENT


@contextlib.contextmanager
def progress_display(*, quiet: bool = False, as_json: bool = False) -> Iterator[ProgressReporter]:
    """The command's reporter for the duration of the block; the display is cleared on the way out, errors included.

    Args:
        quiet: ``--quiet`` was given.
        as_json: ``--json`` was given.

    Returns:
        A context manager yielding the reporter to pass as ``progress=``.
    """
    reporter = reporter_for(quiet=quiet, as_json=as_json)
    try:
        yield reporter
    finally:
        reporter.close()
