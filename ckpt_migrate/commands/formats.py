"""``ckpt-migrate formats``: registered readers and writers (imports no torch)."""

from __future__ import annotations

import importlib.util

import click

from ckpt_migrate.commands.common import console, emit_json, handle_errors


def _available(requires: tuple[str, ...]) -> list[str]:
    return [name for name in requires if importlib.util.find_spec(name) is None]


@click.command("formats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def command(as_json: bool) -> None:
    """List the registered readers and writers, where each comes from and what it needs."""
    from ckpt_migrate.converters.registry import READERS, WRITERS

    rows = []
    for kind, registry in (("reader", READERS), ("writer", WRITERS)):
        for name, entry in registry.entries().items():
            cls = entry.load()
            requires = tuple(getattr(cls, "requires", ()))
            rows.append({"kind": kind, "name": name, "description": cls.description, "suffixes": list(getattr(cls, "suffixes", ())),
                         "requires": list(requires), "missing": _available(requires), "origin": entry.origin})
    if as_json:
        emit_json({"readers": [r for r in rows if r["kind"] == "reader"], "writers": [r for r in rows if r["kind"] == "writer"]})
        return
    from rich.table import Table

    table = Table()
    for column in ("kind", "name", "description", "needs"):
        table.add_column(column)
    for row in rows:
        needs = ", ".join(row["requires"]) or "-"
        if row["missing"]:
            needs += f" [red](missing: {', '.join(row['missing'])})[/red]"
        table.add_row(row["kind"], row["name"], row["description"], needs)
    console().print(table)
