"""``ckpt-migrate scan PATH...``: security verdicts for files and folders."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options, strict_calls_option

VERDICT_STYLE = {"clean": "green", "unknown-calls": "yellow", "unsafe": "bold red", "error": "red", "skipped": "dim"}
MIN_FILE_WIDTH = 20
"""The file column is as wide as the longest path when the other columns leave room for it, and never narrower
than this; a name is folded only when it cannot fit on one line."""
COUNT_LABELS = (("allowed", "allowed"), ("stub", "stub"), ("unknown-call", "unknown call"), ("refused", "refused"))
SHOWN_NAMES = 3


def render(out: Any, report: Any) -> None:
    """A table of files, formats, verdicts and globals; each file's refused globals and unknown calls; unreadable files' errors.

    Every name and path comes from untrusted files, so it is made inert (control characters and
    markup escaped) before it is printed.
    """
    from rich.table import Table
    from rich.text import Text

    from ckpt_migrate.reports.inert import inert_text

    def inert(value: Any) -> str:
        return inert_text(value, markup=True)

    rows = [(inert(found.path), inert(found.format or "-"), found.verdict, globals_cell(found.counts())) for found in report.files]
    others = [max((len(row[i]) if i != 3 else max(map(len, row[3].split("\n"))) for row in rows), default=0) for i in (1, 2, 3)]
    room = out.width - sum(max(width, len(header)) for width, header in zip(others, ("format", "verdict", "globals"))) - 13
    longest = max((len(row[0]) for row in rows), default=4)
    table = Table(title="ckpt-migrate scan", title_justify="left")
    table.add_column("file", min_width=min(longest, max(MIN_FILE_WIDTH, room)), overflow="fold")
    table.add_column("format", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("globals", no_wrap=True)
    for path, fmt, verdict, counts in rows:
        style = VERDICT_STYLE.get(verdict, "")
        table.add_row(path, fmt, f"[{style}]{verdict}[/{style}]", Text(counts))
    out.print(table)
    for found in report.files:
        if found.verdict == "error":
            out.print(f"unreadable: {inert(found.path)}: {inert(found.error or '')}", soft_wrap=True)
        elif found.verdict == "skipped":
            out.print(f"[dim]skipped: {inert(found.path)}: {inert((found.message or '').split(': skipped: ', 1)[-1])}[/dim]", soft_wrap=True)
    for found in report.files:
        for title, entries in (("refused", found.refused), ("unknown calls (kept as inert records, never executed)", found.unknown_calls)):
            if not entries:
                continue
            detail = Table(title=f"{title} in {inert(found.path)}", title_justify="left", show_edge=False)
            for column in ("global", "offset", "where", "why"):
                detail.add_column(column, overflow="fold")
            for entry in entries:
                detail.add_row(inert(entry.name), "" if entry.offset is None else str(entry.offset), inert(entry.where), inert(entry.reason))
            out.print(detail)
    for found in report.files:
        for note in found.notes:
            out.print(f"[dim]note: {inert(found.path)}: {inert(note)}[/dim]")
    summary = report.summary()
    out.print(f"{summary['files']} file(s): {summary['clean']} clean, {summary['unknown-calls']} with unknown calls, "
              f"{summary['unsafe']} unsafe, {summary['error']} unreadable, {summary['skipped']} skipped")


def globals_cell(counts: dict[str, int]) -> str:
    """The globals of a file counted by verdict, one per line (``3 allowed``), or ``none``."""
    lines = [f"{counts[key]} {label}{'s' if key == 'unknown-call' and counts[key] != 1 else ''}"
             for key, label in COUNT_LABELS if counts.get(key)]
    return "\n".join(lines) or "none"


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@read_options
@strict_calls_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(paths: tuple[str, ...], allow_calls: tuple[str, ...], strict_calls: bool, as_json: bool) -> None:
    """Say, for each file under PATH..., whether ckpt-migrate would open it and what its pickles name.

    Nothing is unpickled with Python's pickle, imported or executed. Verdicts: clean (nothing but
    allowlisted constructors), unknown-calls (calls that torch.load(weights_only=False) would run
    and that are not known to be harmless; ckpt-migrate keeps them as inert records), unsafe (a
    known code-execution gadget). Exit codes: 0 no file is unsafe, 3 a file is unsafe (with
    --strict-calls also a file with unknown calls), 1 a file could not be read.
    """
    from ckpt_migrate.reports.inert import inert_text
    from ckpt_migrate.reports.scan import scan

    report = scan(paths, allow_calls=allow_calls, strict_calls=strict_calls)
    if as_json:
        emit_json(report.to_dict())
    else:
        render(console(), report)
    line = stderr_line(report, "in the JSON document" if as_json else "above")
    if line:
        click.echo(inert_text(line), err=True)
    sys.exit(report.exit_code)


def stderr_line(report: Any, where: str) -> str | None:
    """The one stderr line of a scan: the file's own error or warning for one file, a summary naming the files for several.

    Args:
        report: the :class:`~ckpt_migrate.reports.scan.ScanReport`.
        where: where the reasons are shown (``above``), for the summary.

    Returns:
        ``ckpt-migrate: error: …`` or ``ckpt-migrate: warning: …``, or None when every file is clean or skipped.
    """
    from ckpt_migrate.unpickler.verdicts import unknown_calls_warning

    if len(report.files) == 1:
        found = report.files[0]
        if found.verdict in ("unsafe", "error") and found.message:
            return f"ckpt-migrate: error: {' '.join(found.message.split())}"
        if found.verdict == "unknown-calls":
            return f"ckpt-migrate: warning: {found.path}: {unknown_calls_warning(found.globals)}"
        return None
    parts = []
    for verdict, label in (("unsafe", "unsafe"), ("error", "unreadable"), ("unknown-calls", "with unknown calls, kept as inert records")):
        paths = [found.path for found in report.files if found.verdict == verdict]
        if paths:
            shown = ", ".join(paths[:SHOWN_NAMES]) + (f" and {len(paths) - SHOWN_NAMES} more" if len(paths) > SHOWN_NAMES else "")
            parts.append(f"{len(paths)} {label} ({shown})")
    if not parts:
        return None
    level = "error" if report.exit_code else "warning"
    return f"ckpt-migrate: {level}: {'; '.join(parts)} of {len(report.files)} files; the reasons are {where}"
