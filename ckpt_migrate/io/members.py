"""Members of a folder format (shards, ``.distcp`` files) are read only when they are regular files inside the folder.

A symlink whose target lies outside the folder, a FIFO, a device or a socket is never opened:
a folder handed to the tool cannot make it read bytes from elsewhere on the machine.
"""

from __future__ import annotations

import os
import stat

from ckpt_migrate.errors import CorruptFileError


def member_path(folder: str, name: str, what: str, error_path: str | None = None) -> str:
    """The path of ``name`` in ``folder``, checked to be a regular file that resolves inside the folder.

    Args:
        folder: the folder format's root.
        name: a plain file name listed by the format (no separators).
        what: how messages call the member (``shard listed in the index``, ``item file``).
        error_path: the path errors name (default: the member's own path).

    Returns:
        The member's path.

    Raises:
        CorruptFileError: the member is missing, a link out of the folder, or not a regular file.
    """
    path = os.path.join(folder, name)
    where = error_path or path
    if not os.path.lexists(path):
        raise CorruptFileError(f"{what} {name} is missing", path=where)
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.dirname(real) != real_folder and not real.startswith(real_folder.rstrip(os.sep) + os.sep):
        raise CorruptFileError(f"{what} {name} is a link out of the folder, which is never followed", path=where)
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise CorruptFileError(f"{what} {name} cannot be read: {error.strerror}", path=where) from None
    if not stat.S_ISREG(mode):
        raise CorruptFileError(f"{what} {name} is not a regular file", path=where)
    return path
