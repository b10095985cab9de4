"""The ``ckpt-migrate`` command: a click group whose subcommands are imported only when used.

``ckpt-migrate --help`` and ``ckpt-migrate formats`` never import torch.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from ckpt_migrate.model.provenance import TOOL_VERSION

COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("ckpt_migrate.commands.convert", "Convert one checkpoint to safetensors, ONNX, normalized or DCP."),
    "inspect": ("ckpt_migrate.commands.inspect_", "Show format, kind, tensors, extras and every global's verdict."),
    "scan": ("ckpt_migrate.commands.scan", "Security verdict for files and folders, without unpickling anything."),
    "diff": ("ckpt_migrate.commands.diff", "Compare two checkpoints: keys, shapes, dtypes, max abs difference."),
    "check": ("ckpt_migrate.commands.check", "Warm-start report: how a checkpoint loads into a target architecture."),
    "migrate": ("ckpt_migrate.commands.migrate", "Convert a whole folder tree, resumably and in parallel."),
    "schema": ("ckpt_migrate.commands.schema", "List, show and infer key-renaming schemas."),
    "formats": ("ckpt_migrate.commands.formats", "List registered readers and writers and what each needs."),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs or shows help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                return None
            raise
        return getattr(module, "command")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items() if name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(TOOL_VERSION, prog_name="ckpt-migrate")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def main_group(ctx: click.Context, debug: bool) -> None:
    """Open old PyTorch checkpoints without executing them, and migrate them.

    Exit codes: 0 success, 1 failure, 2 usage error, 3 refused as unsafe.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: exit 2 on every usage error, with a JSON error document under ``--json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main_group.main(args=args, prog_name="ckpt-migrate", standalone_mode=False)
    except click.exceptions.UsageError as error:
        error.show()
        if "--json" in args:
            click.echo(json.dumps({"error": error.format_message(), "path": None, "exit_code": 2}, indent=2))
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    except click.exceptions.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":
    sys.exit(main())
