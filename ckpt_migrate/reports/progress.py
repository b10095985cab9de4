"""Progress of one long operation (reading, hashing, copying, casting, verifying, exporting).

Library code opens a :func:`phase` around each step that can take seconds and advances it as it
goes; whoever wants a display installs a :class:`ProgressReporter` for the duration of one call with
:func:`reporting` (``convert(..., progress=reporter)`` does it). Nothing is shown by default: the
library is silent unless asked. This module imports neither torch nor rich.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator


class Phase:
    """One step of an operation; the silent base ignores everything.

    Use it as a context manager: entering shows it, :meth:`advance` moves it on, leaving ends it.
    """

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` more units (bytes, tensors) done."""

    def __enter__(self) -> "Phase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def end(self) -> None:
        """The step is over (done or failed)."""


class ProgressReporter:
    """Where phases are shown; the base reporter shows nothing (the library default)."""

    def phase(self, label: str, total: int | None = None, unit: str = "bytes") -> Phase:
        """Start showing one step.

        Args:
            label: what is being done, e.g. ``"writing model.safetensors"`` (plain text, made inert by displays).
            total: how many units the step takes, or None when unknown (a spinner instead of a bar).
            unit: ``"bytes"`` or a plain word counted (``"tensors"``).

        Returns:
            The :class:`Phase` to advance and end.
        """
        return Phase()

    def close(self) -> None:
        """Stop the display (idempotent)."""


SILENT = ProgressReporter()
"""The reporter the library uses when nobody asked for progress."""

_CURRENT: contextvars.ContextVar[ProgressReporter] = contextvars.ContextVar("ckpt_migrate_progress", default=SILENT)


def current() -> ProgressReporter:
    """The reporter installed for the running call (:data:`SILENT` when none)."""
    return _CURRENT.get()


def phase(label: str, total: int | None = None, unit: str = "bytes") -> Phase:
    """Start a step on the current reporter; see :meth:`ProgressReporter.phase`."""
    return _CURRENT.get().phase(label, total, unit)


@contextlib.contextmanager
def reporting(reporter: ProgressReporter | None) -> Iterator[ProgressReporter]:
    """Install ``reporter`` (None keeps the current one) for the code run inside the block.

    Args:
        reporter: the display to tell of phases, or None.

    Returns:
        A context manager yielding the reporter in effect.
    """
    if reporter is None:
        yield _CURRENT.get()
        return
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)
