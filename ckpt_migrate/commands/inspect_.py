"""``ckpt-migrate inspect SRC``."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options, strict_calls_option
from ckpt_migrate.reports.units import human_size

VERDICT_STYLE = {"allowed": "green", "stub": "yellow", "unknown-call": "magenta", "refused": "bold red"}


def render_globals(out: Any, globals_: list[dict]) -> None:
    """A table of every global a pickle names, with its verdict."""
    from rich.table import Table

    table = Table(title="Globals", title_justify="left")
    table.add_column("global")
    table.add_column("verdict")
    table.add_column("offset", justify="right")
    table.add_column("reason")
    for entry in globals_:
        style = VERDICT_STYLE.get(entry["verdict"], "")
        table.add_row(escape(entry["name"]), f"[{style}]{entry['verdict']}[/{style}]", str(entry.get("offset") or ""), escape(entry.get("reason") or ""))
    out.print(table)


def render_deepspeed(out: Any, info: dict) -> None:
    """The layout of a DeepSpeed ZeRO folder: stage, ranks, step, training dtype, where the weights come from, files."""
    dtype = info.get("training_dtype")
    out.print(f"  deepspeed: ZeRO-{info.get('zero_stage')}, {info.get('world_size')} ranks, step {escape(str(info.get('global_steps')))}, "
              f"{escape(str(dtype))} training, {info.get('trainable_parameters')} trainable and {info.get('frozen_parameters')} frozen parameters "
              f"({info.get('trainable_elements')} trainable elements)")
    out.print(f"  weights: {escape(str(info.get('weights')))}")
    files = info.get("files") or {}
    out.print(f"  files: {escape(', '.join(files.get('model_states') or []))} (model states); "
              f"{escape(', '.join(files.get('optim_states') or []))} (fp32 partitions)")
    if info.get("kept_from_module"):
        out.print(f"  kept from the module (DeepSpeed records no master copy): {escape(', '.join(info['kept_from_module']))}")


def render_account(out: Any, storages: dict) -> None:
    """The storage account in one or two lines: storages written, left out (by reason), unexplained."""
    entries = storages.get("storages") or []
    written = [e for e in entries if e.get("status") == "written"]
    left = [e for e in entries if e.get("status") == "left out"]
    unexplained = [e for e in entries if e.get("status") == "unexplained"]
    out.print(f"  storages: {len(entries)}, {len(written)} written ({human_size(sum(e['bytes'] for e in written))})"
              + (f", {len(unexplained)} [bold red]UNEXPLAINED[/bold red] ({human_size(sum(e['bytes'] for e in unexplained))})"
                 if unexplained else ""))
    if left:
        reasons: dict[str, list[int]] = {}
        for entry in left:
            counted = reasons.setdefault(str(entry.get("reason")), [0, 0])
            counted[0] += 1
            counted[1] += entry["bytes"]
        shown = "; ".join(f"{count} {escape(reason)} ({human_size(size)})" for reason, (count, size) in reasons.items())
        out.print(f"  left out: {shown}")


@click.command("inspect")
@click.argument("src")
@click.option("--select", metavar="KEY", help="Inspect the weights under this key of a bundle.")
@click.option("--ema", is_flag=True, help="Inspect the EMA weights.")
@click.option("--weights", type=click.Choice(["master", "module"]), default="master", show_default=True,
              help="DeepSpeed ZeRO folders: fp32 master weights, or the module's own weights (stages 1-2).")
@click.option("--tag", metavar="TAG", help="DeepSpeed folders: inspect this checkpoint tag (global_stepN) instead of the one `latest` names.")
@click.option("--limit", default=40, show_default=True, help="Tensor rows to show (0: all).")
@read_options
@strict_calls_option
@click.option("--quiet", "-q", is_flag=True, help="No progress display (it is shown only on a terminal, never with --json).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(src: str, select: str | None, ema: bool, weights: str, tag: str | None, limit: int, allow_calls: tuple[str, ...], strict_calls: bool,
            quiet: bool, as_json: bool) -> None:
    """Show what SRC holds, without executing anything from it.

    Exits 3 when the file is unsafe as ``scan`` says (a known gadget; with --strict-calls also an
    unknown call); the report still lists every global. Unknown calls are kept as inert records
    and named in one warning line.
    """
    from rich.table import Table

    from ckpt_migrate.api import inspect
    from ckpt_migrate.commands.progress import progress_display

    if tag is not None:
        from ckpt_migrate.converters.readers.deepspeed import tagged_folder

        src = tagged_folder(src, tag)
    with progress_display(quiet=quiet, as_json=as_json) as progress:
        report = inspect(src, allow_calls=allow_calls, select=select, ema=ema, strict_calls=strict_calls, weights=weights,
                         progress=progress)
    code = 3 if report.refused else 0
    if report.warning and not code:
        from ckpt_migrate.reports.inert import inert_text

        click.echo(f"ckpt-migrate: warning: {inert_text(src)}: {inert_text(report.warning)}", err=True)
    if as_json:
        emit_json(report.to_dict())
        sys.exit(code)
    out = console()
    out.print(f"[bold]{escape(src)}[/bold]")
    out.print(f"  format: {report.format}   kind: {report.kind}   reader: {report.reader}")
    if report.selected:
        out.print(f"  weights from: {escape(', '.join(map(str, report.selected)))}")
    if report.classes:
        out.print(f"  classes: {escape(', '.join(report.classes[:8]))}{' …' if len(report.classes) > 8 else ''}")
    deepspeed = (report.meta or {}).get("deepspeed")
    if isinstance(deepspeed, dict):
        render_deepspeed(out, deepspeed)
    if report.error:
        out.print(f"  [yellow]{escape(report.error)}[/yellow]")
    if report.storages is not None:
        render_account(out, report.storages)
    tensors = report.tensors
    if tensors:
        out.print(f"  tensors: {len(tensors)}, {human_size(report.total_bytes)}")
        table = Table(show_edge=False)
        for column in ("name", "dtype", "shape", "bytes"):
            table.add_column(column, justify="right" if column == "bytes" else "left")
        for row in tensors[: limit or None]:
            table.add_row(escape(row["name"]), row["dtype"] + (f" ({row['quantized']})" if row.get("quantized") else ""), str(row["shape"]), human_size(row["bytes"]))
        out.print(table)
        if limit and len(tensors) > limit:
            out.print(f"  … {len(tensors) - limit} more (--limit 0 shows all)")
    arch = report.architecture
    if isinstance(arch, dict) and arch.get("summary"):
        out.print(f"  architecture: {arch['summary']}")
    if report.extras:
        out.print("  extras:")
        for key, value in report.extras.items():
            text = str(value)
            out.print(f"    {key}: {text[:100]}{'…' if len(text) > 100 else ''}", markup=False)
    if report.globals:
        render_globals(out, report.globals)
    if code:
        from ckpt_migrate.reports.inert import inert_text

        names = ", ".join(g["name"] for g in report.globals if g["verdict"] == "refused")
        click.echo(f"ckpt-migrate: error: {inert_text(src)}: refused: names {inert_text(names)}", err=True)
    sys.exit(code)
