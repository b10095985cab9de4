"""``ckpt-migrate convert SRC DST``."""

from __future__ import annotations

from typing import Any

import click

from ckpt_migrate.options import DTYPE_CHOICES
from ckpt_migrate.reports.units import human_size
from ckpt_migrate.commands.common import console, convert_flags, convert_options_from, emit_json, handle_errors


@click.command("convert")
@click.argument("src")
@click.argument("dst")
@convert_flags("convert", "read", "calls", "transform", "onnx", "write")
@click.option("--quiet", "-q", is_flag=True, help="No progress display (it is shown only on a terminal, never with --json).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(src: str, dst: str, quiet: bool, as_json: bool, **params: Any) -> None:
    """Convert SRC to DST without executing anything from SRC, then verify DST.

    The output is written under a temporary name and renamed into place only after it reads back
    equal to the source.
    """
    from rich.markup import escape

    from ckpt_migrate.api import convert
    from ckpt_migrate.commands.progress import progress_display

    options = convert_options_from(params)
    with progress_display(quiet=quiet, as_json=as_json) as progress:
        result = convert(src, dst, options, progress=progress)
    if as_json:
        emit_json(result.to_dict())
        return
    out = console()
    check = "verified bit-exact" if result.report.verified else "NOT verified (--no-verify)"
    if result.report.verified and options.dtype in DTYPE_CHOICES and result.writer != "onnx":
        check = f"cast to {DTYPE_CHOICES[options.dtype]}, verified bit-exact after the cast"
    if "max_abs_diff" in result.report.details:
        check = f"verified with onnxruntime, max abs diff {result.report.details['max_abs_diff']:.3g}"
    out.print(f"[green]✓[/green] {escape(src)} → {escape(', '.join(result.report.outputs))}")
    out.print(f"  {result.checkpoint.meta.get('reader')} ({result.checkpoint.kind}) → {result.writer}: "
              f"{result.report.tensors} tensors, {human_size(result.report.bytes)}, {check}")
    details = result.report.details
    if "architecture" in details and "exporter" in details:
        kwargs = ", ".join(f"{k}={v}" for k, v in sorted((details.get("arch_kwargs") or {}).items()))
        out.print(f"  architecture: {details['architecture']}{f' ({kwargs})' if kwargs else ''}; {details['exporter']} exporter, "
                  f"opset {details['opset']}, input {details['input_shape']} {details['dtype']}, "
                  f"{'dynamic' if details['dynamic_batch'] else 'fixed'} batch", markup=False)
        for note in details.get("notes", []):
            out.print(f"  note: {note}", markup=False)
    if result.checkpoint.meta.get("schemas"):
        out.print(f"  schemas applied: {', '.join(result.checkpoint.meta['schemas'])}", markup=False)
    for warning in result.checkpoint.meta.get("warnings", []):
        out.print(f"  [yellow]warning:[/yellow] {escape(str(warning))}")
