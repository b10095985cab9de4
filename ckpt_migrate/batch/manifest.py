"""The manifest DST keeps: one JSON record per line, the last record of a source wins.

A run appends a ``started`` record for every file before dispatching it (made durable at once)
and a result record (``done``, ``failed`` or ``refused``) when it comes back, so an output found
under its final name after a crash is known to be ours. A run first compacts the file (latest
record per source) through an atomic rename. Local result lines are written as they come (a
killed process loses none) and fsync'ed at most every ``flush_seconds`` and at the end; on
object stores an update replaces the whole object in one PUT on the same schedule. A machine
crash therefore loses at most that much bookkeeping: those files are redone, their outputs
being known as ours from the ``started`` records. A torn last line is ignored when reading, so
the manifest is never unreadable.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Iterable, Mapping

from ckpt_migrate.errors import CkptMigrateError
from ckpt_migrate.io.trees import Tree

MANIFEST_NAME = ".ckpt-migrate-manifest.jsonl"
LOCK_NAME = ".ckpt-migrate.lock"
VERSION = 1

FIELDS = ("source", "size", "mtime", "sha256", "output", "output_size", "output_mtime", "output_sha256", "status",
          "reader", "format", "kind", "tensors", "seconds", "error", "exit_code", "options", "time")


_SHARED_VALUES = ("status", "reader", "format", "kind", "options")
"""Fields whose few distinct values every record repeats: one string object is kept for each value."""


class Record:
    """One manifest record, held compactly: a slot per known field, the few repeated strings shared.

    A tree of 10⁵–10⁶ files has as many records; a dict per record costs several times what the
    record's line does. A record reads like a mapping (``get``, ``[]``, ``in``, ``keys``); fields
    this version does not know are kept in ``extra`` so that compacting never drops them.
    """

    __slots__ = (*FIELDS, "v", "extra")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        extra = None
        for key, value in fields.items():
            if key in _SLOTS:
                if key in _SHARED_VALUES and type(value) is str:
                    value = sys.intern(value)
                setattr(self, key, value)
            else:
                extra = extra or {}
                extra[key] = value
        self.extra = extra

    def get(self, key: str, default: Any = None) -> Any:
        """The field's value, or ``default`` when the record has none."""
        if key in _SLOTS:
            return getattr(self, key, default)
        return (self.extra or {}).get(key, default)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _ABSENT) is not _ABSENT

    def keys(self) -> list[str]:
        """The fields this record has."""
        return [key for key in _SLOTS if hasattr(self, key)] + list(self.extra or {})

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (what is written back)."""
        return {key: self.get(key) for key in self.keys()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Record({self.to_dict()!r})"


_SLOTS = frozenset((*FIELDS, "v"))
_ABSENT = object()


def parse(text: str) -> tuple[dict[str, Record], int]:
    """The latest record per source in a manifest's text, and how many lines were unreadable."""
    latest, bad, _ = _parse_lines(text)
    return latest, bad


def _parse_lines(text: str) -> tuple[dict[str, Record], int, int]:
    latest: dict[str, Record] = {}
    bad = lines = 0
    decode = json.loads
    for line in text.splitlines():
        if not line.strip():
            continue
        lines += 1
        try:
            record = decode(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("source"), str):
            latest[record["source"]] = Record(record)
        else:
            bad += 1
    return latest, bad, lines


def dumps(records: Iterable[Mapping[str, Any]]) -> str:
    """Records as manifest lines (JSON, keys sorted)."""
    return "".join(json.dumps(record.to_dict() if isinstance(record, Record) else dict(record), sort_keys=True, default=str) + "\n"
                   for record in records)


class Manifest:
    """The manifest of one DST tree: read the latest records, compact, append new ones."""

    def __init__(self, tree: Tree, flush_seconds: float = 2.0) -> None:
        self.tree = tree
        self.records: dict[str, Record] = {}
        self.unreadable = 0
        self.superseded = 0
        self.flush_seconds = flush_seconds
        self._dirty = False
        self._flushed = 0.0

    def load(self) -> "Manifest":
        """Read the manifest if DST has one (a missing DST or manifest is an empty manifest)."""
        text = self.tree.read_text(MANIFEST_NAME) if self.tree.is_dir() else None
        self.records, self.unreadable, lines = _parse_lines(text or "")
        self.superseded = lines - self.unreadable - len(self.records)
        return self

    @property
    def needs_compaction(self) -> bool:
        """True when the file holds lines that compacting would drop (superseded or unreadable records)."""
        return bool(self.unreadable or self.superseded)

    def compact(self) -> None:
        """Rewrite the manifest with only the latest record per source (atomically).

        Raises:
            CkptMigrateError: the manifest cannot be written (a full disk, no permission).
        """
        try:
            self.tree.replace_text(MANIFEST_NAME, dumps(self.records[key] for key in sorted(self.records)))
        except OSError as error:
            raise CkptMigrateError(f"cannot write the manifest: {error.strerror or error}", path=self.tree.url_of(MANIFEST_NAME)) from None
        self.superseded = self.unreadable = 0
        self._dirty = False
        self._flushed = time.monotonic()

    def flush(self) -> None:
        """Make every record durable: fsync a local manifest, write an object store's.

        Raises:
            CkptMigrateError: the manifest cannot be written.
        """
        if not self._dirty:
            return
        if not self.tree.local:
            self.compact()
            return
        try:
            self.tree.sync(MANIFEST_NAME)
        except OSError as error:
            raise CkptMigrateError(f"cannot write the manifest: {error.strerror or error}", path=self.tree.url_of(MANIFEST_NAME)) from None
        self._dirty = False
        self._flushed = time.monotonic()

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Record results: written at once locally, durable within ``flush_seconds`` (see :meth:`flush`).

        Raises:
            CkptMigrateError: the manifest cannot be written.
        """
        batch = []
        for record in records:
            entry = {key: record.get(key) for key in FIELDS if record.get(key) is not None}
            entry.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            entry["v"] = VERSION
            if entry["source"] in self.records:
                self.superseded += 1
            self.records[entry["source"]] = Record(entry)
            batch.append(entry)
        if not batch:
            return
        self._dirty = True
        if self.tree.local:
            try:
                self.tree.append_text(MANIFEST_NAME, dumps(batch), sync=False)
            except OSError as error:
                raise CkptMigrateError(f"cannot write the manifest: {error.strerror or error}", path=self.tree.url_of(MANIFEST_NAME)) from None
        if time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()
