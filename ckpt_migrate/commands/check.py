"""``ckpt-migrate check SRC --target SPEC``: the warm-start report ``load_state_dict(strict=False)`` never gave."""

from __future__ import annotations

import sys
from typing import Any

import click

from .common import console, emit_json, handle_errors, read_options

_SHOW = 20


def _render(out: Any, src: str, target: Any, report: Any, warnings: list[str], schemas: list[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    out.print(f"[bold]{escape(src)}[/bold] → {escape(target.label)} ({target.kind}, {len(target.shapes)} keys)")
    if schemas:
        out.print(f"  schemas applied: {escape(', '.join(schemas))}")
    for warning in warnings:
        out.print(f"  [yellow]warning:[/yellow] {escape(warning)}")
    table = Table(show_edge=False)
    table.add_column("")
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
            out.print(f"  {label}: {shown}", markup=False)
    if report.ok and not warnings:
        out.print("[green]✓[/green] load_state_dict(strict=True) would accept these weights")


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
    from ..api import load
    from ..targets import parse_arch_kwargs, resolve_target
    from ..warmstart import check_report

    kwargs = parse_arch_kwargs(arch_kwargs)
    checkpoint = load(src, select=select, allow_calls=allow_calls, hash_source=False)
    if schemas:
        from ..schema_apply import apply_to_checkpoint

        checkpoint = apply_to_checkpoint(checkpoint, schemas)
    target = resolve_target(target_spec, arch_kwargs=kwargs, allow_calls=allow_calls)
    report = check_report({k: ref.shape for k, ref in checkpoint.tensors.items()}, target.shapes)
    warnings = list(checkpoint.meta.get("warnings", []))
    applied = list(checkpoint.meta.get("schemas", []))
    failed = report.nothing_matched or (strict and (not report.ok or bool(warnings)))
    if as_json:
        emit_json({"source": src, **target.to_json(), "schemas": applied, "warnings": warnings, "strict": strict,
                   "exit_code": int(failed), **report.to_json()})
    else:
        _render(console(), src, target, report, warnings, applied)
    if report.nothing_matched:
        click.echo(f"ckpt-migrate: error: {src}: no key matches {target.label}; rename keys with --schema "
                   f"(`ckpt-migrate schema infer {src} --target {target_spec} -o FILE` writes one)", err=True)
    elif failed:
        problems = [f"{len(items)} {label}" for label, items in (("missing", report.missing), ("unexpected", report.unexpected),
                                                               ("shape-mismatched", report.mismatched), ("schema warning(s)", warnings)) if items]
        click.echo(f"ckpt-migrate: error: {src}: does not load strictly into {target.label}: {', '.join(problems)}", err=True)
    sys.exit(1 if failed else 0)
