"""Batch planning, torch-free: which files are checkpoints, where each goes, and what to do with it.

Destination naming (deterministic, independent of listing order):

1. A checkpoint's *natural* name is its name with a known checkpoint suffix (``.pth.tar``, ``.pt``,
   ``.pth``, ``.ckpt``, ``.pkl``, ``.tar``, ``.bin``, ``.safetensors``…) replaced by the writer's
   suffix, or with the writer's suffix appended when it has none of those (``weights`` →
   ``weights.safetensors``). The folder part is mirrored unchanged.
2. Natural names are granted first, to a file already named that way, then in path order.
   Names compare case-insensitively, so the plan is the same on every file system.
3. A file whose natural name is taken (``a.pt`` and ``a.pth`` both want ``a.safetensors``; the
   first in path order wins) keeps its full name plus the suffix (``a.pth.safetensors``), then
   ``a.pth-2.safetensors``, ``-3``… Folders that outputs live in are never taken as file names.

Each planned item's action is one of ``convert``, ``copy`` (a file that is not a checkpoint,
carried over byte for byte), ``rewrite`` (Trainer state rewritten as a weights-only torch file or
JSON), ``member`` (a shard converted with its index), ``up-to-date`` (the manifest says the same
source, under the same options, produced an output that is still there unchanged), ``skip`` (a
link that is not followed, not a regular file, or not a checkpoint with ``--checkpoints-only``) or
``exists`` (the destination holds a file this tool did not write; ``--force`` overwrites it).
What each file becomes in a model folder is decided by :mod:`ckpt_migrate.batch.layout`.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import ckpt_migrate.batch.layout as layout
from ckpt_migrate.converters.filenames import CHECKPOINT_SUFFIXES
from ckpt_migrate.io.trees import Entry


CONVERT, UP_TO_DATE, SKIP, EXISTS = "convert", "up-to-date", "skip", "exists"
COPY, REWRITE, MEMBER = "copy", "rewrite", "member"
WORK = (CONVERT, COPY, REWRITE)

MTIME_TOLERANCE = 1e-3


@dataclass
class PlanItem:
    """One file of SRC and what the batch will do with it.

    ``format`` is the reader that claims the file (``None``: not a checkpoint); ``destination`` is
    relative to DST; ``overwrite`` is set when the output exists and is ours (or ``--force``).
    """

    source: str
    size: int
    mtime: float
    format: str | None
    action: str
    destination: str | None = None
    reason: str | None = None
    overwrite: bool = False
    kind: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    role: str = layout.CONVERT
    members: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Sniffed:
    """What sniffing a file's bytes said: the reader that claims it, or why none does.

    ``checkpoint`` is true for a file a reader claims, and for one that looks like a checkpoint but
    is damaged (it will be tried, and fail with the reader's message).
    """

    checkpoint: bool
    reader: str | None = None
    reason: str | None = None


def natural_name(rel: str, suffix: str) -> str:
    """``rel`` with a known checkpoint suffix replaced by ``suffix`` (or ``suffix`` appended)."""
    folder, name = posixpath.split(rel)
    lowered = name.lower()
    for known in CHECKPOINT_SUFFIXES:
        if lowered.endswith(known) and len(name) > len(known):
            name = name[: -len(known)]
            break
    return posixpath.join(folder, name + suffix) if folder else name + suffix


def _parents(rel: str) -> Iterable[str]:
    folder = posixpath.dirname(rel)
    while folder:
        yield folder
        folder = posixpath.dirname(folder)


def assign_destinations(sources: Iterable[str], suffix: str, reserved: Iterable[str] = ()) -> dict[str, str]:
    """Map each source path to a unique destination path by the rules in this module's docstring.

    ``reserved`` names (compared case-insensitively) are never handed out, e.g. the manifest's.
    """
    ordered = sorted(set(sources))
    taken = {name.casefold() for name in reserved}
    for rel in ordered:
        taken.update(parent.casefold() for parent in _parents(rel))
    natural = {rel: natural_name(rel, suffix) for rel in ordered}
    owners = sorted(ordered, key=lambda rel: (posixpath.basename(rel) != posixpath.basename(natural[rel]), rel))
    result: dict[str, str] = {}
    for rel in owners:
        if natural[rel].casefold() not in taken:
            result[rel] = natural[rel]
            taken.add(natural[rel].casefold())
    for rel in ordered:
        if rel in result:
            continue
        candidate = rel + suffix
        count = 1
        while candidate.casefold() in taken:
            count += 1
            candidate = f"{rel}-{count}{suffix}"
        result[rel] = candidate
        taken.add(candidate.casefold())
    return result


def same_time(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= MTIME_TOLERANCE


def build_plan(
    entries: Iterable[Entry],
    sniffed: Mapping[str, Sniffed],
    *,
    suffix: str,
    options_key: str,
    records: Mapping[str, Mapping[str, Any]],
    dest_stat: Callable[[str], tuple[int, float] | None],
    source_sha256: Callable[[str], str],
    dest_sha256: Callable[[str], str],
    force: bool = False,
    reserved: Iterable[str] = (),
    roles: Mapping[str, layout.Role] | None = None,
) -> list[PlanItem]:
    """The plan for every entry of SRC, in path order.

    ``records`` maps a source path to its latest manifest record; the callables look at DST and
    hash files only when sizes match but modification times do not. ``roles`` (from
    :func:`ckpt_migrate.batch.layout.assign_roles`) says what each readable file becomes; without
    it every checkpoint is converted and every other file skipped.
    """
    entries = list(entries)
    roles = dict(roles or {})
    reserved = set(reserved)
    reserved_names = {name.casefold() for name in reserved}
    checkpoints = [e.rel for e in entries if e.skip_reason is None and sniffed[e.rel].checkpoint
                   and roles.get(e.rel, layout.Role(layout.CONVERT)).role == layout.CONVERT]
    destinations = assign_destinations(checkpoints, suffix, set(reserved) | layout.fixed_destinations(roles))
    by_rel = {entry.rel: entry for entry in entries}
    plan: list[PlanItem] = []
    for entry in entries:
        if entry.skip_reason is not None:
            plan.append(PlanItem(entry.rel, entry.size, entry.mtime, None, SKIP, reason=entry.skip_reason))
            continue
        sniff = sniffed[entry.rel]
        role = roles.get(entry.rel) or layout.Role(layout.CONVERT if sniff.checkpoint else layout.COPY)
        if role.role == layout.COPY and role.destination is None:
            plan.append(PlanItem(entry.rel, entry.size, entry.mtime, None, SKIP, reason=sniff.reason))
            continue
        if role.destination and role.destination.casefold() in reserved_names:
            plan.append(PlanItem(entry.rel, entry.size, entry.mtime, None, SKIP, reason="named like this tool's manifest or lock (not copied)"))
            continue
        if role.role == layout.MEMBER:
            plan.append(PlanItem(entry.rel, entry.size, entry.mtime, sniff.reader or "?", MEMBER, group=role.group, role=role.role,
                                 reason=f"converted with {posixpath.basename(role.group or '')}"))
            continue
        action = {layout.COPY: COPY, layout.STATE: REWRITE}.get(role.role, CONVERT)
        destination = role.destination or destinations[entry.rel]
        item = PlanItem(entry.rel, entry.size, entry.mtime, (sniff.reader or "?") if sniff.checkpoint else None, action, destination,
                        reason=sniff.reason if sniff.checkpoint else None, role=role.role, outputs=list(role.outputs))
        if role.role in (layout.HF_SHARDS, layout.SHARD_SET):
            item.members = [rel for rel, other in roles.items() if other.role == layout.MEMBER and other.group == entry.rel]
            parts = [by_rel[rel] for rel in item.members if rel in by_rel]
            item.size = entry.size + sum(part.size for part in parts)
            item.mtime = max([entry.mtime] + [part.mtime for part in parts])
        _decide(item, records.get(entry.rel), options_key, dest_stat, source_sha256, dest_sha256, force)
        plan.append(item)
    return plan


def _decide(item: PlanItem, record: Mapping[str, Any] | None, options_key: str, dest_stat: Callable[[str], tuple[int, float] | None],
            source_sha256: Callable[[str], str], dest_sha256: Callable[[str], str], force: bool) -> None:
    assert item.destination is not None
    found = dest_stat(item.destination)
    ours = record is not None and record.get("output") == item.destination
    if found is not None and (force or ours):
        item.overwrite = True
    if record is not None and record.get("status") == "done" and not force:
        item.kind = record.get("kind")
        if ours and record.get("options") == options_key and found is not None and all(dest_stat(o) is not None for o in item.outputs) \
                and _source_unchanged(item, record, source_sha256) and _output_unchanged(item.destination, found, record, dest_sha256):
            item.action = UP_TO_DATE
            item.sha256 = record.get("sha256")
            item.reason = None
            return
    if found is not None and not item.overwrite:
        item.action = EXISTS
        item.reason = "the destination already exists and was not written by this migration; pass --force to overwrite it"


def _source_unchanged(item: PlanItem, record: Mapping[str, Any], source_sha256: Callable[[str], str]) -> bool:
    if record.get("size") != item.size:
        return False
    if same_time(record.get("mtime"), item.mtime):
        return True
    return not item.members and bool(record.get("sha256")) and source_sha256(item.source) == record.get("sha256")


def _output_unchanged(destination: str, found: tuple[int, float], record: Mapping[str, Any], dest_sha256: Callable[[str], str]) -> bool:
    size, mtime = found
    if record.get("output_size") != size:
        return False
    if same_time(record.get("output_mtime"), mtime):
        return True
    return bool(record.get("output_sha256")) and dest_sha256(destination) == record.get("output_sha256")


def counts(plan: Iterable[PlanItem]) -> dict[str, int]:
    """How many items take each action."""
    out = {CONVERT: 0, COPY: 0, REWRITE: 0, MEMBER: 0, UP_TO_DATE: 0, SKIP: 0, EXISTS: 0}
    for item in plan:
        out[item.action] = out.get(item.action, 0) + 1
    return out
