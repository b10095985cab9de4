"""The Python API that mirrors the CLI: ``load``, ``convert``, ``inspect``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.io.atomic import check_destination
from ckpt_migrate.model.checkpoint import Checkpoint, GlobalVerdict
from ckpt_migrate.converters.base import RawRead, ReadOptions, WriteOptions, WriteReport
from ckpt_migrate.errors import CkptMigrateError, SelectionError, UsageError
from ckpt_migrate.bundle.extract import Extraction, extract
from ckpt_migrate.converters.readers.deepspeed import refuse_partitioned_rank
from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.io.source import Source
from ckpt_migrate.unpickler import DEFAULT_LIMITS, Limits

TOOL_VERSION = "0.1.0"


def read_raw(src: str, *, allow_calls: Iterable[str] = (), limits: Limits = DEFAULT_LIMITS, collect_only: bool = False) -> tuple[RawRead, str]:
    """Sniff ``src`` and run its reader; return what it found and the reader's name.

    Raises:
        UnsupportedFormatError: no reader recognises the file.
        UnsafeFileError: the file calls something outside the allowlist.
        CorruptFileError: the file is malformed.
    """
    source = Source(str(src))
    reader = registry.sniff(source)
    options = ReadOptions(frozenset(allow_calls), limits, collect_only)
    try:
        raw = reader.read(source, options)
    except CkptMigrateError as error:
        raise error.with_path(source.name)
    return raw, reader.name


def load(
    src: str | os.PathLike,
    *,
    select: str | None = None,
    ema: bool = False,
    allow_calls: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    hash_source: bool = True,
) -> Checkpoint:
    """Open any supported checkpoint without executing code from it.

    Raises:
        UnsupportedFormatError: no reader recognises the file.
        UnsafeFileError: the file calls something outside the allowlist (exit 3).
        CorruptFileError: the file is malformed or truncated.
        SelectionError: no weights, or an ambiguous bundle without ``select``.
    """
    path = os.fspath(src)
    raw, reader_name = read_raw(path, allow_calls=allow_calls, limits=limits)
    try:
        found = extract_weights(raw, select=select, ema=ema)
    except CkptMigrateError as error:
        raise error.with_path(path)
    source = Source(path)
    meta = {
        "source": path,
        "source_sha256": source.sha256() if hash_source else None,
        "reader": reader_name,
        "format": raw.format,
        "kind": found.kind,
        "tool": f"ckpt-migrate {TOOL_VERSION}",
        "selected": found.selected,
        "classes": found.classes,
        **raw.meta,
    }
    return Checkpoint(
        tensors=found.tensors,
        extras=found.extras,
        meta=meta,
        format=raw.format,
        kind=found.kind,
        globals=[GlobalVerdict(u.name, u.verdict, u.reason, u.offset) for u in raw.globals.values()],
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

    def to_json(self) -> dict[str, Any]:
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


def prepare(
    checkpoint: Checkpoint,
    *,
    schemas: Sequence[str] = (),
    dtype: str | None = None,
    strip_optimizer: bool = False,
    strict_schemas: bool = False,
) -> Checkpoint:
    """Apply the transforms of ``convert`` in order: schemas, dtype cast, optimizer stripping.

    Raises:
        SchemaError: a schema is malformed or would collide keys.
        UsageError: an unknown ``dtype``.
    """
    import ckpt_migrate.transforms.pipeline as transforms

    if schemas:
        from ckpt_migrate.transforms.schemas import apply_to_checkpoint

        checkpoint = apply_to_checkpoint(checkpoint, schemas, strict=strict_schemas)
    if dtype and dtype != "keep":
        checkpoint = transforms.cast_floating(checkpoint, dtype)
    if strip_optimizer:
        checkpoint = transforms.strip_optimizer(checkpoint)
    return checkpoint


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str | None = None,
    select: str | None = None,
    ema: bool = False,
    schemas: Sequence[str] = (),
    dtype: str | None = None,
    strip_optimizer: bool = False,
    allow_calls: Iterable[str] = (),
    verify: bool = True,
    force: bool = False,
    max_shard_size: str | None = None,
    strict_schemas: bool = False,
    **writer_options: Any,
) -> ConvertResult:
    """Read ``src`` safely, transform it, write ``dst`` atomically and verify it.

    Raises:
        CkptMigrateError: any subclass; its ``exit_code`` says how the CLI exits.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UsageError("the destination is the source; inputs are never modified", path=dst)
    if to:
        writer_name = to
    elif max_shard_size:
        writer_name = "safetensors"
    else:
        writer_name = registry.writer_for_destination(dst)
    writer = registry.get_writer(writer_name)
    check_destination(dst, force)
    checkpoint = load(src, select=select, ema=ema, allow_calls=allow_calls, hash_source=not getattr(writer, "hashes_source", False))
    checkpoint = prepare(checkpoint, schemas=schemas, dtype=dtype, strip_optimizer=strip_optimizer, strict_schemas=strict_schemas)
    if not checkpoint.tensors and writer_name == "safetensors":
        raise CkptMigrateError("no tensors to write", path=src)
    options = WriteOptions(verify=verify, force=force, max_shard_size=max_shard_size, extra=writer_options)
    try:
        report = writer.write(checkpoint, dst, options)
    except CkptMigrateError as error:
        raise error.with_path(src)
    return ConvertResult(src, dst, writer_name, report, checkpoint)


def inspect(src: str | os.PathLike, *, allow_calls: Iterable[str] = (), select: str | None = None, ema: bool = False) -> dict[str, Any]:
    """A JSON-able report: format, kind, tensors, extras, metadata and every global with its verdict.

    Refused globals do not stop the report (nothing is executed either way); ``verdict`` says
    ``refused`` and the CLI exits 3.

    Raises:
        UnsupportedFormatError: no reader recognises the file.
        CorruptFileError: the file is malformed.
    """
    path = os.fspath(src)
    raw, reader_name = read_raw(path, allow_calls=allow_calls, collect_only=True)
    globals_ = [{"name": u.name, "verdict": u.verdict, "reason": u.reason, "offset": u.offset} for u in raw.globals.values()]
    refused = [g["name"] for g in globals_ if g["verdict"] == "refused"]
    report: dict[str, Any] = {"file": path, "format": raw.format, "reader": reader_name, "globals": globals_,
                              "verdict": "refused" if refused else "ok", "meta": to_plain(raw.meta)}
    if refused:
        report.update(kind="refused", tensors=[], extras={})
        return report
    try:
        refuse_partitioned_rank(raw.root)
    except CkptMigrateError as error:
        raise error.with_path(path)
    try:
        found = extract_weights(raw, select=select, ema=ema)
    except CkptMigrateError as error:
        report.update(kind="no weights", error=error.message, tensors=[], extras={}, contents=to_plain(raw.root))
        return report
    tensors = [{"name": name, "dtype": ref.dtype.name, "shape": list(ref.shape), "bytes": ref.nbytes,
                **({"quantized": ref.quantization.get("scheme")} if ref.quantization else {})}
               for name, ref in found.tensors.items()]
    report.update(
        kind=found.kind,
        selected=found.selected,
        classes=found.classes,
        tensors=tensors,
        total_bytes=sum(t["bytes"] for t in tensors),
        extras=to_plain(found.extras),
        epoch=to_plain(found.extras.get("epoch")),
    )
    report["architecture"] = _guess_architecture(found.tensors)
    return report


def _guess_architecture(tensors: Any) -> Any:
    try:
        from ckpt_migrate.architectures.identify import identify
    except ImportError:
        return None
    try:
        found = identify({name: tuple(ref.shape) for name, ref in tensors.items()})
        return {**found.to_json(), "summary": found.describe()}
    except Exception as error:  # noqa: BLE001 - identification is advisory; a failure must not hide the report
        return {"error": str(error)}
