"""``ckpt-migrate convert SRC DST``."""

from __future__ import annotations


import click

from ckpt_migrate.reports.units import human_size
from ckpt_migrate.commands.common import console, emit_json, handle_errors, transform_options


@click.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("--to", "to", metavar="FORMAT", help="Writer name (safetensors, onnx, normalized, dcp); default from DST's suffix.")
@transform_options
@click.option("--input-shape", metavar="SHAPE", help="ONNX: example input shape, e.g. 1,3,224,224.")
@click.option("--opset", type=int, help="ONNX: opset version.")
@click.option("--static", is_flag=True, help="ONNX: fixed batch size instead of a dynamic batch axis.")
@click.option("--atol", type=float, help="ONNX: tolerance of the onnxruntime-vs-torch check.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True, help="ONNX: which torch exporter.")
@click.option("--no-verify", is_flag=True, help="Skip reading the output back (not recommended).")
@click.option("--no-source-hash", is_flag=True, help="safetensors: do not record the source's sha256 in the metadata (saves one read of the source).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(src: str, dst: str, to: str | None, schemas: tuple[str, ...], strict_schemas: bool, select: str | None, ema: bool,
            arch: str | None, arch_kwargs: str | None, dtype: str | None, strip_optimizer: bool, max_shard_size: str | None,
            trust_modules: tuple[str, ...], allow_calls: tuple[str, ...], input_shape: str | None, opset: int | None,
            static: bool, atol: float | None, exporter: str, no_verify: bool, no_source_hash: bool, force: bool, as_json: bool) -> None:
    """Convert SRC to DST without executing anything from SRC, then verify DST.

    The output is written under a temporary name and renamed into place only after it reads back
    equal to the source.
    """
    from rich.markup import escape

    from ckpt_migrate.api import convert
    from ckpt_migrate.architectures.targets import parse_arch_kwargs

    kwargs = parse_arch_kwargs(arch_kwargs) or None
    writer_options = {k: v for k, v in {
        "arch": arch, "arch_kwargs": kwargs, "trust_modules": list(trust_modules), "input_shape": input_shape,
        "opset": opset, "static": static, "atol": atol, "exporter": exporter,
    }.items() if v is not None and v is not False and v != []}
    if no_source_hash:
        writer_options["source_hash"] = False
    result = convert(src, dst, to=to, select=select, ema=ema, schemas=schemas, dtype=dtype, strip_optimizer=strip_optimizer,
                     allow_calls=allow_calls, verify=not no_verify, force=force, max_shard_size=max_shard_size,
                     strict_schemas=strict_schemas, **writer_options)
    if as_json:
        emit_json(result.to_json())
        return
    out = console()
    check = "verified bit-exact" if result.report.verified else "NOT verified (--no-verify)"
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
