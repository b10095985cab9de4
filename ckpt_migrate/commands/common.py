"""What every subcommand shares: error handling, JSON output, repeated transform options."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Any, Callable

import click

from ckpt_migrate.errors import CkptMigrateError, describe_os_error


def fail(message: str, code: int) -> None:
    """Print one line on stderr and exit with ``code``; text from files in ``message`` is made inert."""
    from ckpt_migrate.reports.inert import inert_text

    click.echo(f"ckpt-migrate: error: {inert_text(message)}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors into one stderr line and their exit code; never show a traceback unless --debug.

    With ``--json`` the failure is also one JSON document on stdout (``error``, ``path``,
    ``exit_code``). Operating-system errors (no space, read-only, permission) are failures of the
    environment, exit 1; "internal error" is kept for bugs.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool((ctx.find_root().obj or {}).get("debug"))
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except CkptMigrateError as error:
            if debug:
                traceback.print_exc()
            _failure(error.message, error.path, error.exit_code, as_json)
        except KeyboardInterrupt:
            _failure("interrupted", None, 130, as_json)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except OSError as error:
            if debug:
                traceback.print_exc()
            _failure(describe_os_error(error), error.filename, 1, as_json)
        except Exception as error:  # noqa: BLE001 - last line of defence: one line, never a traceback
            if debug:
                traceback.print_exc()
            _failure(f"internal error: {type(error).__name__}: {error} (rerun with --debug and report it)", None, 1, as_json)

    return wrapper


def _failure(message: str, path: Any, code: int, as_json: bool) -> None:
    """Report a failure once: a JSON document on stdout with ``--json``, always one line on stderr; then exit."""
    text = " ".join(str(message).split())
    if as_json:
        emit_json({"error": text, "path": None if path is None else os.fspath(path), "exit_code": code})
    fail(f"{path}: {text}" if path is not None else text, code)


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, default=str))


def console() -> Any:
    """A rich console on stdout that escapes control characters in everything it prints."""
    from ckpt_migrate.reports.inert import inert_console

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 150
    return inert_console(highlight=False, soft_wrap=True, width=width)


def convert_flags(*groups: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Click options for the :class:`~ckpt_migrate.options.ConvertOptions` fields of ``groups``.

    Each option's parameter name is its field's name, so :func:`convert_options_from` can build
    the options object from the command's keyword arguments. Groups: ``convert`` (``--to``),
    ``read``, ``transform``, ``onnx``, ``write``.
    """
    import dataclasses

    from ckpt_migrate.options import ConvertOptions

    declared = []
    for spec in dataclasses.fields(ConvertOptions):
        meta = spec.metadata
        if not meta or meta["group"] not in groups:
            continue
        click_args = dict(meta["click"])
        choices = click_args.pop("choices", None)
        if choices:
            click_args["type"] = click.Choice(list(choices))
        if click_args.pop("negate", False):
            click_args.update(flag_value=False, default=True, is_flag=True)
        elif spec.default is not dataclasses.MISSING and not click_args.get("multiple"):
            click_args.setdefault("default", spec.default)
        declared.append(click.option(meta["decl"], spec.name, help=meta["help"], **click_args))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(declared):
            func = option(func)
        return func

    return decorate


def convert_options_from(params: dict[str, Any]) -> Any:
    """Pop the :class:`~ckpt_migrate.options.ConvertOptions` fields out of a command's keyword arguments.

    Raises:
        UsageError: a value fails validation (exit 2).
    """
    import dataclasses

    from ckpt_migrate.options import ConvertOptions

    names = {spec.name for spec in dataclasses.fields(ConvertOptions)}
    return ConvertOptions(**{name: params.pop(name) for name in list(params) if name in names})


def read_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--allow-call``: every command that reads a pickle accepts it."""
    return convert_flags("read")(func)


def strict_calls_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--strict-calls``: refuse unknown calls instead of keeping them as inert records (inspect, scan)."""
    return convert_flags("calls")(func)
