"""Atomic outputs: write under a temporary name in the destination folder, rename after verification."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator

from ckpt_migrate.errors import CkptMigrateError, OutputExistsError

TEMP_MARKER = ".ckpt-migrate-tmp-"


def temp_name(dst: str) -> str:
    """A unique temporary path beside ``dst`` (same folder, so the final rename is atomic)."""
    folder, name = os.path.split(os.path.abspath(dst))
    return os.path.join(folder, f".{name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def check_destination(dst: str, force: bool) -> None:
    """Refuse an existing destination unless ``force``.

    Raises:
        OutputExistsError: ``dst`` exists and ``force`` is false.
    """
    if os.path.lexists(dst) and not force:
        raise OutputExistsError("already exists; pass --force to overwrite it", path=dst)


@contextlib.contextmanager
def atomic_path(dst: str, force: bool = False) -> Iterator[str]:
    """Yield a temporary path; on a clean exit rename it onto ``dst``, on any error remove it.

    Raises:
        OutputExistsError: ``dst`` exists and ``force`` is false.
        CkptMigrateError: the destination folder cannot be written.
    """
    check_destination(dst, force)
    folder = os.path.dirname(os.path.abspath(dst))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise CkptMigrateError(f"cannot create the destination folder: {error.strerror}", path=dst) from None
    tmp = temp_name(dst)
    try:
        yield tmp
        if os.path.lexists(dst) and (os.path.isdir(dst) or os.path.isdir(tmp)):
            remove_quietly(dst)
        os.replace(tmp, dst)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path: str) -> None:
    """Remove a file or folder if it exists, ignoring errors."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def is_temp(path: str) -> bool:
    """True for a temporary output left by an interrupted run."""
    return TEMP_MARKER in os.path.basename(path)
