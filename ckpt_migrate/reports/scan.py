"""Security verdicts for checkpoint files and folders, without running Python's pickle on anything.

Each file is opened exactly as ``convert`` and ``inspect`` open it (the same readers and the same
interpreter, in collect-only mode, so every global gets a verdict even after a refusal), and its
pickles are also walked statically, opcode by opcode, so globals after a malformed byte and
pickles no reader interprets are listed too. A file's verdict is one of:

- ``clean``: nothing would run under ``torch.load`` but allowlisted constructors;
- ``unknown-calls``: calls of names that are not known to be harmless (listed with offsets); they
  would run under ``torch.load(weights_only=False)``, ckpt-migrate keeps them as inert records;
- ``unsafe``: a known code-execution gadget (or, with ``--strict-calls``, an unknown call);
- ``error`` (it cannot be read) or ``skipped`` (found in a folder and not a checkpoint).

Exit codes: 3 when a file is unsafe, else 1 when a file could not be read, else 0.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ckpt_migrate.converters.filenames import CHECKPOINT_SUFFIXES, is_dcp_folder
from ckpt_migrate.errors import CkptMigrateError, UnsafeFileError, UnsupportedFormatError
from ckpt_migrate.unpickler.policy import Policy
from ckpt_migrate.unpickler.static import StaticWalk, walk, walk_all
from ckpt_migrate.unpickler.verdicts import CLEAN, UNSAFE, GlobalVerdict, file_verdict, refusal_error, refused, unknown_calls
from ckpt_migrate.unpickler.vm import resolve_name, static_verdict


_MAX_STATIC_BYTES = 256 << 20


@dataclass
class FileScan:
    """The verdict on one file."""

    path: str
    format: str | None = None
    verdict: str = CLEAN
    globals: list[GlobalVerdict] = field(default_factory=list)
    error: str | None = None
    message: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def refused(self) -> list[GlobalVerdict]:
        return refused(self.globals)

    @property
    def unknown_calls(self) -> list[GlobalVerdict]:
        return unknown_calls(self.globals)

    def counts(self) -> dict[str, int]:
        """How many globals got each verdict."""
        out = {"allowed": 0, "stub": 0, "unknown-call": 0, "refused": 0}
        for entry in self.globals:
            out[entry.verdict] = out.get(entry.verdict, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: verdict, message, refused and unknown calls, counts, every global and notes."""
        return {"path": self.path, "format": self.format, "verdict": self.verdict, "message": self.message,
                "error": self.error, "refused": [g.name for g in self.refused],
                "unknown_calls": [g.name for g in self.unknown_calls], "counts": self.counts(),
                "globals": [g.to_json() for g in self.globals], "notes": self.notes}


@dataclass
class ScanReport:
    """The verdicts on every file scanned; :attr:`exit_code` is what ``ckpt-migrate scan`` exits with."""

    files: list[FileScan] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        verdicts = {f.verdict for f in self.files}
        if UNSAFE in verdicts:
            return 3
        if "error" in verdicts:
            return 1
        return 0

    def summary(self) -> dict[str, int]:
        out = {"files": len(self.files), "clean": 0, "unknown-calls": 0, "unsafe": 0, "error": 0, "skipped": 0}
        for found in self.files:
            out[found.verdict] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the document ``scan --json`` prints): every file, the summary and the exit code."""
        return {"files": [f.to_dict() for f in self.files], "summary": self.summary(), "exit_code": self.exit_code}


def scan(paths: str | os.PathLike | Iterable[str | os.PathLike], allow_calls: Iterable[str] = (),
         strict_calls: bool = False) -> ScanReport:
    """Scan files and folders (recursively); never executes or imports anything a file names.

    Files named directly are always read; files found in folders are skipped when no reader
    recognises them and their suffix is not a checkpoint's.

    Args:
        paths: files and folders.
        allow_calls: names accepted as inert records under ``strict_calls``.
        strict_calls: unknown calls make a file unsafe (``--strict-calls``).

    Returns:
        The report; its ``exit_code`` is what ``ckpt-migrate scan`` exits with.

    Raises:
        TypeError: an unknown keyword argument (a file that cannot be read is not raised: its verdict is ``error``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    allowed = frozenset(allow_calls)
    report = ScanReport()
    for path, named in iter_files(paths):
        report.files.append(scan_file(path, allowed, named=named, strict_calls=strict_calls))
    return report


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, bool]]:
    """Every file under ``paths`` in a stable order, with whether it was named directly.

    A DCP checkpoint folder (holding ``.metadata``) is yielded as one entry.
    """
    for raw in paths:
        path = os.fspath(raw)
        if not os.path.isdir(path) or is_dcp_folder(path):
            yield path, True
            continue
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs.sort()
            checkpoints = [d for d in dirs if is_dcp_folder(os.path.join(root, d))]
            for name in checkpoints:
                yield os.path.join(root, name), False
            dirs[:] = [d for d in dirs if d not in checkpoints]
            for name in sorted(files):
                path_in = os.path.join(root, name)
                if _regular(path_in):
                    yield path_in, False


def _regular(path: str) -> bool:
    """True for a regular file (symlinks followed); FIFOs and devices would block or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def scan_file(path: str, allow_calls: frozenset[str] = frozenset(), *, named: bool = True,
              strict_calls: bool = False) -> FileScan:
    """The verdict on one file (or DCP folder): read it as ``convert`` would, in collect-only mode.

    Args:
        path: the file or DCP folder.
        allow_calls: names accepted as inert records under ``strict_calls``.
        named: the user named the file (else it was found in a folder and may be skipped).
        strict_calls: unknown calls make the file unsafe.

    Returns:
        The file's verdict, its globals and notes.
    """
    import ckpt_migrate.api as api

    found = FileScan(path)
    policy = Policy(frozenset(allow_calls), True, strict_calls)
    uses: dict[str, GlobalVerdict] = {}
    if os.path.exists(path) and not os.path.isdir(path) and not _regular(path):
        found.verdict, found.error = "error", "not a regular file (a device, FIFO or socket); not read"
        found.message = f"{path}: {found.error}"
        return found
    try:
        raw, reader = api.read_raw(path, allow_calls=allow_calls, collect_only=True, strict_calls=strict_calls)
    except UnsafeFileError as error:
        uses = dict(getattr(error, "globals", {}))
        found.verdict, found.message = UNSAFE, str(error)
    except UnsupportedFormatError as error:
        if not named and not path.lower().endswith(CHECKPOINT_SUFFIXES):
            found.verdict, found.message = "skipped", f"{path}: skipped: {error.message}"
            return found
        found.verdict, found.error, found.message = "error", error.message, str(error)
    except CkptMigrateError as error:
        uses = dict(getattr(error, "globals", {}))
        found.verdict, found.error, found.message = "error", error.message, str(error)
    else:
        uses = raw.globals
        found.format = raw.format
        if raw.format == "torchscript":
            found.notes.append("TorchScript archive: its code/ is never run by ckpt-migrate (torch.jit.load would run it)")
        if raw.meta.get("trailing_bytes"):
            found.notes.append(f"{raw.meta['trailing_bytes']} bytes after the pickle's STOP are never read")
        if refused(uses):
            found.verdict, found.message = UNSAFE, str(refusal_error(uses, path))
    found.globals = list(uses.values())
    if found.format is None:
        found.format = _sniff_name(path)
    _add_static(found, policy)
    if found.verdict == "error" and found.refused:
        details = "; ".join(f"{g.name} at byte {g.offset} in {g.where} ({g.reason})" for g in found.refused)
        found.verdict, found.message = UNSAFE, f"{path}: refused: {details}; the file is also malformed: {found.error}"
    elif found.verdict == CLEAN:
        found.verdict = file_verdict(uses)
    return found


def _sniff_name(path: str) -> str | None:
    import ckpt_migrate.converters.registry as registry
    from ckpt_migrate.io.source import Source

    try:
        with Source(path) as source:
            return registry.sniff(source).name
    except Exception:  # noqa: BLE001 - the format is only a label here; the read error is already recorded
        return None


def _add_static(found: FileScan, policy: Policy) -> None:
    """Globals the static walk finds in the pickles the readers interpret, that the interpreter did not reach."""
    try:
        walks = _static_walks(found.path, found.format)
    except Exception as error:  # noqa: BLE001 - the static walk only adds detail; the reader's verdict stands
        if not found.error:
            found.notes.append(f"static walk skipped: {type(error).__name__}: {error}")
        return
    known = {g.name for g in found.globals}
    for where, walked, interpreted in walks:
        if walked.error and interpreted and found.verdict == CLEAN:
            found.notes.append(f"{where}: static walk stopped: {walked.error}")
        listed = []
        for ref in walked.globals:
            module, name = resolve_name(ref.module, ref.name, walked.protocol)
            dotted = f"{module}.{name}"
            verdict, reason = static_verdict(dotted, ref.called, ref.opcode, policy)
            if not interpreted:
                listed.append(f"{dotted} ({verdict})")
                continue
            if dotted in known:
                continue
            known.add(dotted)
            found.globals.append(GlobalVerdict(dotted, ref.offset, verdict, reason, where, "static"))
        if walked.unresolved and interpreted:
            found.notes.append(f"{where}: STACK_GLOBAL at byte {walked.unresolved[0]} takes names the static walk cannot follow")
        if listed:
            found.notes.append(f"{where} is never read by ckpt-migrate; it names {', '.join(listed)}")


def _static_walks(path: str, fmt: str | None) -> list[tuple[str, StaticWalk, bool]]:
    """``(where, walk, interpreted)`` for every pickle of the file; ``interpreted`` when a reader runs it."""
    if fmt in ("torch-zip", "torchscript", None) and _is_zip(path):
        return _zip_walks(path)
    if fmt in ("torch-legacy", "pickle") and os.path.isfile(path):
        if os.path.getsize(path) > _MAX_STATIC_BYTES:
            return []
        from ckpt_migrate.io.source import Source

        data = Source(path).map()
        if fmt == "pickle":
            walks = walk_all(data, max_pickles=1)
            return [("pickle", w, True) for w in walks]
        names = ("magic number", "protocol version", "sys_info", "object", "storage keys")
        walks = walk_all(data, max_pickles=5)
        return [(f"legacy {names[i]} pickle", w, True) for i, w in enumerate(walks)]
    return []


def _is_zip(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _zip_walks(path: str) -> list[tuple[str, StaticWalk, bool]]:
    out = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".pkl") or info.file_size > _MAX_STATIC_BYTES or info.compress_type != zipfile.ZIP_STORED:
                continue
            parts = info.filename.split("/")
            interpreted = parts[-1] == "data.pkl" and len(parts) <= 2
            out.append((info.filename, walk(archive.read(info)), interpreted))
    return out
