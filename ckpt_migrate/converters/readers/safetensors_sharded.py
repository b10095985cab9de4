"""Reader of Hugging Face sharded safetensors folders (``model-0000i-of-0000N.safetensors`` + index).

A folder holding an index (or the index file itself): every shard is parsed by the strict
safetensors header reader and cross-checked against the index; a folder holding only
``model.safetensors`` (the one-shard layout) opens too.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from ckpt_migrate.converters.readers.shard_index import read_shard_index
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader
from ckpt_migrate.converters.filenames import SAFETENSORS_INDEX as INDEX_NAME
from ckpt_migrate.errors import CorruptFileError, NotMyFormat
from ckpt_migrate.io.members import member_path
from ckpt_migrate.io.source import Source
from ckpt_migrate.model.checkpoint import TensorRef

SINGLE_NAME = "model.safetensors"


def find_index(folder: str) -> str | None:
    """The index file of a sharded folder: ``model.safetensors.index.json``, else the only ``*.safetensors.index.json``.

    Raises:
        CorruptFileError: several index files and none is ``model.safetensors.index.json``.
    """
    candidates = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors.index.json"))
    if INDEX_NAME in candidates:
        return os.path.join(folder, INDEX_NAME)
    if len(candidates) > 1:
        raise CorruptFileError(f"holds several index files ({', '.join(candidates)}); open one of them directly", path=folder)
    return os.path.join(folder, candidates[0]) if candidates else None


def _read_shard(path: str, options: ReadOptions) -> tuple["OrderedDict[str, TensorRef]", dict[str, str]]:
    """A shard's tensor references and metadata, through the strict single-file reader.

    Raises:
        CorruptFileError: the shard is missing or malformed.
    """
    from ckpt_migrate.converters.readers.safetensors_file import SafetensorsReader

    path = member_path(os.path.dirname(path), os.path.basename(path), "shard listed in the index")
    raw = SafetensorsReader().read(Source(path), options)
    return raw.root, raw.meta.get("safetensors_metadata", {})


class ShardedSafetensorsReader(Reader):
    """A Hugging Face sharded safetensors folder, or its ``*.safetensors.index.json``."""

    name = "safetensors-sharded"
    description = "Hugging Face sharded safetensors: a folder with model.safetensors.index.json (or the index itself)"
    requires = ("huggingface_hub",)

    def sniff(self, head: bytes, source: Source) -> None:
        if not source.is_local:
            raise NotMyFormat()
        path = source.local_path
        if os.path.isdir(path):
            names = os.listdir(path)
            single = SINGLE_NAME in names and not any(n.endswith(".safetensors") and n != SINGLE_NAME for n in names)
            if single or any(name.endswith(".safetensors.index.json") for name in names):
                return
            raise NotMyFormat()
        if head.lstrip()[:1] == b"{" and (b'"weight_map"' in head or path.endswith(".safetensors.index.json")):
            return
        raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        path = source.local_path
        index = find_index(path) if os.path.isdir(path) else path
        if index is None:
            tensors, metadata = _read_shard(os.path.join(path, SINGLE_NAME), options)
            meta = {"shards": [SINGLE_NAME], "index": None, "safetensors_metadata": metadata}
            return RawRead(tensors, "safetensors-sharded", {}, meta, tensors_only=True)
        folder = os.path.dirname(os.path.abspath(index))
        weight_map, index_metadata = read_shard_index(index, ".safetensors")
        tensors: "OrderedDict[str, TensorRef]" = OrderedDict()
        shards = sorted(set(weight_map.values()))
        first_metadata: dict[str, str] = {}
        for filename in shards:
            found, metadata = _read_shard(os.path.join(folder, filename), options)
            first_metadata = first_metadata or metadata
            for name, ref in found.items():
                if weight_map.get(name) != filename:
                    raise CorruptFileError(f"shard {filename} holds {name!r}, which the index maps to {weight_map.get(name)!r}", path=index)
                tensors[name] = ref
        missing = [name for name in weight_map if name not in tensors]
        if missing:
            raise CorruptFileError(f"index lists {missing[0]!r} in {weight_map[missing[0]]}, which does not hold it", path=index)
        meta = {"index": index, "shards": shards, "index_metadata": index_metadata,
                "safetensors_metadata": first_metadata}
        return RawRead(tensors, "safetensors-sharded", {}, meta, tensors_only=True)
