"""Carry a file over byte for byte: a temporary name in DST, sha256 checked against the source, then renamed.

Used by ``migrate`` for every file of a model folder that is not a checkpoint (configs, tokenizer
files, model cards, images…). Outputs are never written through a symlink inside DST; with
``fsync`` the file and its folder are made durable before the caller records them.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ckpt_migrate.errors import CkptMigrateError, OutputExistsError, UsageError, VerificationError
from ckpt_migrate.io.atomic import remove_quietly, temp_name
from ckpt_migrate.io.hashing import file_sha256
from ckpt_migrate.io.durability import sync_outputs
from ckpt_migrate.io.source import Source
from ckpt_migrate.io.trees import CHUNK, Tree


def check_no_links(tree: Tree, rel: str) -> None:
    """Refuse a destination that is, or lies under, a symlink inside a local DST.

    Raises:
        UsageError: a component of ``rel`` below DST's root is a symlink.
    """
    if not tree.local:
        return
    parts = rel.split("/")
    for count in range(1, len(parts) + 1):
        path = tree.path("/".join(parts[:count]))
        if os.path.islink(path):
            raise UsageError("is a symlink inside the destination; outputs are never written through links", path=path)


def copy_file(src: str, tree: Tree, rel: str, *, overwrite: bool, fsync: bool = True) -> dict[str, Any]:
    """Copy ``src`` (a path or URL) to ``rel`` under ``tree``, verified by sha256; return the result fields.

    Raises:
        OutputExistsError: the destination exists and ``overwrite`` is false.
        VerificationError: the copy's bytes differ from the source's.
        CkptMigrateError: the source cannot be read or the destination written.
    """
    check_no_links(tree, rel)
    if tree.exists(rel) and not overwrite:
        raise OutputExistsError("already exists; pass --force to overwrite it", path=tree.url_of(rel))
    if tree.local:
        target = tree.path(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = temp_name(target)
    else:
        import tempfile

        handle, tmp = tempfile.mkstemp(prefix="ckpt-migrate-copy-")
        os.close(handle)
    digest = hashlib.sha256()
    try:
        with Source(src).open() as reader, open(tmp, "wb") as writer:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
        expected = digest.hexdigest()
        if file_sha256(tmp) != expected:
            raise VerificationError("the copy differs from the source", path=src)
        if tree.local:
            check_no_links(tree, rel)
            os.replace(tmp, target)
            if fsync:
                sync_outputs([target])
        else:
            from ckpt_migrate.batch.worker import upload

            upload(tmp, tree, rel)
    except OSError as error:
        raise CkptMigrateError(f"cannot copy: {error.strerror or error}", path=src) from None
    finally:
        remove_quietly(tmp)
    size, mtime = tree.stat(rel) or (0, 0.0)
    return {"sha256": expected, "kind": "file", "output_size": size, "output_mtime": mtime, "output_sha256": expected, "verified": True}
