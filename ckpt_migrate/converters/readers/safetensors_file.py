"""Reader for safetensors files.

The reader parses the header itself with strict checks (length, JSON, dtypes, offsets that tile
the data section exactly) and hands out byte ranges; no tensor is read until it is needed.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from typing import Any

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.model.checkpoint import StorageRef, TensorRef
from ckpt_migrate.errors import CorruptFileError, NotMyFormat
from ckpt_migrate.io.source import Source
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_RANK = 64


def looks_safetensors(head: bytes) -> bool:
    """True when ``head`` starts with a plausible safetensors header length and ``{``."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= MAX_HEADER_BYTES and head[8:9] == b"{"


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def parse_header(raw: bytes, file_size: int, name: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """Validate a safetensors header; return entries, metadata and the data section's start.

    Raises:
        CorruptFileError: the header lies about its length, JSON, dtypes, shapes or offsets.
    """
    if len(raw) < 8:
        raise CorruptFileError("safetensors file shorter than its 8-byte header length", path=name)
    (length,) = struct.unpack("<Q", raw[:8])
    if length > MAX_HEADER_BYTES:
        raise CorruptFileError(f"safetensors header declares {length} bytes, over the {MAX_HEADER_BYTES}-byte limit", path=name)
    if 8 + length > file_size or len(raw) < 8 + length:
        raise CorruptFileError(f"safetensors header declares {length} bytes but the file holds {file_size - 8}", path=name)
    try:
        header = json.loads(bytes(raw[8: 8 + length]).decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as error:
        raise CorruptFileError(f"safetensors header names {error.args[0]!r} twice; readers could disagree on which to use", path=name) from None
    except (ValueError, RecursionError) as error:
        raise CorruptFileError(f"safetensors header is not valid JSON: {str(error)[:200]}", path=name) from None
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=name)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptFileError("safetensors __metadata__ must map strings to strings", path=name)
    data_start = 8 + length
    data_size = file_size - data_start
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise CorruptFileError(f"safetensors entry {key!r} is not an object", path=name)
        code = entry.get("dtype")
        dtype = _dtypes.BY_SAFETENSORS.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise CorruptFileError(f"safetensors entry {key!r} has unknown dtype {entry.get('dtype')!r}", path=name)
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if isinstance(shape, list) and len(shape) > MAX_RANK:
            raise CorruptFileError(f"safetensors entry {key[:80]!r} has {len(shape)} dimensions, over the limit of {MAX_RANK} "
                                   "(real tensors have a handful)", path=name)
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise CorruptFileError(f"safetensors entry {key!r:.80} has an invalid shape {shape!r:.80}", path=name)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise CorruptFileError(f"safetensors entry {key!r} has offsets {offsets!r} outside the {data_size}-byte data section", path=name)
        numel = 1
        for size in shape:
            numel *= size
        if numel * dtype.itemsize != offsets[1] - offsets[0]:
            raise CorruptFileError(
                f"safetensors entry {key!r} of shape {shape} {dtype.name} needs {numel * dtype.itemsize} bytes, offsets span {offsets[1] - offsets[0]}",
                path=name,
            )
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    cursor = 0
    for start, end, key in spans:
        if start != cursor:
            raise CorruptFileError(f"safetensors entry {key!r} overlaps or leaves a gap at byte {cursor}", path=name)
        cursor = end
    if cursor != data_size:
        raise CorruptFileError(f"safetensors data section has {data_size - cursor} bytes no entry covers", path=name)
    return header, metadata, data_start


class SafetensorsReader(Reader):
    """safetensors files (header validated by us; tensors as byte ranges)."""

    name = "safetensors"
    description = "safetensors (Hugging Face): JSON header + raw little-endian tensors"

    def sniff(self, head: bytes, source: Source) -> None:
        if not looks_safetensors(head):
            raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        size = source.size()
        with source.open() as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CorruptFileError("safetensors file shorter than its header length", path=source.name)
            (length,) = struct.unpack("<Q", prefix)
            raw = prefix + handle.read(min(length, MAX_HEADER_BYTES + 1))
        header, metadata, data_start = parse_header(raw, size, source.name)
        tensors: "OrderedDict[str, Any]" = OrderedDict()
        for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            dtype = _dtypes.BY_SAFETENSORS[entry["dtype"]]
            begin, end = entry["data_offsets"]
            shape = tuple(entry["shape"])
            numel = (end - begin) // dtype.itemsize
            storage = StorageRef(key, dtype, numel, "cpu", source.byte_source(data_start + begin, end - begin))
            strides = []
            step = 1
            for dim in reversed(shape):
                strides.append(step)
                step *= max(dim, 1)
            tensors[key] = TensorRef(storage, dtype, shape, tuple(reversed(strides)), 0)
        return RawRead(tensors, "safetensors", {}, {"safetensors_metadata": metadata}, tensors_only=True)
