"""What a batch did, file by file: the object ``migrate`` returns and ``--report``/``--json`` write."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("converted", "copied", "up-to-date", "skipped", "failed", "refused", "planned")


@dataclass
class FileResult:
    """One file of SRC: what the plan said (``action``) and what happened (``status``).

    ``status`` is ``converted``, ``copied`` (a file that is not a checkpoint, carried over byte
    for byte), ``up-to-date``, ``skipped`` (a link not followed, not a regular file, or not a
    checkpoint with ``--checkpoints-only``), ``failed``, ``refused`` (it calls something outside the allowlist), or ``planned``
    in a dry run. ``error`` is one line naming the file and the cause.
    """

    source: str
    size: int
    format: str | None
    action: str
    status: str
    destination: str | None = None
    kind: str | None = None
    reason: str | None = None
    error: str | None = None
    exit_code: int = 0
    seconds: float | None = None
    sha256: str | None = None
    reader: str | None = None
    tensors: int | None = None
    output_size: int | None = None
    output_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields that are set."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class MigrateReport:
    """The outcome of ``migrate``: every file's result, counts, bytes, time and the exit code.

    ``exit_code`` is 3 when any file was refused as unsafe, otherwise 1 when any failed, else 0
    (a dry run always 0).
    """

    src: str
    dst: str
    to: str
    dry_run: bool
    executor: str
    jobs: int
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    manifest: str | None = None
    cleaned: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in STATUSES if status != "planned" or self.dry_run}
        for entry in self.files:
            out[entry.status] = out.get(entry.status, 0) + 1
        return out

    @property
    def actions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self.files:
            out[entry.action] = out.get(entry.action, 0) + 1
        return out

    @property
    def bytes_in(self) -> int:
        return sum(entry.size for entry in self.files if entry.status in ("converted", "copied") and entry.action != "member")

    @property
    def bytes_out(self) -> int:
        return sum(entry.output_size or 0 for entry in self.files if entry.status in ("converted", "copied") and entry.action != "member")

    @property
    def failures(self) -> list[FileResult]:
        return [entry for entry in self.files if entry.status in ("failed", "refused")]

    @property
    def exit_code(self) -> int:
        if self.dry_run:
            return 0
        statuses = {entry.status for entry in self.files}
        if "refused" in statuses:
            return 3
        return 1 if "failed" in statuses else 0

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--report``/``--json`` document): counts, bytes, time and every file."""
        return {
            "src": self.src,
            "dst": self.dst,
            "to": self.to,
            "dry_run": self.dry_run,
            "executor": self.executor,
            "jobs": self.jobs,
            "exit_code": self.exit_code,
            "counts": self.counts,
            "actions": self.actions,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 4),
            "manifest": self.manifest,
            "cleaned_temporaries": self.cleaned,
            "files": [entry.to_dict() for entry in self.files],
        }
