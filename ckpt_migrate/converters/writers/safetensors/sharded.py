"""Hugging Face sharded safetensors: ``model-0000i-of-0000N.safetensors`` files and ``model.safetensors.index.json``.

Writing: huggingface_hub's splitter chooses the shards from tensor sizes and storage identities
alone (no torch), so tensors sharing a storage (tied weights, views) land in one shard; every
shard goes through the same streaming-or-torch path as a single file. The folder is assembled
under a temporary name and installed only after every shard and the index read back; shards of
an earlier run that the new index does not list are removed, other files in the folder are kept.

Reading: a folder holding an index (or the index file itself), every shard parsed by the strict
safetensors header reader and cross-checked against the index; a folder holding only
``model.safetensors`` (the one-shard layout) opens too.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from typing import Any, Mapping

from ckpt_migrate.io.atomic import remove_quietly, temp_name
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor, TensorRef
from ckpt_migrate.errors import CorruptFileError, NotMyFormat, OutputExistsError, UsageError, VerificationError
from ckpt_migrate.io.source import Source
from ckpt_migrate.options import parse_shard_size
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader, WriteReport
from ckpt_migrate.options import ConvertOptions

INDEX_NAME = "model.safetensors.index.json"
FILENAME_PATTERN = "model{suffix}.safetensors"
SINGLE_NAME = "model.safetensors"
OUR_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")
MAX_INDEX_BYTES = 64 * 1024 * 1024


def storage_id(tensor: Any) -> int | None:
    """What ties tensors together for the splitter: their storage (a cast of a reference counts as it)."""
    if isinstance(tensor, TensorRef):
        return id(tensor.storage)
    if isinstance(tensor, DerivedTensor) and len(tensor.inputs) == 1 and isinstance(tensor.inputs[0], TensorRef):
        return id(tensor.inputs[0].storage)
    return None


def plan_shards(tensors: Mapping[str, Any], max_bytes: int) -> Any:
    """huggingface_hub's ``StateDictSplit`` of ``tensors`` into shards of at most ``max_bytes`` (a bigger tensor gets its own).

    Tied tensors are kept in one shard. Uses only sizes and storage identities, never torch.
    """
    from huggingface_hub import split_state_dict_into_shards_factory

    return split_state_dict_into_shards_factory(
        dict(tensors),
        get_storage_size=lambda tensor: int(tensor.nbytes),
        get_storage_id=storage_id,
        filename_pattern=FILENAME_PATTERN,
        max_shard_size=max_bytes,
    )


def _first_byte(tensor: Any) -> int:
    """Where a tensor's bytes begin in its source file (0 when they are elsewhere), for ordering shards."""
    ref = tensor.inputs[0] if isinstance(tensor, DerivedTensor) and len(tensor.inputs) == 1 else tensor
    if not isinstance(ref, TensorRef):
        return 0
    return int(ref.storage.source.offset) + int(ref.offset) * ref.dtype.itemsize


def shard_order(filename_to_tensors: Mapping[str, list[str]], tensors: Mapping[str, Any]) -> list[str]:
    """Shard file names in the order their tensors lie in the source (earliest first byte first).

    Shards are separate files, so any order writes the same folder; this one lets the one-pass
    source hash read the source front to back instead of rereading the bytes a shard skipped.
    """
    def first(filename: str) -> int:
        return min((_first_byte(tensors[name]) for name in filename_to_tensors[filename]), default=0)

    return sorted(filename_to_tensors, key=first)


def _our_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if OUR_FILES.match(name))


def _check_folder_destination(dst: str, force: bool) -> list[str]:
    """The shard and index files an earlier run left in ``dst`` (to be replaced).

    Raises:
        UsageError: ``dst`` names a ``.safetensors`` file or an existing non-folder.
        OutputExistsError: ``dst`` holds shards already and ``force`` is false.
    """
    if dst.lower().rstrip("/\\").endswith(".safetensors"):
        raise UsageError("--max-shard-size writes a folder of shards; give a folder as the destination, not a .safetensors file", path=dst)
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise UsageError("exists and is not a folder; sharded output needs a folder", path=dst)
    existing = _our_files(dst)
    if existing and not force:
        raise OutputExistsError(f"already holds {existing[0]}; pass --force to replace the shards", path=dst)
    return existing


def _install(staging: str, dst: str, written: list[str], stale: list[str]) -> None:
    """Move the verified files into ``dst``: the whole folder at once when new, else file by file, index last."""
    if not os.path.exists(dst):
        os.replace(staging, dst)
        return
    ordered = [name for name in written if name != INDEX_NAME] + [name for name in written if name == INDEX_NAME]
    for name in ordered:
        os.replace(os.path.join(staging, name), os.path.join(dst, name))
    for name in stale:
        if name not in written:
            remove_quietly(os.path.join(dst, name))
    remove_quietly(staging)


def _verify_folder(folder: str, checkpoint: Checkpoint, split: Any, source: str) -> None:
    """Reopen the staged folder with the sharded reader and compare names, dtypes, shapes and placement.

    Raises:
        VerificationError: the folder does not open, or lists other tensors than were written.
    """
    from ckpt_migrate.errors import CkptMigrateError

    try:
        raw = ShardedSafetensorsReader().read(Source(folder), ReadOptions())
    except CkptMigrateError as error:
        raise VerificationError(f"the written folder does not read back: {error.message}", path=source) from None
    found = raw.root
    if set(found) != set(checkpoint.tensors):
        raise VerificationError("the written folder holds other tensor names than the checkpoint", path=source)
    for name, ref in found.items():
        want = checkpoint.tensors[name]
        if ref.dtype != want.dtype or tuple(ref.shape) != tuple(want.shape):
            raise VerificationError(f"tensor {name!r} reads back as {ref.dtype.name} {list(ref.shape)}", path=source)
        if os.path.basename(ref.storage.source.name) != split.tensor_to_filename[name]:
            raise VerificationError(f"tensor {name!r} is not in the shard the index names", path=source)


def write_sharded(checkpoint: Checkpoint, dst: str, options: ConvertOptions) -> WriteReport:
    """Write ``checkpoint`` as a Hugging Face sharded folder at ``dst`` and verify every shard and the index.

    One shard gives ``model.safetensors`` alone (as huggingface_hub does); several give
    ``model-0000i-of-0000N.safetensors`` and ``model.safetensors.index.json``.

    Raises:
        UsageError: a bad size, or a destination that is not a folder.
        OutputExistsError: the folder holds shards already and ``force`` is false.
        VerificationError: a shard or the index does not read back as written.
    """
    from ckpt_migrate.converters.writers.safetensors.writer import SourceDigest, write_tensors

    max_bytes = parse_shard_size(options.max_shard_size or "")
    stale = _check_folder_destination(dst, options.force)
    split = plan_shards(checkpoint.tensors, max_bytes)
    source = str(checkpoint.meta.get("source", dst))
    digest = SourceDigest(checkpoint, options.source_hash, one_pass=True)
    metadata = digest.metadata(checkpoint)
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    staging = temp_name(dst.rstrip("/\\"))
    os.makedirs(staging)
    paths: dict[str, str] = {}
    try:
        for filename in shard_order(split.filename_to_tensors, checkpoint.tensors):
            subset = OrderedDict((name, checkpoint.tensors[name]) for name in split.filename_to_tensors[filename])
            path = os.path.join(staging, filename)
            paths[filename] = write_tensors(subset, path, metadata, verify=options.verify, source=source,
                                            stream=options.stream, digest=digest)["path"]
        total = sum(int(tensor.nbytes) for tensor in checkpoint.tensors.values())
        written = list(split.filename_to_tensors)
        if split.is_sharded:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
            with open(os.path.join(staging, INDEX_NAME), "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=2)
                handle.write("\n")
            written.append(INDEX_NAME)
        digest.finish([os.path.join(staging, name) for name in split.filename_to_tensors], source)
        if options.verify:
            _verify_folder(staging, checkpoint, split, source)
        _install(staging, dst, written, stale)
    except BaseException:
        remove_quietly(staging)
        raise
    finally:
        digest.close()
    outputs = [os.path.join(dst, name) for name in written]
    size = sum(os.path.getsize(path) for path in outputs)
    from ckpt_migrate.converters.writers.safetensors.writer import safetensors_metadata

    kinds = sorted(set(paths.values()))
    return WriteReport(outputs, len(checkpoint.tensors), size, options.verify, {
        "metadata": safetensors_metadata(checkpoint), "shards": len(split.filename_to_tensors),
        "index": os.path.join(dst, INDEX_NAME) if split.is_sharded else None,
        "path": kinds[0] if len(kinds) == 1 else "mixed", "shard_paths": paths, "max_shard_size": max_bytes,
    }, source_sha256=digest.result())


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


def _read_index(path: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The weight map and metadata of an index file, checked.

    Raises:
        CorruptFileError: not JSON, too large, or a weight map that is not name → plain shard file name.
    """
    if os.path.getsize(path) > MAX_INDEX_BYTES:
        raise CorruptFileError(f"index is over the {MAX_INDEX_BYTES}-byte limit", path=path)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CorruptFileError(f"index is not valid JSON: {error}", path=path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError("index has no weight_map", path=path)
    for name, filename in weight_map.items():
        if (not isinstance(filename, str) or not filename.endswith(".safetensors") or os.path.basename(filename) != filename
                or "/" in filename or "\\" in filename or filename in (".", "..")):
            raise CorruptFileError(f"index maps {name!r} to {filename!r}, not a shard file name in the same folder", path=path)
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    return weight_map, metadata


def _read_shard(path: str, options: ReadOptions) -> tuple["OrderedDict[str, TensorRef]", dict[str, str]]:
    """A shard's tensor references and metadata, through the strict single-file reader.

    Raises:
        CorruptFileError: the shard is missing or malformed.
    """
    from ckpt_migrate.converters.readers.safetensors_file import SafetensorsReader

    if not os.path.isfile(path):
        raise CorruptFileError("shard listed in the index is missing", path=path)
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
        weight_map, index_metadata = _read_index(index)
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
