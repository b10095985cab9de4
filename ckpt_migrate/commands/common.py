"""What every subcommand shares: error handling, JSON output, repeated transform options."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Any, Callable

import click

from ckpt_migrate.errors import CkptMigrateError


def fail(message: str, code: int) -> None:
    """Print one line on stderr and exit with ``code``."""
    click.echo(f"ckpt-migrate: error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into one stderr line and their exit code; never show a traceback unless --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool((ctx.find_root().obj or {}).get("debug"))
        try:
            return func(*args, **kwargs)
        except CkptMigrateError as error:
            if debug:
                traceback.print_exc()
            fail(str(error).replace("\n", " "), error.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - last line of defence: one line, never a traceback
            if debug:
                traceback.print_exc()
            fail(f"internal error: {type(error).__name__}: {error} (rerun with --debug and report it)", 1)

    return wrapper


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, default=str))


def console() -> Any:
    """A rich console on stdout."""
    from rich.console import Console

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 150
    return Console(highlight=False, soft_wrap=True, width=width)


def read_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--allow-call``: every command that reads a pickle accepts it."""
    return click.option("--allow-call", "allow_calls", multiple=True, metavar="MODULE.NAME",
                        help="Accept a call to this callable as an inert record (never executed). Repeatable.")(func)


def transform_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The transform flags ``convert`` and ``migrate`` share."""
    options = [
        click.option("--schema", "schemas", multiple=True, metavar="ID|FILE", help="Key-renaming schema, applied in order. Repeatable."),
        click.option("--strict", "strict_schemas", is_flag=True, help="A schema rule that touches nothing is an error."),
        click.option("--select", metavar="KEY", help="Take the weights from this key of a bundle (dotted path allowed)."),
        click.option("--ema", is_flag=True, help="Take the EMA weights (state_dict_ema / model_ema)."),
        click.option("--arch", metavar="SPEC", help="Rebuild this architecture: vgg16, torchvision:resnet50, auto, or package.module:Class."),
        click.option("--arch-kwargs", metavar="JSON", help="Keyword arguments for the architecture builder, as JSON."),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Cast floating tensors (integer and bool tensors untouched)."),
        click.option("--strip-optimizer", is_flag=True, help="Drop optimizer, scheduler and scaler state."),
        click.option("--max-shard-size", metavar="SIZE", help="Shard safetensors output into a folder (e.g. 2GB)."),
        click.option("--trust-module", "trust_modules", multiple=True, metavar="MODULE", help="Import your own classes under MODULE to rebuild full models. Repeatable."),
    ]
    for option in reversed(options):
        func = option(func)
    return read_options(func)
