"""Verdict records: what the interpreter decided about each global a file names, and the file's verdict.

One record type, :class:`GlobalVerdict`, is used by the interpreter, the readers, ``inspect``,
``convert`` and ``scan``. A global's verdict is the worst of its uses:

- ``allowed``: an allowlisted constructor or value, or a curated benign call kept as inert data;
- ``stub``: a class that was only mentioned or instantiated as an inert stub;
- ``unknown-call``: a call of a name that is neither allowlisted nor a known gadget, recorded as
  inert data (name and arguments) and never executed;
- ``refused``: a known code-execution gadget, a forbidden operation, or (with ``--strict-calls``)
  an unknown call.

:func:`file_verdict` turns a file's globals into ``clean``, ``unknown-calls`` or ``unsafe``; it is
the one place ``scan``, ``inspect`` and ``convert`` take their verdict from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ckpt_migrate.errors import CkptMigrateError, UnsafeFileError

RANK = {"allowed": 0, "stub": 1, "unknown-call": 2, "refused": 3}
"""Verdicts of a global from harmless to refused."""

CLEAN, UNKNOWN_CALLS, UNSAFE = "clean", "unknown-calls", "unsafe"


@dataclass
class GlobalVerdict:
    """Every use of one global in one file; the verdict is the worst use.

    ``offset`` is the byte of the first opcode that named it; ``where`` says which pickle
    (``archive/data.pkl``, ``nested pickle at byte 120``) when the file holds several;
    ``found_by`` is ``interpreter`` or ``static`` (a global only the opcode walk reached).
    """

    name: str
    offset: int | None = None
    verdict: str = "stub"
    reason: str = ""
    where: str = ""
    found_by: str = "interpreter"

    def escalate(self, verdict: str, reason: str) -> None:
        """Keep the worse of the current verdict and ``verdict`` (allowed < stub < unknown-call < refused)."""
        if RANK[verdict] > RANK[self.verdict] or (verdict == self.verdict and not self.reason):
            self.verdict, self.reason = verdict, reason

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the record."""
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason, "offset": self.offset,
                "where": self.where, "found_by": self.found_by}


def merge_uses(into: dict[str, GlobalVerdict], uses: Iterable[GlobalVerdict], where: str | None = None) -> None:
    """Add ``uses`` to ``into``, keeping the first offset of each name and the worst verdict.

    Args:
        into: the verdicts collected so far, by name; updated in place.
        uses: verdicts from another pickle of the same file.
        where: a label replacing each new record's ``where`` (a nested pickle's position).
    """
    for use in uses:
        known = into.get(use.name)
        if known is None:
            into[use.name] = GlobalVerdict(use.name, use.offset, use.verdict, use.reason,
                                           where if where is not None else use.where, use.found_by)
        else:
            known.escalate(use.verdict, use.reason)


def refused(uses: dict[str, GlobalVerdict] | Iterable[GlobalVerdict]) -> list[GlobalVerdict]:
    """The refused records among ``uses``."""
    values = uses.values() if isinstance(uses, dict) else uses
    return [u for u in values if u.verdict == "refused"]


def unknown_calls(uses: dict[str, GlobalVerdict] | Iterable[GlobalVerdict]) -> list[GlobalVerdict]:
    """The unknown calls recorded as inert data among ``uses``."""
    values = uses.values() if isinstance(uses, dict) else uses
    return [u for u in values if u.verdict == "unknown-call"]


def file_verdict(uses: dict[str, GlobalVerdict] | Iterable[GlobalVerdict]) -> str:
    """``unsafe`` when anything is refused, ``unknown-calls`` when unknown calls were recorded, else ``clean``."""
    values = list(uses.values() if isinstance(uses, dict) else uses)
    if refused(values):
        return UNSAFE
    if unknown_calls(values):
        return UNKNOWN_CALLS
    return CLEAN


def _place(use: GlobalVerdict) -> str:
    return f"at byte {use.offset}{f' in {use.where}' if use.where else ''}"


def unknown_calls_warning(uses: dict[str, GlobalVerdict] | Iterable[GlobalVerdict]) -> str | None:
    """One warning line naming the unknown calls kept as inert records, or ``None`` when there are none."""
    calls = unknown_calls(uses)
    if not calls:
        return None
    names = ", ".join(f"{u.name} ({_place(u)})" for u in calls[:8])
    if len(calls) > 8:
        names += f", and {len(calls) - 8} more"
    return (f"kept {len(calls)} unknown call(s) as inert records, never executed: {names}; "
            "torch.load(weights_only=False) would run them (--strict-calls refuses such files)")


def refusal_error(uses: dict[str, GlobalVerdict], path: str | None, cause: CkptMigrateError | None = None) -> UnsafeFileError:
    """The :class:`UnsafeFileError` for the refused globals in ``uses``, carrying all of them as ``globals``.

    Args:
        uses: every verdict of the file, by name.
        path: the file, for the message.
        cause: an error that also stopped reading; mentioned after the refusal.

    Returns:
        The error to raise (exit code 3).
    """
    bad = refused(uses)
    details = "; ".join(f"{u.name} {_place(u)} ({u.reason})" for u in bad[:5])
    if len(bad) > 5:
        details += f"; and {len(bad) - 5} more ({', '.join(u.name for u in bad[5:20])}{', …' if len(bad) > 20 else ''})"
    message = f"refused: {details}"
    if cause is not None:
        message += f"; the file is also malformed: {cause.message}"
    error = UnsafeFileError(message, path=path, refused=[u.name for u in bad])
    error.globals = dict(uses)
    return error


def settle(error: CkptMigrateError, uses: dict[str, GlobalVerdict], path: str | None) -> CkptMigrateError:
    """The error to raise when reading stopped on ``error``: a refusal wins over a malformed file.

    Args:
        error: what stopped the reading.
        uses: the verdicts collected so far.
        path: the file, for a refusal's message.

    Returns:
        ``error`` or a refusal, carrying every verdict collected so far as ``globals``.
    """
    if not isinstance(error, UnsafeFileError) and refused(uses):
        return refusal_error(uses, path or error.path, error)
    collected = dict(uses)
    merge_uses(collected, getattr(error, "globals", {}).values())
    error.globals = collected
    return error
