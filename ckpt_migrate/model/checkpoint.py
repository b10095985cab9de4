"""The data model every reader fills and every writer consumes.

A :class:`Checkpoint` holds tensor *references*: each knows its element type, shape, stride,
storage offset, byte order and where its bytes live, and can be materialized as a torch tensor or
streamed as raw bytes. Nothing here imports torch at import time.
"""

from __future__ import annotations

import math

import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Callable, Iterator

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.errors import CorruptFileError
from ckpt_migrate.model.layout import is_row_major
from ckpt_migrate.unpickler.verdicts import GlobalVerdict


class _Sized:
    """Element and byte counts of anything with a ``shape`` and a ``dtype`` (tensor references, derived tensors)."""

    shape: tuple[int, ...]
    dtype: _dtypes.DType

    @property
    def numel(self) -> int:
        """Elements the shape holds (1 for a 0-d tensor)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the shape holds at this dtype."""
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class ByteSource:
    """A byte range of a file (or of an in-memory buffer) holding one storage.

    ``opener`` opens the underlying file for binary reading; ``offset``/``length`` select the range.
    """

    name: str
    offset: int
    length: int
    opener: Callable[[], BinaryIO] | None = None
    buffer: bytes | None = None

    def read(self, start: int = 0, size: int | None = None) -> bytes:
        """Return ``size`` bytes from ``start`` within the range (all of it by default).

        Raises:
            CorruptFileError: the range is outside the source or the file is shorter than declared.
        """
        if size is None:
            size = self.length - start
        if start < 0 or size < 0 or start + size > self.length:
            raise CorruptFileError(f"read of {size} bytes at {start} is outside a {self.length}-byte storage", path=self.name)
        if self.buffer is not None:
            return bytes(self.buffer[self.offset + start: self.offset + start + size])
        with self.open() as handle:
            handle.seek(self.offset + start)
            data = handle.read(size)
        if len(data) != size:
            raise CorruptFileError(f"storage truncated: wanted {size} bytes at offset {self.offset + start}, got {len(data)}", path=self.name)
        return data

    def open(self) -> BinaryIO:
        """Open the underlying file; the caller seeks to ``offset`` itself."""
        if self.opener is not None:
            return self.opener()
        return open(self.name, "rb")

    @property
    def local_path(self) -> str | None:
        """The local file holding the bytes, when there is one (the streaming path uses it)."""
        if self.buffer is None and self.opener is None and os.path.exists(self.name):
            return self.name
        return None


@dataclass(frozen=True)
class PiecedSource(ByteSource):
    """One storage whose bytes lie in several ranges, read in order (a parameter stitched from partitions).

    ``name`` labels it; ``length`` is the sum of the pieces. Reading touches only the pieces a range
    overlaps, so a consumer holds at most what it asked for.
    """

    pieces: tuple[ByteSource, ...] = ()

    def spans(self, start: int, size: int) -> Iterator[tuple[ByteSource, int, int]]:
        """The pieces covering ``[start, start + size)``: each piece, the start within it and the count.

        Raises:
            CorruptFileError: the range is outside the storage.
        """
        if start < 0 or size < 0 or start + size > self.length:
            raise CorruptFileError(f"read of {size} bytes at {start} is outside a {self.length}-byte storage", path=self.name)
        base = 0
        for piece in self.pieces:
            if size <= 0:
                return
            if start < base + piece.length:
                within = max(0, start - base)
                count = min(piece.length - within, size)
                yield piece, within, count
                start += count
                size -= count
            base += piece.length

    def read(self, start: int = 0, size: int | None = None) -> bytes:
        if size is None:
            size = self.length - start
        return b"".join(piece.read(within, count) for piece, within, count in self.spans(start, size))

    @property
    def local_path(self) -> str | None:
        return None


@dataclass(eq=False)
class StorageRef:
    """One storage: a flat run of ``numel`` elements of ``dtype`` in ``source``.

    Identity matters: tensors that share a StorageRef share bytes (tied weights, views).
    """

    key: str
    dtype: _dtypes.DType
    numel: int
    location: str
    source: ByteSource
    byteorder: str = "little"

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(eq=False)
class TensorRef(_Sized):
    """A lazy tensor: a strided view into a :class:`StorageRef`.

    ``offset`` and ``stride`` count elements, as in torch. ``quantization`` holds the quantizer
    parameters of a quantized tensor as plain data (scheme, scale, zero point, axis).
    """

    storage: StorageRef
    dtype: _dtypes.DType
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0
    requires_grad: bool = False
    quantization: dict[str, Any] | None = None
    subclass: str | None = None
    pickle_state: Any = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.stride = tuple(int(s) for s in self.stride)
        self._check_bounds()

    def _check_bounds(self) -> None:
        if len(self.shape) != len(self.stride):
            raise CorruptFileError(f"tensor has {len(self.shape)} sizes but {len(self.stride)} strides", path=self.storage.source.name)
        if any(s < 0 for s in self.shape) or self.offset < 0 or any(s < 0 for s in self.stride):
            raise CorruptFileError("tensor has a negative size, stride or offset", path=self.storage.source.name)
        if self.numel == 0:
            return
        last = self.offset + sum((size - 1) * step for size, step in zip(self.shape, self.stride))
        if last >= self.storage.numel:
            raise CorruptFileError(
                f"tensor of shape {list(self.shape)} at offset {self.offset} needs element {last} "
                f"but its storage holds {self.storage.numel}",
                path=self.storage.source.name,
            )


    @property
    def byteorder(self) -> str:
        return self.storage.byteorder

    def is_contiguous(self) -> bool:
        """True when the elements lie in row-major order with no gaps."""
        return is_row_major(self.shape, self.stride)

    def byte_range(self) -> tuple[int, int] | None:
        """Start and length, within the storage, of a contiguous tensor's bytes; ``None`` for a strided view."""
        if not self.is_contiguous():
            return None
        return self.offset * self.dtype.itemsize, self.nbytes

    def materialize(self) -> "Any":
        """Return a new contiguous torch tensor with this reference's values (native byte order)."""
        from ckpt_migrate.model.materialize import materialize

        return materialize(self)

    def with_view(self, shape: tuple[int, ...], stride: tuple[int, ...], offset: int) -> "TensorRef":
        """A new reference onto the same storage with another view (used by schema transforms)."""
        return replace(self, shape=tuple(shape), stride=tuple(stride), offset=offset)


@dataclass
class Checkpoint:
    """What a reader found: tensors (lazy), other values as inert data, provenance and architecture."""

    tensors: "OrderedDict[str, TensorRef]" = field(default_factory=OrderedDict)
    extras: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    architecture: Any = None
    format: str = ""
    kind: str = ""
    globals: list[GlobalVerdict] = field(default_factory=list)
    account: Any = None

    def materialize(self) -> "OrderedDict[str, Any]":
        """Return name → torch tensor, keeping tensors that share a storage sharing it."""
        from ckpt_migrate.model.materialize import materialize_all

        return materialize_all(self.tensors)

    def iter_tensors(self) -> Iterator[tuple[str, TensorRef]]:
        return iter(self.tensors.items())


@dataclass(eq=False)
class DerivedTensor(_Sized):
    """A tensor computed from references (a dtype cast, a concatenation): known shape and dtype, built on demand.

    ``build`` receives the torch tensors of ``inputs`` (in order) and returns the result.
    ``is_cast`` marks an element-wise dtype conversion of its single input (writers that stream
    may convert the bytes themselves); ``description`` is for people only.
    """

    dtype: _dtypes.DType
    shape: tuple[int, ...]
    inputs: tuple[Any, ...]
    build: Callable[..., Any]
    description: str = ""
    quantization: dict[str, Any] | None = None
    is_cast: bool = False


    def materialize(self) -> Any:
        return self.build(*(item.materialize() for item in self.inputs))
