"""``ckpt-migrate scan PATH...``: security verdicts for files and folders."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options, strict_calls_option

VERDICT_STYLE = {"clean": "green", "unknown-calls": "yellow", "unsafe": "bold red", "error": "red", "skipped": "dim"}


def render(out: Any, report: Any) -> None:
    """A table of files and verdicts, then each file's refused globals and unknown calls.

    Every name and path comes from untrusted files, so it is made inert (control characters and
    markup escaped) before it is printed.
    """
    from rich.table import Table

    from ckpt_migrate.reports.inert import inert_text

    def inert(value: Any) -> str:
        return inert_text(value, markup=True)

    table = Table(title="ckpt-migrate scan", title_justify="left")
    for column in ("file", "format", "verdict", "allowed", "stub", "unknown calls", "refused", "reason"):
        table.add_column(column, justify="right" if column in ("allowed", "stub", "unknown calls", "refused") else "left", overflow="fold")
    for found in report.files:
        counts = found.counts()
        style = VERDICT_STYLE.get(found.verdict, "")
        if found.refused:
            reason = ", ".join(g.name for g in found.refused)
        elif found.unknown_calls:
            reason = ", ".join(g.name for g in found.unknown_calls)
        else:
            reason = found.error or ""
        if found.verdict == "skipped":
            reason = (found.message or "").split(": skipped: ", 1)[-1]
        table.add_row(inert(found.path), inert(found.format or "-"), f"[{style}]{found.verdict}[/{style}]", str(counts["allowed"]),
                      str(counts["stub"]), str(counts["unknown-call"]), str(counts["refused"]), inert(reason))
    out.print(table)
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
    for found in report.files:
        if found.verdict in ("unsafe", "error") and found.message:
            click.echo(f"ckpt-migrate: error: {inert_text(' '.join(found.message.split()))}", err=True)
        elif found.verdict == "unknown-calls":
            from ckpt_migrate.unpickler.verdicts import unknown_calls_warning

            click.echo(f"ckpt-migrate: warning: {inert_text(found.path)}: {inert_text(unknown_calls_warning(found.globals))}", err=True)
    sys.exit(report.exit_code)
