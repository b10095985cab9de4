"""Progress of a batch and its final summary: a rich bar on a terminal, plain lines otherwise.

Progress goes to stderr so that ``--json`` keeps stdout for the one JSON document; the summary
table goes to stdout.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from ckpt_migrate.reports.inert import inert_console, inert_text, write_lines
from ckpt_migrate.reports.units import human_size

STATUS_LABEL = {"done": "converted", "failed": "FAILED", "refused": "REFUSED"}
ROLE_LABEL = {"copy": "copied", "state": "rewrote"}


class Reporter(Protocol):
    """What the runner tells a progress display."""

    def start(self, files: int, total_bytes: int) -> None: ...

    def advance(self, result: dict[str, Any], size: int) -> None: ...

    def close(self) -> None: ...


class Silent:
    """No progress output (the Python API's default)."""

    def start(self, files: int, total_bytes: int) -> None:
        pass

    def advance(self, result: dict[str, Any], size: int) -> None:
        pass

    def close(self) -> None:
        pass


class PlainLines:
    """One line per finished file on ``stream``: ``[ 3/12] converted  a/b.pt → a/b.safetensors (0.12 s)``."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.total = 0
        self.done = 0

    def start(self, files: int, total_bytes: int) -> None:
        self.total = files
        if files:
            print(f"converting {files} file{'s' if files != 1 else ''} ({human_size(total_bytes)})", file=self.stream, flush=True)

    def advance(self, result: dict[str, Any], size: int) -> None:
        self.done += 1
        width = len(str(self.total))
        label = STATUS_LABEL.get(result.get("status", ""), result.get("status", ""))
        if result.get("status") == "done":
            label = ROLE_LABEL.get(result.get("role", ""), label)
            text = f"{inert_text(result['source'])} → {inert_text(result.get('output'))} ({result.get('seconds', 0):.2f} s)"
        else:
            text = inert_text(result.get("error") or result["source"])
        print(f"[{self.done:>{width}}/{self.total}] {label:<9} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichBar:
    """A rich progress bar on a terminal: files and bytes done, rate, ETA; failures printed above it."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.console = console or inert_console(stderr=True, highlight=False)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]migrating"), BarColumn(), TextColumn("{task.fields[done]}/{task.fields[files]} files"),
            DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task: Any = None

    def start(self, files: int, total_bytes: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("migrate", total=max(total_bytes, 1), files=files, done=0)
        self.done = 0

    def advance(self, result: dict[str, Any], size: int) -> None:
        self.done += 1
        self.progress.update(self.task, advance=size, done=self.done)
        if result.get("status") != "done":
            label = STATUS_LABEL.get(result.get("status", ""), "")
            error = inert_text(result.get("error") or result.get("source"), markup=True)
            self.progress.console.print(f"[red]{label}[/red] {error}", markup=True, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()


def reporter_for(console: Any = None, quiet: bool = False) -> Reporter:
    """A rich bar when stderr is a terminal, plain lines otherwise, nothing when ``quiet``."""
    if quiet:
        return Silent()
    console = console or inert_console(stderr=True, highlight=False)
    return RichBar(console) if console.is_terminal else PlainLines()


def render_plan(report: Any, console: Any) -> None:
    """The dry-run plan: each source, its format and kind, its destination, the action.

    A table on a terminal; one line per file otherwise, so the plan can be grepped.
    """
    from rich.table import Table

    title = f"plan: {report.src} → {report.dst} ({report.to}); dry run, nothing was written"
    rows = []
    for entry in report.files:
        kind = entry.kind or ("?" if entry.action != "skip" else "-")
        rows.append((entry.source, entry.format or "-", kind, entry.destination or "-", entry.action, entry.reason or ""))
    if console.is_terminal:
        table = Table(title=title, title_justify="left")
        for column in ("source", "format", "kind", "destination", "action", "note"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(inert_text(cell, markup=True) for cell in row))
        console.print(table)
    else:
        width = max((len(row[4]) for row in rows), default=0)
        lines = [title]
        for source, fmt, kind, destination, action, note in rows:
            target = f" → {destination} ({fmt}, {kind})" if destination != "-" else ""
            lines.append(f"  {action:<{width}}  {source}{target}{f'  [{note}]' if note else ''}")
        write_lines(console, lines)
    console.print(", ".join(f"{count} {name}" for name, count in sorted(report.actions.items())), markup=False, highlight=False)


def render_summary(report: Any, console: Any) -> None:
    """The final table: files and bytes per status, rate, and every failure with its reason."""
    from rich.table import Table

    workers = "in-process" if report.executor == "inline" else f"{report.jobs} worker{'s' if report.jobs != 1 else ''}" \
        if report.executor == "local" else "Ray"
    console.print(f"migrated {inert_text(report.src)} → {inert_text(report.dst)} as {inert_text(report.to)} in {report.seconds:.2f} s ({workers})",
                  markup=False, highlight=False, soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("status")
    table.add_column("files", justify="right")
    table.add_column("bytes", justify="right")
    counts = report.counts
    sizes: dict[str, int] = {}
    for entry in report.files:
        if entry.action != "member":
            sizes[entry.status] = sizes.get(entry.status, 0) + entry.size
    for status in ("converted", "copied", "up-to-date", "skipped", "failed", "refused"):
        style = {"failed": "red", "refused": "bold red"}.get(status, "") if counts.get(status) else ""
        label = f"[{style}]{status}[/{style}]" if style else status
        table.add_row(label, str(counts.get(status, 0)), human_size(sizes.get(status, 0)) if counts.get(status) else "")
    console.print(table)
    converted = counts.get("converted", 0)
    if converted and report.seconds > 0:
        console.print(f"{human_size(report.bytes_in)} in → {human_size(report.bytes_out)} out; "
                      f"{converted / report.seconds:.1f} files/s, {human_size(report.bytes_in / report.seconds)}/s")
    failures = report.failures
    if failures:
        console.print("failed and refused:")
        for entry in failures:
            console.print(f"  {entry.status:<8} {entry.error or entry.reason}", markup=False, highlight=False, soft_wrap=True)
    if report.manifest:
        console.print(f"manifest: {report.manifest}", markup=False, highlight=False, soft_wrap=True)
