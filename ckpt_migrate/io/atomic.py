"""Atomic outputs: write under a temporary name in the destination folder, rename after verification."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator

from ckpt_migrate.errors import CkptMigrateError, OutputExistsError, WriteFailedError

TEMP_MARKER = ".ckpt-migrate-tmp-"
_TORCH_WRITE_FAILURES = ("file write failed", "PytorchStreamWriter", "inline_container")


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


def check_folder(dst: str) -> str:
    """The folder ``dst`` will be written in, which must exist and be writable (it is never created: a typo must not make folders).

    Raises:
        WriteFailedError: the folder is missing, not a folder, or not writable.
    """
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        reason = "is not a folder" if os.path.lexists(folder) else "does not exist; create it first"
        raise WriteFailedError(f"the destination folder {folder} {reason}", path=dst)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteFailedError(f"the destination folder {folder} is not writable; choose a writable destination", path=dst)
    return folder


@contextlib.contextmanager
def atomic_path(dst: str, force: bool = False) -> Iterator[str]:
    """Yield a temporary path; on a clean exit rename it onto ``dst``, on any error remove it.

    An operating-system failure while writing (no space, read-only, permission) becomes one
    :class:`WriteFailedError` naming ``dst``; the temporary is removed either way.

    Raises:
        OutputExistsError: ``dst`` exists and ``force`` is false.
        WriteFailedError: the destination folder is missing or cannot be written.
    """
    check_destination(dst, force)
    check_folder(dst)
    tmp = temp_name(dst)
    try:
        yield tmp
        if os.path.lexists(dst) and (os.path.isdir(dst) or os.path.isdir(tmp)):
            remove_quietly(dst)
        os.replace(tmp, dst)
    except OSError as error:
        remove_quietly(tmp)
        if isinstance(error, CkptMigrateError):
            raise
        raise WriteFailedError.from_os_error(error, dst) from None
    except RuntimeError as error:
        remove_quietly(tmp)
        if any(marker in str(error) for marker in _TORCH_WRITE_FAILURES):
            raise WriteFailedError(f"cannot write the output (disk full or file too large?): {str(error).splitlines()[0][:200]}", path=dst) from None
        raise
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
