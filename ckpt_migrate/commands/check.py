"""``ckpt-migrate check SRC --target SPEC``: the warm-start report ``load_state_dict(strict=False)`` never gave."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckpt_migrate.reports.inert import inert_text
from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options

_SHOW = 20


def _render(out: Any, result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    report, target, warnings = result.report, result.target, result.warnings
    out.print(f"[bold]{escape(result.source)}[/bold] → {escape(target['target'])} ({target['kind']}, {target['keys']} keys)", soft_wrap=True)
    if result.schemas:
        out.print(f"  schemas applied: {escape(', '.join(result.schemas))}", soft_wrap=True)
    for warning in warnings:
        out.print(f"  [yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    table = Table(show_edge=False, show_header=False)
    table.add_column("status")
    table.add_column("keys", justify="right")
    rows = (("matched", report.matched, "green"), ("missing", report.missing, "red"),
            ("unexpected", report.unexpected, "red"), ("shape mismatch", report.mismatched, "red"))
    for label, items, style in rows:
        table.add_row(label, f"[{style if items else 'dim'}]{len(items)}[/]")
    if report.optional_missing:
        table.add_row("missing (filled in by load_state_dict)", f"[dim]{len(report.optional_missing)}[/]")
    out.print(table)
    if report.mismatched:
        mismatch = Table(title="Shape mismatches", title_justify="left", show_edge=False)
        for column in ("key", "source", "target"):
            mismatch.add_column(column)
        for key, a, b in report.mismatched[:_SHOW]:
            mismatch.add_row(escape(key), escape(str(list(a))), escape(str(list(b))))
        out.print(mismatch)
    for label, items in (("missing", report.missing), ("unexpected", report.unexpected)):
        if items:
            shown = ", ".join(items[:_SHOW]) + (f", … {len(items) - _SHOW} more" if len(items) > _SHOW else "")
            out.print(f"  {label}: {shown}", markup=False, soft_wrap=True)
    if report.ok and not warnings:
        out.print("[green]✓[/green] load_state_dict(strict=True) would accept these weights", soft_wrap=True)
    if result.suggestions:
        out.print(f"  hint: more keys match with --schema {' or --schema '.join(result.suggestions)}", markup=False, soft_wrap=True)


@click.command("check")
@click.argument("src")
@click.option("--target", "target_spec", required=True, metavar="SPEC",
              help="Architecture (vgg16, torchvision:resnet50, package.module:Class) or a reference checkpoint file.")
@click.option("--arch-kwargs", metavar="JSON", help="Keyword arguments for the target architecture, as JSON.")
@click.option("--schema", "schemas", multiple=True, metavar="ID|FILE", help="Key-renaming schema applied to SRC first, in order. Repeatable.")
@click.option("--select", metavar="KEY", help="Take SRC's weights from this key of a bundle.")
@click.option("--strict", is_flag=True, help="Exit 1 when anything is missing, unexpected, mismatched, or a schema rule touched nothing.")
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(src: str, target_spec: str, arch_kwargs: str | None, schemas: tuple[str, ...], select: str | None, strict: bool,
            allow_calls: tuple[str, ...], as_json: bool) -> None:
    """Report how SRC's weights would load into TARGET: matched, missing, unexpected and shape-mismatched keys.

    Exits 1 when no key matches at all, and under --strict when anything is off; 0 otherwise.
    """
    from ckpt_migrate.options import parse_arch_kwargs
    from ckpt_migrate.reports.check import check

    result = check(src, target_spec, schemas=schemas, arch_kwargs=parse_arch_kwargs(arch_kwargs), select=select,
                   allow_calls=allow_calls, strict=strict)
    failed = result.failed
    if as_json:
        emit_json(result.to_dict())
    else:
        _render(console(), result)
    label = result.target["target"]
    if result.report.nothing_matched:
        fix = (f"try --schema {' or --schema '.join(result.suggestions)}" if result.suggestions else
               f"rename keys with --schema (`ckpt-migrate schema infer {src} --target {target_spec} -o FILE` writes one)")
        click.echo(f"ckpt-migrate: error: {inert_text(f'{src}: no key matches {label}; {fix}')}", err=True)
    elif failed:
        click.echo(f"ckpt-migrate: error: {inert_text(f'{src}: does not load strictly into {label}: ' + ', '.join(result.problems()))}", err=True)
    sys.exit(1 if failed else 0)
