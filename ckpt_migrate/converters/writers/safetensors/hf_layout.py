"""Safetensors output laid out as transformers' ``save_pretrained`` writes it, and shared-tensor aliases.

Naming: a ``.bin`` stem maps to transformers' safetensors stem (``pytorch_model`` → ``model``,
``diffusion_pytorch_model`` stays); one shard is ``<stem>.safetensors``, several are
``<stem>-0000k-of-0000n.safetensors`` plus ``<stem>.safetensors.index.json`` whose
``metadata.total_size`` and ``weight_map`` describe the files written. Every file carries
``format: pt``.

Aliases: tensors that are the same view of one storage (tied embeddings and heads). Under the
``transformers`` rule the copies a model re-ties on load (``lm_head.weight``, ``embed_tokens.weight``,
``predictions.decoder.*``…) are left out, as ``save_pretrained`` does; under the ``safetensors``
rule (``--dedupe-shared``) every alias but the first name in sorted order is left out, as
safetensors' ``save_model`` does. Either way the metadata maps each removed name to the name kept.
Pure logic here is torch-free; writing goes through the single-file writer.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Mapping

from ckpt_migrate.converters.base import ReadOptions, WriteReport
from ckpt_migrate.errors import CkptMigrateError, OutputExistsError, UsageError, VerificationError
from ckpt_migrate.io.atomic import TEMP_MARKER, remove_quietly
from ckpt_migrate.io.durability import fsync_path
from ckpt_migrate.io.source import Source
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor, TensorRef

TIE_TARGETS = tuple(re.compile(pattern) for pattern in (
    r"(^|\.)lm_head\.weight$", r"(^|\.)embed_tokens\.weight$", r"(^|\.)predictions\.decoder\.(weight|bias)$",
    r"(^|\.)embed_out\.weight$", r"(^|\.)output_projection\.weight$", r"(^|\.)proj_out\.weight$",
    r"(^|\.)lm_head\.decoder\.(weight|bias)$", r"(^|\.)generator_lm_head\.weight$",
))
ALIASES_KEY = "ckpt_migrate_aliases"


def alias_key(tensor: Any) -> tuple | None:
    """What makes two tensors the same bytes: one storage, offset, shape, stride and dtype (None: not a reference)."""
    if isinstance(tensor, TensorRef):
        return (id(tensor.storage), tensor.offset, tensor.shape, tensor.stride, tensor.dtype.name, repr(tensor.quantization))
    if isinstance(tensor, DerivedTensor) and len(tensor.inputs) == 1:
        inner = alias_key(tensor.inputs[0])
        return None if inner is None else ("derived", inner, tensor.dtype.name, tensor.shape, tensor.description)
    return None


def alias_groups(tensors: Mapping[str, Any]) -> list[list[str]]:
    """Groups (in state_dict order) of two or more names that are the same tensor."""
    groups: "OrderedDict[tuple, list[str]]" = OrderedDict()
    for name, tensor in tensors.items():
        key = alias_key(tensor)
        if key is not None:
            groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def is_tie_target(name: str) -> bool:
    """True for a name transformers re-ties from another on load (an output embedding, a decoder copy)."""
    return any(pattern.search(name) for pattern in TIE_TARGETS)


def removable_aliases(groups: list[list[str]], rule: str) -> dict[str, str]:
    """Removed name → kept name for each alias group.

    ``rule`` ``transformers``: drop the tie targets, keeping at least one name (the first source, else
    the first name); other duplicates stay. ``safetensors``: keep the first name in sorted order.

    Raises:
        ValueError: an unknown rule.
    """
    removed: dict[str, str] = {}
    for names in groups:
        if rule == "safetensors":
            kept = sorted(names)[0]
            removed.update({name: kept for name in names if name != kept})
        elif rule == "transformers":
            sources = [name for name in names if not is_tie_target(name)]
            kept = sources[0] if sources else names[0]
            removed.update({name: kept for name in names if name != kept and is_tie_target(name)})
        else:
            raise ValueError(f"unknown alias rule {rule!r}")
    return removed


def drop_aliases(checkpoint: Checkpoint, rule: str) -> tuple[Checkpoint, dict[str, str]]:
    """``checkpoint`` without the aliases ``rule`` removes, and the removed → kept map (recorded in ``meta["aliases"]``)."""
    removed = removable_aliases(alias_groups(checkpoint.tensors), rule)
    if not removed:
        return checkpoint, {}
    tensors = OrderedDict((name, ref) for name, ref in checkpoint.tensors.items() if name not in removed)
    meta = dict(checkpoint.meta, aliases=dict(removed))
    return replace(checkpoint, tensors=tensors, meta=meta), removed


def alias_metadata(removed: Mapping[str, str]) -> dict[str, str]:
    """safetensors ``save_model``'s record of removed aliases (removed name → kept name) plus one JSON summary."""
    out = {name: kept for name, kept in removed.items()}
    if removed:
        out[ALIASES_KEY] = json.dumps(dict(removed), sort_keys=True)
    return out


def shard_names(prefix: str, count: int) -> list[str]:
    """``<prefix>.safetensors`` for one shard, else ``<prefix>-0000k-of-0000n.safetensors``."""
    if count == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def index_name(prefix: str) -> str:
    return f"{prefix}.safetensors.index.json"


def plan_layout(names: list[str], groups: list[list[str]] | None, prefix: str) -> "OrderedDict[str, list[str]]":
    """File name → tensor names: the source's shard grouping (empty groups dropped) or one file."""
    wanted = set(names)
    kept = [[name for name in group if name in wanted] for group in (groups or [names])]
    kept = [group for group in kept if group]
    placed = {name for group in kept for name in group}
    missing = [name for name in names if name not in placed]
    if missing:
        kept = kept[:-1] + [kept[-1] + missing] if kept else [missing]
    return OrderedDict(zip(shard_names(prefix, len(kept)), kept))


def build_index(layout: Mapping[str, list[str]], sizes: Mapping[str, int]) -> dict[str, Any]:
    """The ``*.safetensors.index.json`` document: ``metadata.total_size`` and a sorted ``weight_map``."""
    weight_map = {name: filename for filename, names in layout.items() for name in names}
    total = sum(sizes[name] for name in weight_map)
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def _stale(folder: str, prefix: str, keep: set[str]) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}(-\d{{5}}-of-\d{{5}})?\.safetensors$|^{re.escape(index_name(prefix))}$")
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if pattern.match(name) and name not in keep)


def _verify_layout(folder: str, layout: Mapping[str, list[str]], index: dict[str, Any] | None, prefix: str, source: str) -> None:
    """Each staged file holds exactly the names the layout gives it; the index reads back as written.

    Raises:
        VerificationError: a file's names or the index differ.
    """
    from ckpt_migrate.converters.readers.safetensors_file import SafetensorsReader

    for filename, names in layout.items():
        try:
            raw = SafetensorsReader().read(Source(os.path.join(folder, filename)), ReadOptions())
        except CkptMigrateError as error:
            raise VerificationError(f"{filename} does not read back: {error.message}", path=source) from None
        if set(raw.root) != set(names):
            raise VerificationError(f"{filename} holds other tensors than planned", path=source)
        if raw.meta.get("safetensors_metadata", {}).get("format") != "pt":
            raise VerificationError(f"{filename} lacks format: pt metadata", path=source)
    if index is not None:
        with open(os.path.join(folder, index_name(prefix)), encoding="utf-8") as handle:
            if json.load(handle) != index:
                raise VerificationError("the index does not read back as written", path=source)


def write_hf_folder(checkpoint: Checkpoint, dst: str, options: Any, *, prefix: str | None = None,
                    groups: list[list[str]] | None = None, fsync: bool = True) -> WriteReport:
    """Write ``checkpoint`` into folder ``dst`` as ``save_pretrained`` would (names, index, tied weights).

    Files are staged in a temporary folder inside ``dst``, each verified bit for bit, then renamed into
    place (index last); other files in ``dst`` are kept; shards of this stem that the new layout does
    not list are removed. ``prefix`` defaults to ``meta["hf_prefix"]`` (else ``model``), ``groups`` to
    ``meta["shard_groups"]`` (the source's shard grouping).

    Raises:
        UsageError: ``dst`` is a ``.safetensors`` file name or an existing non-folder.
        OutputExistsError: an output file exists and ``options.force`` is false.
        VerificationError: a file or the index does not read back as written.
    """
    from ckpt_migrate.converters.writers.safetensors.writer import SourceDigest, check_representable, write_tensors

    check_representable(checkpoint)
    if dst.lower().rstrip("/\\").endswith(".safetensors") or (os.path.lexists(dst) and not os.path.isdir(dst)):
        raise UsageError("a Hugging Face layout is a folder; give a folder as the destination", path=dst)
    if os.path.islink(dst):
        raise UsageError("is a symlink; outputs are never written through links", path=dst)
    prefix = prefix or str(checkpoint.meta.get("hf_prefix") or "model")
    checkpoint, removed = drop_aliases(checkpoint, "transformers")
    layout = plan_layout(list(checkpoint.tensors), groups if groups is not None else checkpoint.meta.get("shard_groups"), prefix)
    written = list(layout) + ([index_name(prefix)] if len(layout) > 1 else [])
    existing = [name for name in written if os.path.lexists(os.path.join(dst, name))]
    if existing and not options.force:
        raise OutputExistsError(f"already holds {existing[0]}; pass --force to replace it", path=dst)
    if any(os.path.islink(os.path.join(dst, name)) for name in existing):
        raise UsageError(f"{existing[0]} is a symlink; outputs are never written through links", path=dst)
    stale = _stale(dst, prefix, set(written))
    source = str(checkpoint.meta.get("source", dst))
    digest = SourceDigest(checkpoint, options.source_hash, one_pass=True)
    metadata = digest.metadata(checkpoint)
    os.makedirs(dst, exist_ok=True)
    staging = os.path.join(dst, f".{prefix}{TEMP_MARKER}{os.getpid()}-{os.urandom(4).hex()}")
    os.makedirs(staging)
    paths: dict[str, str] = {}
    try:
        for filename, names in layout.items():
            subset = OrderedDict((name, checkpoint.tensors[name]) for name in names)
            paths[filename] = write_tensors(subset, os.path.join(staging, filename), metadata, verify=options.verify,
                                            source=source, stream=options.stream, digest=digest)["path"]
        index = None
        if len(layout) > 1:
            index = build_index(layout, {name: int(ref.nbytes) for name, ref in checkpoint.tensors.items()})
            with open(os.path.join(staging, index_name(prefix)), "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=2, sort_keys=True)
                handle.write("\n")
        digest.finish([os.path.join(staging, name) for name in layout], source)
        if options.verify:
            _verify_layout(staging, layout, index, prefix, source)
        for name in written:
            if fsync:
                fsync_path(os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(dst, name))
        for name in stale:
            remove_quietly(os.path.join(dst, name))
        if fsync:
            fsync_path(dst)
    finally:
        digest.close()
        remove_quietly(staging)
    outputs = [os.path.join(dst, name) for name in written]
    kinds = sorted(set(paths.values()))
    return WriteReport(outputs, len(checkpoint.tensors), sum(os.path.getsize(path) for path in outputs), options.verify, {
        "metadata": digest.written(checkpoint), "layout": "huggingface", "shards": len(layout),
        "index": os.path.join(dst, index_name(prefix)) if len(layout) > 1 else None, "aliases": removed,
        "path": kinds[0] if len(kinds) == 1 else "mixed",
    }, source_sha256=digest.result())
