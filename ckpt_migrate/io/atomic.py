"""Atomic outputs: write under a temporary name in the destination folder, rename after verification."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from typing import Iterator

from ckpt_migrate.errors import CkptMigrateError, OutputExistsError, WriteFailedError

TEMP_MARKER = ".ckpt-migrate-tmp-"
MAX_NAME_BYTES = 255
_TORCH_WRITE_FAILURES = ("file write failed", "PytorchStreamWriter", "inline_container")


def temp_stem(name: str, room: int = 40) -> str:
    """The start of every temporary name for the final name ``name``: ``.NAME`` + :data:`TEMP_MARKER`.

    A name too long to take the suffix (a legal 248-byte file name) is cut and made unique again
    with a digest of the whole name, so the temporary name fits the folder's name limit too.

    Args:
        name: the destination's base name.
        room: bytes kept free after the stem for the process id and a random part.

    Returns:
        The stem, at most ``MAX_NAME_BYTES - room`` bytes long in UTF-8 (for any ``name``).
    """
    stem = f".{name}{TEMP_MARKER}"
    if len(stem.encode("utf-8", "surrogateescape")) + room <= MAX_NAME_BYTES:
        return stem
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    budget = MAX_NAME_BYTES - room - len(TEMP_MARKER) - len(digest) - 2
    cut = name.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore")
    return f".{cut}~{digest}{TEMP_MARKER}"


def temp_name(dst: str) -> str:
    """A unique temporary path beside ``dst`` (same folder, so the final rename is atomic).

    The name is ``<stem><pid>-<random>`` (see :func:`temp_stem`); it fits any legal file name.
    """
    folder, name = os.path.split(os.path.abspath(dst))
    return os.path.join(folder, f"{temp_stem(name)}{os.getpid()}-{uuid.uuid4().hex[:8]}")


_SCANNED_FOLDERS: dict[str, frozenset[str]] = {}
"""Per folder, the temporary names found there by this process's first scan of it (see :func:`remove_stale_temporaries`)."""


def remove_stale_temporaries(dst: str) -> list[str]:
    """Remove temporaries of ``dst`` left by runs that were killed (their process no longer exists).

    Only names built by :func:`temp_name` for this very destination are considered, and only
    those whose process id is not a live process on this machine; a live run's temporary stays.
    A process lists each folder once and remembers the temporaries it saw there: listing a
    folder for every output written into it costs time in proportion to the folder, so a batch
    of thousands of outputs in one folder would pay for it thousands of times. Leftovers of a
    run killed after that first listing are removed by the next process that writes there.

    Args:
        dst: the destination path.

    Returns:
        The paths removed.
    """
    folder, name = os.path.split(os.path.abspath(dst))
    stem = temp_stem(name)
    removed: list[str] = []
    entries = _SCANNED_FOLDERS.get(folder)
    if entries is None:
        try:
            entries = frozenset(entry for entry in os.listdir(folder) if TEMP_MARKER in entry)
        except OSError:
            return removed
        _SCANNED_FOLDERS[folder] = entries
    for entry in entries:
        if not entry.startswith(stem):
            continue
        pid_text = entry[len(stem):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        path = os.path.join(folder, entry)
        remove_quietly(path)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


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
    remove_stale_temporaries(dst)
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
