"""Pickled ``.bin`` shard sets: ``pytorch_model-0000i-of-0000N.bin`` files and their ``*.bin.index.json``.

The Hugging Face Hub's older repositories hold their weights this way (``torch.save`` of each
shard's state_dict). Each shard is opened by the reader that claims its bytes (torch zip or
legacy), through the safe interpreter, and checked against the index's ``weight_map``. A folder
of shards without an index opens too when the ``-0000i-of-0000N`` names are complete.
``meta["shard_groups"]`` keeps which tensors came from which shard, in shard order, so a
writer can keep the same grouping; ``meta["hf_prefix"]`` is the safetensors name stem
transformers uses for this model (``model`` or ``diffusion_pytorch_model``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any

from ckpt_migrate.converters.readers.shard_index import read_shard_index
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, NotMyFormat
from ckpt_migrate.io.members import member_path
from ckpt_migrate.io.source import Source
from ckpt_migrate.model.checkpoint import TensorRef

INDEX_SUFFIX = ".bin.index.json"
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.bin$")


def hf_prefix(stem: str) -> str:
    """The safetensors name stem transformers/diffusers write for a ``.bin`` stem.

    ``pytorch_model`` → ``model``, ``diffusion_pytorch_model`` stays, anything else stays.
    """
    return "model" if stem == "pytorch_model" else stem


def is_bin_shard_set(path: str) -> bool:
    """True for a local ``*.bin.index.json`` or a folder holding one or ``-0000i-of-0000N.bin`` shards (no safetensors index)."""
    if "://" in path and not path.startswith("file://"):
        return False
    path = path[len("file://"):] if path.startswith("file://") else path
    if os.path.isfile(path):
        return path.endswith(INDEX_SUFFIX)
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    if any(n.endswith(".safetensors.index.json") or n == "model.safetensors" for n in names):
        return False
    return any(n.endswith(INDEX_SUFFIX) or SHARD_NAME.match(n) for n in names)


def find_bin_index(folder: str) -> str | None:
    """The ``*.bin.index.json`` of a folder (``pytorch_model.bin.index.json`` first), or None.

    Raises:
        CorruptFileError: several index files and none is ``pytorch_model.bin.index.json``.
    """
    candidates = sorted(name for name in os.listdir(folder) if name.endswith(INDEX_SUFFIX))
    if "pytorch_model.bin.index.json" in candidates:
        return os.path.join(folder, "pytorch_model.bin.index.json")
    if len(candidates) > 1:
        raise CorruptFileError(f"holds several index files ({', '.join(candidates)}); open one of them directly", path=folder)
    return os.path.join(folder, candidates[0]) if candidates else None


def shard_files(folder: str) -> list[str]:
    """The ``-0000i-of-0000N.bin`` shard names of a folder when they form one complete set, else [].

    Raises:
        CorruptFileError: shard names of one set that disagree on N, or a missing shard.
    """
    sets: dict[tuple[str, int], dict[int, str]] = {}
    for name in os.listdir(folder):
        match = SHARD_NAME.match(name)
        if match:
            sets.setdefault((match["stem"], int(match["total"])), {})[int(match["index"])] = name
    if not sets:
        return []
    if len({stem for stem, _ in sets}) != len(sets) or len(sets) > 1:
        raise CorruptFileError(f"holds shards of several sets ({', '.join(sorted(f'{s}-*-of-{n:05d}' for s, n in sets))}); "
                               "open one set through its index file", path=folder)
    (stem, total), found = next(iter(sets.items()))
    missing = [i for i in range(1, total + 1) if i not in found]
    if missing:
        raise CorruptFileError(f"shard {missing[0]} of {total} ({stem}-{missing[0]:05d}-of-{total:05d}.bin) is missing", path=folder)
    return [found[i] for i in range(1, total + 1)]


def _read_shard(path: str, options: ReadOptions) -> tuple["OrderedDict[str, TensorRef]", RawRead]:
    """One shard's state_dict, through the registry's reader for its bytes and the weight extraction.

    Raises:
        CorruptFileError: the shard is missing, not a file, or not a checkpoint.
        UnsafeFileError: its pickle names a refused global.
    """
    import ckpt_migrate.converters.registry as registry
    from ckpt_migrate.bundle.extract import extract

    path = member_path(os.path.dirname(path), os.path.basename(path), "shard listed in the index")
    with Source(path) as source:
        reader = registry.sniff(source)
        if reader.name in (BinShardsReader.name, "safetensors-sharded", "dcp"):
            raise CorruptFileError(f"shard is a {reader.name} file, not a torch.save state_dict", path=path)
        try:
            raw = reader.read(source, options)
        except CkptMigrateError as error:
            raise error.with_path(path)
    if any(use.verdict == "refused" for use in raw.globals.values()):
        return OrderedDict(), raw
    tensors = raw.root if raw.tensors_only else extract(raw.root, fmt=raw.format).tensors
    return OrderedDict(tensors), raw


class BinShardsReader(Reader):
    """A set of pickled ``.bin`` shards: the ``*.bin.index.json``, or a folder holding it or the shards."""

    name = "torch-bin-sharded"
    description = "pickled .bin shard set (pytorch_model-0000i-of-0000N.bin + pytorch_model.bin.index.json, or the folder)"

    def sniff(self, head: bytes, source: Source) -> None:
        if not source.is_local:
            raise NotMyFormat()
        path = source.local_path
        if os.path.isdir(path):
            names = os.listdir(path)
            if any(n.endswith(".safetensors.index.json") or n == "model.safetensors" for n in names):
                raise NotMyFormat()
            if any(n.endswith(INDEX_SUFFIX) for n in names) or any(SHARD_NAME.match(n) for n in names):
                return
            raise NotMyFormat()
        if head.lstrip()[:1] == b"{" and (path.endswith(INDEX_SUFFIX) or (b'"weight_map"' in head and b'.bin"' in head)):
            return
        raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        path = source.local_path
        index = find_bin_index(path) if os.path.isdir(path) else path
        if index is not None:
            folder = os.path.dirname(os.path.abspath(index))
            weight_map, index_metadata = read_shard_index(index, ".bin")
            shards = list(OrderedDict.fromkeys(sorted(weight_map.values())))
            stem = os.path.basename(index)[: -len(INDEX_SUFFIX)]
        else:
            folder = path
            shards = shard_files(folder)
            if not shards:
                raise CorruptFileError("holds no .bin index and no -0000i-of-0000N.bin shards", path=path)
            weight_map, index_metadata = {}, {}
            stem = SHARD_NAME.match(shards[0])["stem"]  # type: ignore[index]
        tensors: "OrderedDict[str, TensorRef]" = OrderedDict()
        globals_: dict[str, Any] = {}
        groups: list[list[str]] = []
        formats = []
        for filename in shards:
            found, raw = _read_shard(os.path.join(folder, filename), options)
            for name, use in raw.globals.items():
                if name not in globals_ or use.verdict == "refused":
                    globals_[name] = use
            formats.append(raw.format)
            for name, ref in found.items():
                if weight_map and weight_map.get(name) != filename:
                    raise CorruptFileError(f"shard {filename} holds {name!r}, which the index maps to {weight_map.get(name)!r}", path=index)
                if name in tensors:
                    raise CorruptFileError(f"tensor {name!r} is in two shards", path=os.path.join(folder, filename))
                tensors[name] = ref
            groups.append(list(found))
        refused = any(use.verdict == "refused" for use in globals_.values())
        missing = [name for name in weight_map if name not in tensors]
        if missing and not refused:
            raise CorruptFileError(f"index lists {missing[0]!r} in {weight_map[missing[0]]}, which does not hold it", path=index)
        meta = {"index": index, "shards": shards, "index_metadata": index_metadata, "shard_groups": groups,
                "shard_formats": sorted(set(formats)), "hf_prefix": hf_prefix(stem)}
        return RawRead(tensors, "torch-bin-sharded", globals_, meta, tensors_only=True)
