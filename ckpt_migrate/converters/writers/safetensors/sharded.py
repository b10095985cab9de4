"""Writer of Hugging Face sharded safetensors: ``model-0000i-of-0000N.safetensors`` files and ``model.safetensors.index.json``.

Writing: huggingface_hub's splitter chooses the shards from tensor sizes and storage identities
alone (no torch), so tensors sharing a storage (tied weights, views) land in one shard; every
shard goes through the same streaming-or-torch path as a single file. The folder is assembled
under a temporary name and installed only after every shard and the index read back; shards of
an earlier run that the new index does not list are removed, other files in the folder are kept.
The reader of such folders is :mod:`ckpt_migrate.converters.readers.safetensors_sharded`.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from typing import Any, Mapping

from ckpt_migrate.io.atomic import remove_quietly, temp_name
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor, TensorRef
from ckpt_migrate.errors import OutputExistsError, UsageError, VerificationError
from ckpt_migrate.io.source import Source
from ckpt_migrate.converters.filenames import SAFETENSORS_INDEX as INDEX_NAME
from ckpt_migrate.options import parse_shard_size
from ckpt_migrate.converters.base import ReadOptions, WriteReport
from ckpt_migrate.options import ConvertOptions

FILENAME_PATTERN = "model{suffix}.safetensors"
OUR_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")


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
    from ckpt_migrate.converters.readers.safetensors_sharded import ShardedSafetensorsReader
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
    kinds = sorted(set(paths.values()))
    return WriteReport(outputs, len(checkpoint.tensors), size, options.verify, {
        "metadata": digest.written(checkpoint), "shards": len(split.filename_to_tensors),
        "index": os.path.join(dst, INDEX_NAME) if split.is_sharded else None,
        "path": kinds[0] if len(kinds) == 1 else "mixed", "shard_paths": paths, "max_shard_size": max_bytes,
    }, source_sha256=digest.result())


