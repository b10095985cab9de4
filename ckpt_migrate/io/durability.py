"""Making written outputs durable before anything records them: fsync of files and folders, or one syncfs.

``migrate`` promises that a manifest record never names an output a power loss could still take
away. Per file that costs an fsync of the output and of its folder; for a batch of outputs on one
local file system a single ``syncfs`` of that file system does the same work once.
"""

from __future__ import annotations

import ctypes
import os
from typing import Iterable


def fsync_path(path: str) -> None:
    """fsync a file, or a folder where the file system allows it.

    Raises:
        OSError: a file cannot be opened or synced (errors of folders are ignored: some file
            systems cannot sync a directory).
    """
    is_dir = os.path.isdir(path)
    try:
        handle = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(handle)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(handle)


def sync_outputs(paths: Iterable[str]) -> None:
    """fsync every file under ``paths`` (files or folders), then each folder that holds them, deepest first.

    Raises:
        OSError: a file cannot be synced.
    """
    folders = set()
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            for folder, _, files in os.walk(path):
                for name in files:
                    fsync_path(os.path.join(folder, name))
                folders.add(folder)
        elif os.path.isfile(path):
            fsync_path(path)
        folders.add(os.path.dirname(os.path.abspath(path)))
    for folder in sorted(folders, key=len, reverse=True):
        fsync_path(folder)


_SYNC_FILE_RANGE_WRITE = 2
_writeback_call: list = []


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now, without waiting for them.

    A big output then reaches the disk while the rest is still being copied and hashed, instead
    of all at once when the user's ``sync`` or the next flush comes (``sync_file_range(2)`` with
    ``SYNC_FILE_RANGE_WRITE``; nothing where the call does not exist). It promises no durability:
    that is :func:`fsync_path` and :func:`make_durable`.

    Args:
        fd: an open descriptor of a regular file being written.
    """
    if not _writeback_call:
        try:
            call = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
        except OSError:
            call = None
        if call is not None:
            call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        _writeback_call.append(call)
    call = _writeback_call[0]
    if call is not None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _syncfs(root: str) -> bool:
    """``syncfs(2)`` of the file system holding ``root``; False where the call does not exist."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    call = getattr(libc, "syncfs", None)
    if call is None:
        return False
    handle = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if call(handle) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), root)
    finally:
        os.close(handle)
    return True


def make_durable(paths: Iterable[str], root: str) -> None:
    """Make every output in ``paths`` (all under the local folder ``root``) durable, names included.

    One ``syncfs`` of ``root``'s file system writes back every dirty file and directory entry on
    it, which covers a whole batch of outputs at the cost of one call; where ``syncfs`` is missing,
    each output and its folders are fsynced.

    Raises:
        OSError: the file system reports a write-back error.
    """
    paths = list(paths)
    if not paths:
        return
    if not _syncfs(root):
        sync_outputs(paths)
