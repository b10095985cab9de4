"""The Python API that mirrors the CLI: ``load``, ``convert``, ``inspect`` (see :mod:`ckpt_migrate.reports.inspect`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.io.atomic import check_destination
from ckpt_migrate.model.checkpoint import Checkpoint
from ckpt_migrate.converters.base import RawRead, ReadOptions, WriteReport
from ckpt_migrate.errors import CkptMigrateError, SelectionError, UsageError
from ckpt_migrate.bundle.extract import Extraction, extract
from ckpt_migrate.converters.readers.deepspeed import refuse_partitioned_rank
from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.io.source import Source
from ckpt_migrate.transforms.output_bound import check_output_size
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.model.provenance import TOOL_LABEL
from ckpt_migrate.unpickler import DEFAULT_LIMITS, Limits
from ckpt_migrate.unpickler.budget import Budget
from ckpt_migrate.unpickler.verdicts import unknown_calls_warning
from ckpt_migrate.reports.inspect import InspectReport, inspect
from ckpt_migrate.reports.progress import ProgressReporter, phase, reporting



def read_raw(src: str, *, allow_calls: Iterable[str] = (), limits: Limits = DEFAULT_LIMITS, collect_only: bool = False,
             strict_calls: bool = False, weights: str = "master") -> tuple[RawRead, str]:
    """Sniff ``src`` and run its reader; return what it found and the reader's name.

    This is the one path every command takes to a file's verdicts (``raw.globals``): ``convert``
    and ``load`` stop at a refusal, ``inspect`` and ``scan`` collect every verdict. The file gets
    one resource budget, shared by all of its pickles.

    Raises:
        UnsupportedFormatError: no reader recognises the file.
        UnsafeFileError: the file names a known gadget (or, with ``strict_calls``, calls a name outside the allowlist).
        CorruptFileError: the file is malformed.
        LimitExceededError: the file asks for more work or memory than its budget.
    """
    with Source(str(src)) as source:
        reader = registry.sniff(source)
        raw = read_sniffed(source, reader, allow_calls=allow_calls, limits=limits, collect_only=collect_only,
                           strict_calls=strict_calls, weights=weights)
    return raw, reader.name


def read_sniffed(source: Source, reader: Any, *, allow_calls: Iterable[str] = (), limits: Limits = DEFAULT_LIMITS,
                 collect_only: bool = False, strict_calls: bool = False, weights: str = "master") -> RawRead:
    """Run ``reader`` (the one sniffing chose) on ``source`` with a fresh resource budget; see :func:`read_raw`.

    Raises:
        UnsafeFileError: the file names a known gadget (or, with ``strict_calls``, calls a name outside the allowlist).
        CorruptFileError: the file is malformed.
        LimitExceededError: the file asks for more work or memory than its budget.
    """
    try:
        size = source.size() if not os.path.isdir(source.name) else 0
    except (OSError, CkptMigrateError):
        size = 0
    options = ReadOptions(frozenset(allow_calls), limits, collect_only, strict_calls, Budget(limits, size), weights=weights)
    try:
        return reader.read(source, options)
    except CkptMigrateError as error:
        raise error.with_path(source.name)


def load(
    src: str | os.PathLike,
    *,
    select: str | None = None,
    ema: bool = False,
    allow_calls: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    hash_source: bool = True,
    strict_calls: bool = False,
    weights: str = "master",
    progress: ProgressReporter | None = None,
) -> Checkpoint:
    """Open any supported checkpoint without executing code from it.

    Calls of names outside the allowlist are kept as inert records and named in
    ``meta["warnings"]``; with ``strict_calls`` they refuse the file instead.

    Args:
        src: the checkpoint file or folder (never modified).
        select: the bundle key whose weights are taken (dotted path allowed).
        ema: take the EMA weights (``state_dict_ema``, ``model_ema``, ``ema``).
        allow_calls: calls accepted as inert records under ``strict_calls``.
        limits: the resource limits of the file's budget.
        hash_source: record the source's sha256 in ``meta["source_sha256"]`` (reads the whole file).
        strict_calls: refuse (exit 3) any call outside the allowlist.
        weights: DeepSpeed ZeRO folders: ``master`` (fp32 partitions) or ``module`` weights.
        progress: where to show the phases of long work (default: nothing is shown).

    Returns:
        A :class:`~ckpt_migrate.model.checkpoint.Checkpoint` with lazy tensor references.

    Raises:
        TypeError: an unknown keyword argument.
        UnsupportedFormatError: no reader recognises the file.
        UnsafeFileError: the file calls something outside the allowlist (exit 3).
        CorruptFileError: the file is malformed or truncated.
        SelectionError: no weights, or an ambiguous bundle without ``select``.
    """
    path = os.fspath(src)
    name = os.path.basename(os.path.normpath(path)) or path
    with reporting(progress):
        with phase(f"reading {name}", None):
            raw, reader_name = read_raw(path, allow_calls=allow_calls, limits=limits, strict_calls=strict_calls, weights=weights)
            try:
                found = extract_weights(raw, select=select, ema=ema)
            except CkptMigrateError as error:
                raise error.with_path(path)
        source = Source(path)
        with phase(f"hashing {name}", None) if hash_source else contextlib.nullcontext():
            digest = source.sha256() if hash_source else None
    meta = {
        "source": path,
        "source_sha256": digest,
        "reader": reader_name,
        "format": raw.format,
        "kind": found.kind,
        "tool": TOOL_LABEL,
        "selected": found.selected,
        "classes": found.classes,
        **raw.meta,
    }
    if found.note:
        meta["holds"] = found.note
    warning = unknown_calls_warning(raw.globals)
    if warning:
        meta["warnings"] = [*meta.get("warnings", []), warning]
    return Checkpoint(
        account=found.account,
        tensors=found.tensors,
        extras=found.extras,
        meta=meta,
        format=raw.format,
        kind=found.kind,
        globals=list(raw.globals.values()),
    )


def extract_weights(raw: RawRead, *, select: str | None = None, ema: bool = False) -> Extraction:
    """The weights and extras of what a reader found (a safetensors-like reader's tensors as they are).

    Raises:
        SelectionError: no weights, ``select``/``ema`` find nothing, or an ambiguous bundle.
    """
    if raw.tensors_only:
        return Extraction(raw.root, {}, "state_dict")
    refuse_partitioned_rank(raw.root)
    try:
        return extract(raw.root, select=select, ema=ema, fmt=raw.format)
    except SelectionError as error:
        if raw.format == "pickle" and error.message.startswith("no weights found"):
            error.message = f"a plain pickle, not a torch.save file, with {error.message}"
            error.args = (error.message,)
        raise


@dataclass
class ConvertResult:
    """What ``convert`` did: the writer's report plus the checkpoint's provenance."""

    src: str
    dst: str
    writer: str
    report: WriteReport
    checkpoint: Checkpoint = field(repr=False)

    @property
    def source_sha256(self) -> str | None:
        """The source's sha256, whether it was taken at load time or by the writer as it copied."""
        return self.report.source_sha256 or self.checkpoint.meta.get("source_sha256")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the document ``convert --json`` prints)."""
        return {
            "src": self.src,
            "dst": self.dst,
            "format": self.writer,
            "outputs": self.report.outputs,
            "tensors": self.report.tensors,
            "bytes": self.report.bytes,
            "verified": self.report.verified,
            "reader": self.checkpoint.meta.get("reader"),
            "kind": self.checkpoint.kind,
            "schemas": self.checkpoint.meta.get("schemas", []),
            "details": to_plain(self.report.details),
        }

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()


def prepare(checkpoint: Checkpoint, options: ConvertOptions) -> Checkpoint:
    """Apply the transforms of ``convert`` in order: schemas, dtype cast, optimizer stripping.

    Args:
        checkpoint: what a reader and the bundle selection produced.
        options: the conversion's options (``schemas``, ``strict_schemas``, ``dtype``, ``strip_optimizer``).

    Returns:
        A new checkpoint; the input is not modified.

    Raises:
        SchemaError: a schema is malformed or would collide keys.
    """
    import ckpt_migrate.transforms.pipeline as transforms

    if options.schemas:
        from ckpt_migrate.transforms.schemas import apply_to_checkpoint

        checkpoint = apply_to_checkpoint(checkpoint, options.schemas, strict=options.strict_schemas)
    if options.dtype and options.dtype != "keep":
        checkpoint = transforms.cast_floating(checkpoint, options.dtype)
    if options.strip_optimizer:
        checkpoint = transforms.strip_optimizer(checkpoint)
    return checkpoint


def convert(src: str | os.PathLike, dst: str | os.PathLike, options: ConvertOptions | None = None, *,
            progress: ProgressReporter | None = None, **kwargs: Any) -> ConvertResult:
    """Read ``src`` safely, transform it, write ``dst`` atomically and verify it.

    Args:
        src: the checkpoint file or folder to read (never modified).
        dst: the output path; its suffix picks the writer unless ``to`` is given.
        options: a :class:`~ckpt_migrate.options.ConvertOptions`; keyword arguments (the same
            field names: ``to``, ``select``, ``ema``, ``schemas``, ``dtype``, ``strip_optimizer``,
            ``max_shard_size``, ``arch``, ``verify``, ``force``, ...) override its fields.
        progress: where to show the phases of long work (reading, hashing, writing, casting,
            verifying, exporting); default: nothing is shown.

    Returns:
        A :class:`ConvertResult` with the writer's report and the checkpoint that was written.

    Raises:
        TypeError: an unknown keyword argument.
        CkptMigrateError: any subclass; its ``exit_code`` says how the CLI exits.
    """
    options = ConvertOptions.from_kwargs(options, **kwargs)
    src = os.fspath(src)
    if options.tag is not None:
        from ckpt_migrate.converters.readers.deepspeed import tagged_folder

        src = tagged_folder(src, options.tag)
    with reporting(progress):
        return _convert(src, os.fspath(dst), options)


def _convert(src: str, dst: str, options: ConvertOptions) -> ConvertResult:
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UsageError("the destination is the source; inputs are never modified", path=dst)
    to_folder = options.to in (None, "safetensors") and not options.max_shard_size and _shard_set_to_folder(src, dst)
    writer_name = options.to or ("safetensors" if options.max_shard_size or to_folder else registry.writer_for_destination(dst))
    if writer_name not in registry.list_writers():
        raise UsageError(f"--to {writer_name!r}: no such writer; registered: {', '.join(registry.list_writers())}")
    writer = registry.get_writer(writer_name)
    if not to_folder:
        check_destination(dst, options.force)
    hash_source = options.source_hash and not getattr(writer, "hashes_source", False)
    checkpoint = load(src, select=options.select, ema=options.ema, allow_calls=options.allow_calls, hash_source=hash_source,
                      strict_calls=options.strict_calls, weights=options.weights)
    checkpoint = prepare(checkpoint, options)
    check_nothing_lost(checkpoint, writer_name, src)
    check_output_size(checkpoint, with_extras=writer_name in ("normalized", "dcp"), limit=options.output_limit,
                      shares_storage=writer_name == "normalized" or (writer_name == "safetensors" and options.dedupe_shared))
    try:
        report = writer.write(checkpoint, dst, options)
    except CkptMigrateError as error:
        raise error.with_path(src)
    return ConvertResult(src, dst, writer_name, report, checkpoint)


WRITERS_KEEPING_EXTRAS = ("normalized",)
"""Writers that keep a bundle's other values (optimizer state…) beside the weights."""


def check_nothing_lost(checkpoint: Checkpoint, writer_name: str, src: str) -> None:
    """Refuse a conversion that would write no weights, or drop weight-bearing storages without a reason.

    Args:
        checkpoint: what is about to be written (its ``account`` made at load time).
        writer_name: the writer that will write it.
        src: the source, for messages.

    Raises:
        SelectionError: the file holds no model weights (what it holds is said) and the writer keeps only weights.
        CkptMigrateError: storages of the source would be left out with no stated reason.
    """
    keeps_extras = writer_name in WRITERS_KEEPING_EXTRAS
    if not checkpoint.tensors and not keeps_extras and (checkpoint.meta.get("holds") or writer_name == "safetensors"):
        raise SelectionError(checkpoint.meta.get("holds") or "no tensors to write", path=src)
    lost = checkpoint.account.unexplained if checkpoint.account is not None and not keeps_extras else []
    if lost:
        shown = ", ".join(f"{e.where} ({e.nbytes} bytes)" for e in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        raise CkptMigrateError(
            f"would leave out {len(lost)} weight-bearing storage(s) with no known reason: {shown}; nothing written "
            f"(choose the weights with --select KEY, or keep everything with --to normalized)", path=src)


def _shard_set_to_folder(src: str, dst: str) -> bool:
    """True when ``src`` is a pickled ``.bin`` shard set and ``dst`` names no format by its suffix (a folder)."""
    from ckpt_migrate.converters.readers.bin_shards import is_bin_shard_set

    if not is_bin_shard_set(src):
        return False
    try:
        registry.writer_for_destination(dst)
    except CkptMigrateError:
        return True
    return False


__all__ = ["ConvertResult", "InspectReport", "check_nothing_lost", "convert", "extract_weights", "inspect", "load", "prepare", "read_raw",
           "read_sniffed"]
