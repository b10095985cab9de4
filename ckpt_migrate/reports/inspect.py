"""The inspect report: what a checkpoint holds (format, kind, tensors, storage account, extras, globals, architecture).

The file is read exactly as ``convert`` reads it, in collect-only mode, so every global gets a
verdict even when one is refused; nothing from the file is executed either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.errors import CkptMigrateError
from ckpt_migrate.reports.progress import ProgressReporter, phase, reporting
from ckpt_migrate.unpickler.verdicts import UNSAFE, file_verdict, unknown_calls_warning


@dataclass
class InspectReport:
    """What :func:`inspect` found.

    ``verdict`` is the file's verdict as ``scan`` gives it (``clean``, ``unknown-calls``,
    ``unsafe``). ``kind`` is the bundle kind (``state_dict``, ``training_bundle``, …), ``refused``
    for an unsafe file (no tensors listed) or ``no weights`` (``error`` says why, ``contents``
    holds the file's data as plain values). ``tensors`` holds one dict per tensor (``name``,
    ``dtype``, ``shape``, ``bytes``, and ``quantized`` when it is); ``storages`` is the storage
    account (``summary`` line and one entry per storage).
    """

    file: str
    format: str
    reader: str
    verdict: str
    globals: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "refused"
    warning: str | None = None
    tensors: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    selected: list[Any] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    epoch: Any = None
    holds: str | None = None
    storages: dict[str, Any] | None = None
    architecture: dict[str, Any] | None = None
    error: str | None = None
    contents: Any = None

    @property
    def refused(self) -> bool:
        """True when the file is unsafe (the CLI exits 3)."""
        return self.verdict == UNSAFE

    @property
    def total_bytes(self) -> int:
        """The bytes of every tensor listed."""
        return sum(t["bytes"] for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the document ``inspect --json`` prints)."""
        out: dict[str, Any] = {"file": self.file, "format": self.format, "reader": self.reader, "globals": self.globals,
                               "verdict": self.verdict, "meta": self.meta}
        if self.warning:
            out["warning"] = self.warning
        out["kind"] = self.kind
        if self.refused:
            out.update(tensors=self.tensors, extras=self.extras)
            return out
        if self.error is not None:
            out.update(error=self.error, tensors=self.tensors, extras=self.extras, contents=self.contents)
            return out
        out.update(selected=self.selected, classes=self.classes, tensors=self.tensors, total_bytes=self.total_bytes,
                   extras=self.extras, epoch=self.epoch)
        if self.holds:
            out["holds"] = self.holds
        if self.storages is not None:
            out["storages"] = self.storages
        out["architecture"] = self.architecture
        return out


def inspect(src: str | os.PathLike, *, allow_calls: Iterable[str] = (), select: str | None = None, ema: bool = False,
            strict_calls: bool = False, weights: str = "master", progress: ProgressReporter | None = None) -> InspectReport:
    """Report what ``src`` holds without executing anything from it.

    Refused globals do not stop the report: an unsafe file is reported with every global and its
    verdict, and no tensors.

    Args:
        src: the checkpoint file or folder (never modified).
        allow_calls: calls accepted as inert records under ``strict_calls``.
        select: the bundle key whose weights are listed (dotted path allowed).
        ema: list the EMA weights.
        strict_calls: unknown calls make the file unsafe.
        weights: DeepSpeed ZeRO folders: ``master`` or ``module`` weights.
        progress: where to show the phases of long work (default: nothing is shown).

    Returns:
        An :class:`InspectReport`; ``to_dict()`` is the ``--json`` document.

    Raises:
        TypeError: an unknown keyword argument.
        UnsupportedFormatError: no reader recognises the file.
        CorruptFileError: the file is malformed.
        LimitExceededError: the file asks for more work or memory than its budget.
    """
    from ckpt_migrate.api import extract_weights, read_raw
    from ckpt_migrate.converters.readers.deepspeed import refuse_partitioned_rank

    path = os.fspath(src)
    with reporting(progress):
        with phase(f"reading {os.path.basename(os.path.normpath(path)) or path}", None):
            raw, reader_name = read_raw(path, allow_calls=allow_calls, collect_only=True, strict_calls=strict_calls, weights=weights)
        report = InspectReport(path, raw.format, reader_name, file_verdict(raw.globals), [u.to_json() for u in raw.globals.values()],
                               to_plain(raw.meta), warning=unknown_calls_warning(raw.globals) or None)
        if report.refused:
            return report
        try:
            refuse_partitioned_rank(raw.root)
        except CkptMigrateError as error:
            raise error.with_path(path)
        try:
            found = extract_weights(raw, select=select, ema=ema)
        except CkptMigrateError as error:
            report.kind, report.error, report.contents = "no weights", error.message, to_plain(raw.root)
            return report
        report.kind, report.selected, report.classes = found.kind, found.selected, found.classes
        report.tensors = [{"name": name, "dtype": ref.dtype.name, "shape": list(ref.shape), "bytes": ref.nbytes,
                           **({"quantized": ref.quantization.get("scheme")} if ref.quantization else {})}
                          for name, ref in found.tensors.items()]
        report.extras, report.epoch = to_plain(found.extras), to_plain(found.extras.get("epoch"))
        report.holds = found.note or None
        if found.account is not None:
            report.storages = found.account.to_json()
        with phase("identifying the architecture", None):
            report.architecture = guess_architecture(found.tensors)
    return report


def guess_architecture(tensors: Any) -> dict[str, Any] | None:
    """Which torchvision builder the tensors fit, as a JSON-ready dict with a ``summary`` line (advisory)."""
    try:
        from ckpt_migrate.architectures.identify import identify
    except ImportError:
        return None
    try:
        found = identify({name: tuple(ref.shape) for name, ref in tensors.items()})
        return {**found.to_json(), "summary": found.describe()}
    except Exception as error:  # noqa: BLE001 - identification is advisory; a failure must not hide the report
        return {"error": str(error)}
