"""Turning torch's persistent ids into lazy storage references (zip and legacy layouts)."""

from __future__ import annotations

from typing import Any, Callable

from ckpt_migrate.model.checkpoint import ByteSource, StorageRef
from ckpt_migrate.model.dtypes import DType
from ckpt_migrate.errors import CorruptFileError
from ckpt_migrate.unpickler import GlobalRef
from ckpt_migrate.unpickler.allowlist import storage_dtype


def storage_type(value: Any, path: str) -> DType:
    """The element type of a storage class named in a persistent id.

    Raises:
        CorruptFileError: the name is not a torch storage class.
    """
    name = value.dotted if isinstance(value, GlobalRef) else repr(value)
    dtype = storage_dtype(name) if isinstance(value, GlobalRef) else None
    if dtype is None:
        raise CorruptFileError(f"persistent id names {name}, which is not a torch storage type", path=path)
    return dtype


def location_label(value: Any) -> str:
    """The device a storage was saved from, as a plain label (``cuda:0`` opens on CPU)."""
    return str(value) if value is not None else "cpu"


def check_pid(pid: Any, path: str, min_len: int) -> tuple:
    """Validate the shape of a persistent id tuple.

    Raises:
        CorruptFileError: the id is not a tuple of at least ``min_len`` items with a string tag.
    """
    if not isinstance(pid, tuple) or len(pid) < min_len or not isinstance(pid[0], str):
        raise CorruptFileError(f"unexpected persistent id {pid!r:.80}", path=path)
    return pid


def new_storage(key: str, dtype: DType, numel: Any, location: Any, source: ByteSource, path: str) -> StorageRef:
    """A storage reference after checking its declared size.

    Raises:
        CorruptFileError: the element count is not a non-negative integer or does not fit the bytes.
    """
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise CorruptFileError(f"storage {key} declares {numel!r} elements", path=path)
    if numel * dtype.itemsize > source.length:
        raise CorruptFileError(
            f"storage {key} declares {numel} {dtype.name} elements ({numel * dtype.itemsize} bytes) but holds {source.length} bytes",
            path=path,
        )
    return StorageRef(str(key), dtype, numel, location_label(location), source)


StorageLoader = Callable[[Any], Any]
