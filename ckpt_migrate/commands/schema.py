"""``ckpt-migrate schema list | show ID | infer SRC --target SPEC -o FILE``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ckpt_migrate.commands.common import console, emit_json, handle_errors, read_options

_SHOW = 20


def _schema_json(schema: Any) -> dict[str, Any]:
    return {"id": schema.name, "description": schema.description, "source": schema.source, "extends": list(schema.base),
            "rules": [{"index": i, "kind": rule.kind, "summary": rule.describe()} for i, rule in enumerate(schema.rules, start=1)]}


@click.group("schema")
def command() -> None:
    """List, show and infer key-renaming schemas (TOML files of ordered rules)."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def list_command(as_json: bool) -> None:
    """List the built-in schemas and those third parties register (entry point group ckpt_migrate.schemas)."""
    from rich.markup import escape
    from rich.table import Table

    from ckpt_migrate.schemas import list_schemas

    schemas = list_schemas()
    if as_json:
        emit_json({"schemas": [_schema_json(s) for s in schemas]})
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("origin", no_wrap=True)
    table.add_column("description")
    for schema in schemas:
        origin = "built-in" if schema.source.startswith("builtin:") else schema.source
        table.add_row(schema.name, escape(origin), escape(schema.description))
    console().print(table)


@command.command("show")
@click.argument("schema_id", metavar="ID|FILE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def show_command(schema_id: str, as_json: bool) -> None:
    """Show one schema's description and its rules, in the order they run (bases first)."""
    from rich.markup import escape

    from ckpt_migrate.schemas import load_schema, resolve_schemas

    schema = load_schema(schema_id)
    chain = resolve_schemas([schema])
    if as_json:
        emit_json({**_schema_json(schema), "resolved": [s.name for s in chain]})
        return
    out = console()
    for item in chain:
        out.print(f"[bold]{escape(item.name)}[/bold]  ({escape(item.source)})", soft_wrap=True)
        if item.description:
            out.print(f"  {escape(item.description)}", soft_wrap=True)
        if item.base:
            out.print(f"  extends: {escape(', '.join(item.base))}", soft_wrap=True)
        for index, rule in enumerate(item.rules, start=1):
            out.print(f"  {index}. {rule.describe()}", markup=False, soft_wrap=True)


def _write_text(path: str, text: str, force: bool) -> None:
    from ckpt_migrate.io.atomic import atomic_path

    with atomic_path(path, force) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)


def _report(out: Any, alignment: Any, src: str, target: Any, output: str | None, after: Any) -> None:
    from rich.markup import escape

    renamed = sum(1 for s, t, _ in alignment.matches if s != t)
    total = len(alignment.matches) + len(alignment.unmatched_source)
    out.print(f"matched {len(alignment.matches)} of {total} source keys to {escape(target.label)} "
              f"({renamed} renamed, {len(alignment.matches) - renamed} unchanged)", soft_wrap=True)
    if alignment.guessed:
        out.print(f"  guessed: {len(alignment.guessed)} key(s) matched by shape and order only (modules of identical shapes "
                  f"paired in the order they appear); review them{f' in {output}' if output else ''}", markup=False, soft_wrap=True)
    if output:
        out.print(f"[green]✓[/green] wrote {escape(output)}", soft_wrap=True)
    for key in alignment.ambiguous:
        options = ", ".join(alignment.candidates.get(key, []))
        out.print(f"  ambiguous: {key} fits several targets equally: {options}", markup=False, soft_wrap=True)
    plain = [k for k in alignment.unmatched_source if k not in alignment.ambiguous]
    for label, items in (("unmatched source", plain), ("unmatched target", alignment.unmatched_target)):
        if items:
            shown = ", ".join(items[:_SHOW]) + (f", … {len(items) - _SHOW} more" if len(items) > _SHOW else "")
            out.print(f"  {label} ({len(items)}): {shown}", markup=False, soft_wrap=True)
    for key, a, b in alignment.shape_mismatches:
        out.print(f"  shape differs: {key} source {list(a)}, target {list(b)}", markup=False, soft_wrap=True)
    if after is not None:
        state = "loads strictly" if after.ok else (f"{len(after.matched)} matched, {len(after.missing)} missing, "
                                                    f"{len(after.unexpected)} unexpected, {len(after.mismatched)} mismatched")
        out.print(f"  with this schema: {state}; check with `ckpt-migrate check {src} --target {target.label} --schema {output}`",
                  markup=False, soft_wrap=True)


@command.command("infer")
@click.argument("src")
@click.option("--target", "target_spec", required=True, metavar="SPEC",
              help="Architecture (vgg16, torchvision:resnet50, package.module:Class) or a reference checkpoint file.")
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to write the schema (.toml).")
@click.option("--arch-kwargs", metavar="JSON", help="Keyword arguments for the target architecture, as JSON.")
@click.option("--name", metavar="NAME", help="Schema name (default: the output file's stem).")
@click.option("--select", metavar="KEY", help="Take SRC's weights from this key of a bundle.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def infer_command(src: str, target_spec: str, output: str, arch_kwargs: str | None, name: str | None, select: str | None,
                  force: bool, allow_calls: tuple[str, ...], as_json: bool) -> None:
    """Align SRC's keys with TARGET's (name, then suffix, then shape and order) and write a reviewable schema.

    Keys matched by shape and order only (modules of identical shapes paired in the order they
    appear) are reported as guesses to review; keys it could not match and ambiguous ones are
    reported and listed as comments in the file. Exits 1, writing nothing, when no key matches at all.
    """
    from ckpt_migrate.api import load
    from ckpt_migrate.io.atomic import check_destination
    from ckpt_migrate.errors import CkptMigrateError
    from ckpt_migrate.transforms.schemas import CheckpointTensorOps
    from ckpt_migrate.schemas import align_keys, apply_schemas, loads_schema, schema_from_alignment
    from ckpt_migrate.architectures.targets import resolve_target
    from ckpt_migrate.options import parse_arch_kwargs
    from ckpt_migrate.reports.check import check_report

    kwargs = parse_arch_kwargs(arch_kwargs)
    check_destination(output, force)
    checkpoint = load(src, select=select, allow_calls=allow_calls, hash_source=False)
    target = resolve_target(target_spec, arch_kwargs=kwargs, allow_calls=allow_calls)
    source_shapes = {k: tuple(ref.shape) for k, ref in checkpoint.tensors.items()}
    alignment = align_keys(source_shapes, target.shapes)
    if not alignment.matches:
        if as_json:
            emit_json(_infer_json(src, target, None, alignment, None))
        raise CkptMigrateError(f"no key matches {target.label} by name, suffix or shape; nothing written to {output}", path=src)
    text = schema_from_alignment(alignment, name or Path(output).stem or "inferred")
    schema = loads_schema(text, output)
    renamed = apply_schemas(checkpoint.tensors, [schema], CheckpointTensorOps())
    after = check_report({k: ref.shape for k, ref in renamed.tensors.items()}, target.shapes)
    _write_text(output, text, force)
    if as_json:
        emit_json(_infer_json(src, target, output, alignment, after))
        return
    _report(console(), alignment, src, target, os.fspath(output), after)


def _infer_json(src: str, target: Any, output: str | None, alignment: Any, after: Any) -> dict[str, Any]:
    return {
        "source": src, **target.to_json(), "output": output,
        "matches": [{"source": s, "target": t, "how": how} for s, t, how in alignment.matches],
        "guessed": alignment.guessed,
        "unmatched_source": list(alignment.unmatched_source),
        "unmatched_target": list(alignment.unmatched_target),
        "ambiguous": {k: list(alignment.candidates.get(k, [])) for k in alignment.ambiguous},
        "shape_mismatches": [{"key": k, "source": list(a), "target": list(b)} for k, a, b in alignment.shape_mismatches],
        "after": after.to_json() if after is not None else None,
    }
