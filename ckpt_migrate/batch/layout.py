"""What each file of a model folder becomes, by folder layout: torch-free, names and sniff results only.

Roles:

- ``convert``: a checkpoint, converted by the writer (the default).
- ``hf-weights``: ``pytorch_model.bin`` / ``diffusion_pytorch_model.bin`` (optionally with a variant,
  ``pytorch_model.fp16.bin``) in a Hugging Face folder, written as ``model.safetensors`` /
  ``diffusion_pytorch_model.safetensors`` the way ``save_pretrained`` writes them.
- ``hf-shards``: a ``*.bin.index.json``; its shards are converted together into
  ``<stem>-0000k-of-0000n.safetensors`` + ``<stem>.safetensors.index.json``. The shards it lists are
  ``member`` files of that conversion.
- ``shard-set``: the same for other writers: the shard set becomes one output ``<stem><suffix>``
  (``pytorch_model.pt`` for ``normalized``), its shards are ``member`` files.
- ``state``: Trainer state in a training folder (``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``,
  ``rng_state*.pth``), rewritten as plain torch files that ``torch.load(weights_only=True)`` opens,
  under the same name; ``training_args.bin`` becomes ``training_args.json``.
- ``copy``: every other file, carried over byte for byte (``checkpoints_only`` skips them instead).

A Hugging Face folder holds ``config.json`` beside ``pytorch_model*.bin``,
``diffusion_pytorch_model*.bin`` or a ``*.bin.index.json``; a training folder holds
``trainer_state.json`` or ``training_args.bin``. HF naming applies to safetensors output only.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

CONVERT, HF_WEIGHTS, HF_SHARDS, SHARD_SET, MEMBER, STATE, COPY = "convert", "hf-weights", "hf-shards", "shard-set", "member", "state", "copy"

HF_WEIGHT_NAME = re.compile(r"^(?P<stem>pytorch_model|diffusion_pytorch_model)(?P<variant>\.[A-Za-z0-9_-]+)?\.bin$")
HF_MARKER = re.compile(r"^(pytorch_model|diffusion_pytorch_model).*\.bin$|\.bin\.index\.json$")
STATE_NAME = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin)$")
TRAINING_MARKERS = ("trainer_state.json", "training_args.bin")
BIN_INDEX_SUFFIX = ".bin.index.json"


@dataclass(frozen=True)
class Role:
    """What one file becomes: its role, its fixed destination (None: the planner names it), and its group."""

    role: str
    destination: str | None = None
    group: str | None = None
    outputs: tuple[str, ...] = ()


def _folders(rels: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rel in rels:
        folder, name = posixpath.split(rel)
        out.setdefault(folder, set()).add(name)
    return out


def is_hf_folder(names: set[str]) -> bool:
    """A Hugging Face model folder: ``config.json`` beside ``.bin`` weights or a ``.bin`` index."""
    return "config.json" in names and any(HF_MARKER.search(name) for name in names)


def is_training_folder(names: set[str]) -> bool:
    """A Trainer checkpoint folder: ``trainer_state.json`` or ``training_args.bin``."""
    return any(marker in names for marker in TRAINING_MARKERS)


def hf_stem(stem: str) -> str:
    """transformers' safetensors stem for a ``.bin`` stem (``pytorch_model`` → ``model``)."""
    return "model" if stem == "pytorch_model" else stem


def shard_destinations(folder: str, stem: str, count: int) -> list[str]:
    """The files an ``hf-shards`` conversion of ``count`` shards writes, index last."""
    prefix = hf_stem(stem)
    names = [f"{prefix}.safetensors"] if count == 1 else [f"{prefix}-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    if count > 1:
        names.append(f"{prefix}.safetensors.index.json")
    return [posixpath.join(folder, name) if folder else name for name in names]


def index_shards(text: str | None) -> list[str]:
    """The shard file names a ``.bin`` index lists (in order, unique); [] when it cannot be read."""
    try:
        data = json.loads(text or "")
    except (json.JSONDecodeError, RecursionError):
        return []
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        return []
    names = [value for value in weight_map.values() if isinstance(value, str) and value == posixpath.basename(value) and value.endswith(".bin")]
    return sorted(set(names))


def assign_roles(rels: list[str], checkpoints: set[str], *, to: str, hf_layout: bool,
                 read_text: Callable[[str], str | None], checkpoints_only: bool = False, suffix: str = "",
                 folder_sources: Iterable[str] = ()) -> dict[str, Role]:
    """The role of every readable file of SRC (``rels``), given which ones are checkpoints.

    ``hf_layout`` turns on Hugging Face naming (safetensors output without ``--max-shard-size``);
    ``read_text`` reads a small file of SRC (a ``.bin`` index) by relative path; ``suffix`` is the
    writer's output suffix (a shard set's single output is ``<stem><suffix>``). ``folder_sources``
    are checkpoint folders that hold one model's weights (a DeepSpeed checkpoint): one that sits
    beside a ``config.json`` is that model folder's weights, written as ``model.safetensors``.
    """
    folder_sources = set(folder_sources)
    folders = _folders([*rels, *folder_sources])
    roles: dict[str, Role] = {}
    for rel in sorted(folder_sources):
        folder, _ = posixpath.split(rel)
        if hf_layout and "config.json" in folders[folder]:
            target = posixpath.join(folder, "model.safetensors") if folder else "model.safetensors"
            roles[rel] = Role(HF_WEIGHTS, target)
    for rel in rels:
        folder, name = posixpath.split(rel)
        names = folders[folder]
        if STATE_NAME.match(name) and is_training_folder(names) and not checkpoints_only:
            target = posixpath.join(folder, "training_args.json") if name == "training_args.bin" else rel
            roles[rel] = Role(STATE, target.lstrip("/"))
            continue
        if rel not in checkpoints:
            roles.setdefault(rel, Role(COPY, rel) if not checkpoints_only else Role(COPY))
            continue
        if name.endswith(BIN_INDEX_SUFFIX):
            shards = index_shards(read_text(rel))
            members = [posixpath.join(folder, shard) if folder else shard for shard in shards]
            if shards and all(member in checkpoints for member in members):
                stem = name[: -len(BIN_INDEX_SUFFIX)]
                if hf_layout:
                    outputs = shard_destinations(folder, stem, len(shards))
                    roles[rel] = Role(HF_SHARDS, outputs[-1], outputs=tuple(outputs))
                else:
                    roles[rel] = Role(SHARD_SET, posixpath.join(folder, stem + suffix) if folder else stem + suffix)
                for member in members:
                    roles[member] = Role(MEMBER, None, rel)
                continue
        if rel in roles:
            continue
        match = HF_WEIGHT_NAME.match(name)
        if hf_layout and match and is_hf_folder(names):
            target = f"{hf_stem(match['stem'])}{match['variant'] or ''}.safetensors"
            roles[rel] = Role(HF_WEIGHTS, posixpath.join(folder, target) if folder else target)
            continue
        roles[rel] = Role(CONVERT)
    return roles


def fixed_destinations(roles: Mapping[str, Role]) -> set[str]:
    """Every destination a role fixes (copies, state files, HF names), for the planner to keep free."""
    out: set[str] = set()
    for role in roles.values():
        if role.destination:
            out.add(role.destination)
        out.update(role.outputs)
    return out
