"""The plan of a streamed safetensors file: its header and where every tensor's bytes come from, read from references alone.

Torch-free and side-effect free: :func:`plan_stream` decides whether a checkpoint can be written
exactly by the streaming path (:mod:`.stream`) and lays out the file; anything it cannot reproduce
bit for bit raises :class:`CannotStream` and the writer takes the torch path instead.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.errors import CorruptFileError
from ckpt_migrate.model.checkpoint import DerivedTensor, PiecedSource, TensorRef

CASTABLE = ("float64", "float32", "float16", "bfloat16")
CAST_TARGETS = ("float32", "float16", "bfloat16")


class CannotStream(Exception):
    """Private signal: the streaming path cannot be exact here; only the safetensors writer catches it."""


@dataclass(frozen=True)
class Entry:
    """One output tensor: its name, output dtype and shape, the reference it comes from, and its data offsets."""

    name: str
    dtype: _dtypes.DType
    shape: tuple[int, ...]
    ref: TensorRef
    begin: int
    end: int

    @property
    def raw(self) -> bool:
        """True when the output bytes are one contiguous range of the source, copied as they are."""
        return self.dtype == self.ref.dtype and self.ref.is_contiguous() and not needs_swap(self.ref)


@dataclass(frozen=True)
class StreamPlan:
    """The complete layout of an output file: header bytes (length prefix, JSON, padding) and entries in data order."""

    entries: tuple[Entry, ...]
    header: bytes
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return len(self.header)

    @property
    def size(self) -> int:
        return self.data_start + (self.entries[-1].end if self.entries else 0)


def needs_swap(ref: TensorRef) -> bool:
    return ref.byteorder == "big" and ref.dtype.itemsize > 1


def _cast_source(value: DerivedTensor) -> TensorRef | None:
    inputs = value.inputs
    if len(inputs) != 1 or not isinstance(inputs[0], TensorRef) or not value.is_cast:
        return None
    if tuple(inputs[0].shape) != tuple(value.shape) or value.quantization or inputs[0].quantization:
        return None
    return inputs[0]


def _entry_source(name: str, value: Any) -> tuple[TensorRef, _dtypes.DType]:
    """The reference a tensor's bytes come from and the dtype it is written as.

    Raises:
        CannotStream: the tensor is derived by something other than a supported cast, or its type or bytes do not fit.
    """
    if isinstance(value, TensorRef):
        ref, dtype = value, value.dtype
    elif isinstance(value, DerivedTensor) and (source := _cast_source(value)) is not None:
        ref, dtype = source, value.dtype
        if ref.dtype.name not in CASTABLE or dtype.name not in CAST_TARGETS:
            raise CannotStream(f"tensor {name!r}: cast {ref.dtype.name} -> {dtype.name} is not streamed")
    elif isinstance(value, DerivedTensor):
        raise CannotStream(f"tensor {name!r} is computed ({value.description or 'derived'})")
    else:
        raise CannotStream(f"tensor {name!r} is a {type(value).__name__}, not a tensor reference")
    if ref.quantization or ref.dtype.kind == "quantized" or dtype.safetensors is None or ref.dtype.safetensors is None:
        raise CannotStream(f"tensor {name!r} is {ref.dtype.name}, which has no plain safetensors code")
    if ref.dtype.itemsize not in (1, 2, 4, 8):
        raise CannotStream(f"tensor {name!r} has {ref.dtype.itemsize}-byte elements")
    source = ref.storage.source
    if isinstance(source, PiecedSource):
        if dtype != ref.dtype or not ref.is_contiguous() or needs_swap(ref):
            raise CannotStream(f"tensor {name!r} is stitched from several byte ranges and needs a cast, gather or byte swap")
        if any(piece.buffer is None and piece.local_path is None for piece in source.pieces):
            raise CannotStream(f"tensor {name!r} has bytes outside local files")
        return ref, dtype
    if source.buffer is None and source.local_path is None:
        raise CannotStream(f"tensor {name!r} lives in {source.name}, which is not a local file")
    return ref, dtype


def plan_stream(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> StreamPlan:
    """Lay out a safetensors file for ``tensors`` from their references alone (nothing is read).

    Data are ordered by element size, largest first (as the safetensors library does, so every
    tensor is aligned), keeping the checkpoint's order within a size; tied tensors get one copy
    per name.

    Raises:
        CannotStream: some tensor cannot be streamed exactly (the caller falls back to torch).
        CorruptFileError: a tensor's bytes lie past the end of its file.
    """
    items: list[tuple[str, TensorRef, _dtypes.DType]] = []
    sizes: dict[str, int] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CannotStream(f"tensor name {name!r} is not a plain string key")
        ref, dtype = _entry_source(name, value)
        source = ref.storage.source
        if ref.storage.nbytes > source.length:
            raise CorruptFileError(f"storage of tensor {name!r} needs {ref.storage.nbytes} bytes but its range holds {source.length}", path=source.name)
        for piece in source.pieces if isinstance(source, PiecedSource) else (source,):
            if piece.buffer is None:
                if piece.name not in sizes:
                    sizes[piece.name] = os.path.getsize(piece.name)
                size = sizes[piece.name]
                if piece.offset + (piece.length if piece is not source else ref.storage.nbytes) > size:
                    raise CorruptFileError(f"storage of tensor {name!r} runs past the end of the file (truncated)", path=piece.name)
        items.append((name, ref, dtype))
    items.sort(key=lambda item: -item[2].itemsize)
    entries: list[Entry] = []
    cursor = 0
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    for name, ref, dtype in items:
        nbytes = ref.numel * dtype.itemsize
        entries.append(Entry(name, dtype, tuple(ref.shape), ref, cursor, cursor + nbytes))
        header[name] = {"dtype": dtype.safetensors, "shape": list(ref.shape), "data_offsets": [cursor, cursor + nbytes]}
        cursor += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return StreamPlan(tuple(entries), struct.pack("<Q", len(text)) + text, dict(metadata))


def planned_header(plan: StreamPlan) -> dict[str, tuple[str, list[int], list[int]]]:
    """Name → (dtype code, shape, data offsets) of a plan, as :func:`check_header` compares them."""
    return {e.name: (e.dtype.safetensors or "", list(e.shape), [e.begin, e.end]) for e in plan.entries}
