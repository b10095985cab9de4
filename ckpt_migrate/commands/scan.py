"""``ckpt-migrate scan PATH...``: security verdicts for files and folders."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options

VERDICT_STYLE = {"clean": "green", "refused": "bold red", "error": "red", "skipped": "dim"}


def render(out: Any, report: Any) -> None:
    """A table of files and verdicts, then each refused file's refused globals.

    Every name and path comes from untrusted files, so it is escaped, never read as rich markup.
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="ckpt-migrate scan", title_justify="left")
    for column in ("file", "format", "verdict", "allowed", "stub", "refused", "reason"):
        table.add_column(column, justify="right" if column in ("allowed", "stub", "refused") else "left", overflow="fold")
    for found in report.files:
        counts = found.counts()
        style = VERDICT_STYLE.get(found.verdict, "")
        reason = ", ".join(g.name for g in found.refused) if found.refused else found.error or ""
        if found.verdict == "skipped":
            reason = (found.message or "").split(": skipped: ", 1)[-1]
        table.add_row(escape(found.path), escape(found.format or "-"), f"[{style}]{found.verdict}[/{style}]", str(counts["allowed"]),
                      str(counts["stub"]), str(counts["refused"]), escape(reason))
    out.print(table)
    for found in report.files:
        if not found.refused:
            continue
        detail = Table(title=f"refused in {escape(found.path)}", title_justify="left", show_edge=False)
        for column in ("global", "offset", "where", "why"):
            detail.add_column(column, overflow="fold")
        for entry in found.refused:
            detail.add_row(escape(entry.name), "" if entry.offset is None else str(entry.offset), escape(entry.where), escape(entry.reason))
        out.print(detail)
    for found in report.files:
        for note in found.notes:
            out.print(f"[dim]note: {escape(found.path)}: {escape(note)}[/dim]")
    summary = report.summary()
    out.print(f"{summary['files']} file(s): {summary['clean']} clean, {summary['refused']} refused, "
              f"{summary['error']} unreadable, {summary['skipped']} skipped")


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(paths: tuple[str, ...], allow_calls: tuple[str, ...], as_json: bool) -> None:
    """Say, for each file under PATH..., whether ckpt-migrate would open it and what its pickles name.

    Nothing is unpickled with Python's pickle, imported or executed. Exit codes: 0 every file is
    clean, 3 a file names or calls something outside the allowlist, 1 a file could not be read.
    """
    from ckpt_migrate.reports.scan import scan

    report = scan(paths, allow_calls=allow_calls)
    if as_json:
        emit_json(report.to_json())
    else:
        render(console(), report)
    for found in report.files:
        if found.verdict in ("refused", "error") and found.message:
            click.echo(f"ckpt-migrate: error: {found.message}".replace("\n", " "), err=True)
    sys.exit(report.exit_code)
