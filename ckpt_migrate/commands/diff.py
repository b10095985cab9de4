"""``ckpt-migrate diff A B``: keys, shapes, dtypes and values of two checkpoints, in any formats."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options

_SHOW = 30


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan (NaNs differ)"
    return "0" if value == 0 else f"{value:.6g}"


def _listing(out: Any, label: str, items: list[str]) -> None:
    if items:
        shown = ", ".join(items[:_SHOW]) + (f", … {len(items) - _SHOW} more" if len(items) > _SHOW else "")
        out.print(f"  {label} ({len(items)}): {shown}", markup=False, soft_wrap=True)


def _render(out: Any, report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    out.print(f"[bold]A[/bold] {escape(report.a)}", soft_wrap=True)
    out.print(f"[bold]B[/bold] {escape(report.b)}", soft_wrap=True)
    _listing(out, "only in A", report.only_a)
    _listing(out, "only in B", report.only_b)
    _listing(out, "renamed (same values)", [f"{x} → {y}" for x, y in report.renamed])
    changed = [d for d in report.common if not d.equal]
    if changed:
        table = Table(show_edge=False)
        for column in ("key", "dtype", "shape", "max abs diff"):
            table.add_column(column, justify="right" if column == "max abs diff" else "left")
        for entry in changed[:_SHOW]:
            dtype = entry.dtype_a if entry.dtype_a == entry.dtype_b else f"{entry.dtype_a} → {entry.dtype_b}"
            shape = str(list(entry.shape_a)) if entry.shape_a == entry.shape_b else f"{list(entry.shape_a)} → {list(entry.shape_b)}"
            table.add_row(escape(entry.key), dtype, escape(shape), _number(entry.max_abs_diff))
        out.print(table)
        if len(changed) > _SHOW:
            out.print(f"  … {len(changed) - _SHOW} more differing tensors (--json lists all)", soft_wrap=True)
    same = len(report.common) - len(changed)
    summary = (f"{len(report.common)} common tensors ({same} identical, {len(report.value_changes)} with different values, "
               f"{len(report.dtype_changes)} dtype and {len(report.shape_changes)} shape changes), "
               f"{len(report.only_a)} only in A, {len(report.only_b)} only in B; max abs diff {_number(report.max_abs_diff)}")
    out.print(summary, soft_wrap=True)
    if report.identical:
        out.print("[green]✓[/green] identical tensors", soft_wrap=True)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--select", metavar="KEY", help="Take the weights from this key of a bundle (applies to both files).")
@click.option("--fail-on-difference", is_flag=True, help="Exit 1 when the tensors differ in any way.")
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(a: str, b: str, select: str | None, fail_on_difference: bool, allow_calls: tuple[str, ...], as_json: bool) -> None:
    """Compare the tensors of A and B: keys only in one, dtype and shape changes, max absolute difference.

    Works across formats (a .pth against a .safetensors); nothing is executed from either file.
    Exits 0, or 1 with --fail-on-difference when anything differs.
    """
    from ckpt_migrate.reports.diff import diff

    report = diff(a, b, select=select, allow_calls=allow_calls)
    if as_json:
        emit_json(report.to_dict())
    else:
        _render(console(), report)
    sys.exit(1 if fail_on_difference and not report.identical else 0)
