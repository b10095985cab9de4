"""Writer for safetensors files: streamed byte ranges when exact, torch otherwise; provenance metadata; bit-for-bit verification."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Mapping

from ckpt_migrate.io.atomic import atomic_path, remove_quietly
from ckpt_migrate.io.hashing import HashThread, SequentialSha256, file_sha256
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor, TensorRef
from ckpt_migrate.errors import CkptMigrateError, UnsupportedFormatError, UsageError, VerificationError
from ckpt_migrate.bundle.plain import plain_int, scalar, to_plain
from ckpt_migrate.model.equality import same_tensor
from ckpt_migrate.model.provenance import source_label
from ckpt_migrate.converters.base import WriteReport, Writer
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.converters.filenames import WRITER_SUFFIXES

SHA256_PLACEHOLDER = "0" * 64
EAGER_HASH_MAX_BYTES = 1 << 20
RESERVED_NAME = "__metadata__"
SCALAR_EXTRAS = ("epoch", "loss", "step", "global_step", "best_acc", "acc", "best_prec1", "best_loss")


def safetensors_metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """str → str metadata: provenance, the bundle's scalar extras as JSON, quantization parameters."""
    meta = checkpoint.meta
    out = {"format": "pt"}
    if source_label(meta):
        out["source"] = source_label(meta)
    for key in ("source_sha256", "reader", "tool", "kind"):
        if meta.get(key) is not None:
            out[key] = str(meta[key])
    if meta.get("schemas"):
        out["schemas"] = json.dumps(meta["schemas"])
    for key, value in checkpoint.extras.items():
        number = scalar(value)
        if number is not None and (key in SCALAR_EXTRAS or isinstance(number, (int, float))) and not isinstance(number, str):
            out[str(key)] = json.dumps(plain_int(number) if isinstance(number, int) else number)
    quantized = {name: _quantization_record(name, ref.quantization) for name, ref in checkpoint.tensors.items()
                 if getattr(ref, "quantization", None)}
    if quantized:
        out["quantization"] = json.dumps(to_plain(quantized))
    for key, value in (meta.get("safetensors_metadata") or {}).items():
        out.setdefault(key, value)
    if meta.get("aliases"):
        from ckpt_migrate.converters.writers.safetensors.hf_layout import alias_metadata

        out.update(alias_metadata(meta["aliases"]))
    return out


QUANTIZER_PARAM_NAMES = ("q_per_channel_scales", "q_per_channel_zero_points")


def _quantizer_tensor_name(name: str, index: int) -> str:
    label = QUANTIZER_PARAM_NAMES[index] if index < len(QUANTIZER_PARAM_NAMES) else f"q_param{index}"
    return f"{name}.{label}"


def _quantization_record(name: str, quantization: Mapping[str, Any]) -> dict[str, Any]:
    """A quantized tensor's parameters for the metadata; tensor-valued ones name the tensor that holds them."""
    params = [{"tensor": _quantizer_tensor_name(name, index)} if isinstance(param, (TensorRef, DerivedTensor)) else param
              for index, param in enumerate(quantization.get("params") or [])]
    return {**quantization, "params": params}


def with_quantizer_tensors(checkpoint: Checkpoint) -> Checkpoint:
    """Per-channel quantized tensors keep their scales and zero points as tensors beside them.

    safetensors stores a quantized tensor as its integer representation; per-tensor scales fit in
    the metadata as exact JSON numbers, but per-channel scales and zero points are tensors and would
    be lost as text. They are written as ``<name>.q_per_channel_scales`` and
    ``<name>.q_per_channel_zero_points`` (the names the TorchScript reader uses), and the metadata
    points at them.

    Raises:
        UnsupportedFormatError: such a name is already taken by another tensor.
    """
    added: "OrderedDict[str, Any]" = OrderedDict()
    for name, ref in checkpoint.tensors.items():
        added[name] = ref
        for index, param in enumerate((getattr(ref, "quantization", None) or {}).get("params") or []):
            if isinstance(param, (TensorRef, DerivedTensor)):
                companion = _quantizer_tensor_name(name, index)
                if companion in checkpoint.tensors:
                    raise UnsupportedFormatError(f"cannot write the quantizer parameters of {name!r}: {companion!r} is taken",
                                                 path=checkpoint.meta.get("source"))
                added[companion] = param
    if len(added) == len(checkpoint.tensors):
        return checkpoint
    return replace(checkpoint, tensors=added)


def check_representable(checkpoint: Checkpoint) -> None:
    """Refuse element types safetensors cannot store.

    Raises:
        UnsupportedFormatError: a tensor's dtype has no safetensors code, or a tensor is named ``__metadata__``.
    """
    if RESERVED_NAME in checkpoint.tensors:
        raise UnsupportedFormatError(
            f"a tensor is named {RESERVED_NAME!r}, which safetensors reserves for its metadata; rename it with a schema "
            f"(rename = {{ \"{RESERVED_NAME}\" = \"NEW_NAME\" }}) or use --to normalized",
            path=checkpoint.meta.get("source"),
        )
    for name, ref in checkpoint.tensors.items():
        if ref.dtype.safetensors is None and ref.dtype.kind != "quantized":
            raise UnsupportedFormatError(
                f"tensor {name!r} is {ref.dtype.name}, which safetensors cannot store; use --to normalized, or --dtype to cast",
                path=checkpoint.meta.get("source"),
            )


def verify_file(path: str, expected: dict[str, Any], source: str) -> None:
    """Read ``path`` back and compare every tensor with ``expected``.

    Raises:
        VerificationError: a key is missing or extra, or any tensor differs in dtype, shape or bits.
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        keys = set(handle.keys())
        if keys != set(expected):
            missing = sorted(set(expected) - keys)[:5]
            extra = sorted(keys - set(expected))[:5]
            raise VerificationError(f"written file has different keys (missing {missing}, extra {extra})", path=source)
        for name, tensor in expected.items():
            if not same_tensor(handle.get_tensor(name), tensor):
                raise VerificationError(f"tensor {name!r} read back from the output differs from the source", path=source)


def write_tensors(tensors: Mapping[str, Any], path: str, metadata: dict[str, str], *, verify: bool, source: str,
                  stream: bool | None = None, digest: "SourceDigest | None" = None, label: str | None = None) -> dict[str, Any]:
    """Write ``tensors`` as one safetensors file at ``path`` (not atomic: the caller owns the temporary name).

    Streams byte ranges without torch when that is exact (see :mod:`.stream`), else materializes
    with torch; ``stream=False`` forces torch, ``stream=True`` forbids the fallback. A one-pass
    ``digest`` is fed the source bytes as the stream copies them. Progress phases are named after
    ``label`` (default: the file name of ``path``). Returns how it was written:
    ``{"path": "stream"}`` or ``{"path": "general", "fallback": reason}``.

    Raises:
        VerificationError: the output does not read back equal to the source.
        UsageError: ``stream=True`` and the tensors cannot be streamed exactly.
        CorruptFileError: a source file ends before a tensor's bytes.
    """
    from ckpt_migrate.converters.writers.safetensors.plan import CannotStream, plan_stream
    from ckpt_migrate.converters.writers.safetensors.stream import write_stream

    from ckpt_migrate.reports.progress import phase

    label = label or os.path.basename(path)
    reason = "streaming disabled"
    if stream is not False:
        try:
            plan = plan_stream(tensors, metadata)
            with phase(f"writing {label}", plan.size - plan.data_start) as step:
                write_stream(plan, path, verify_source=source if verify else None,
                             hasher=digest.feed if digest is not None else None, on_piece=step.advance)
            return {"path": "stream"}
        except CannotStream as why:
            if stream:
                raise UsageError(f"cannot stream exactly: {why}", path=source) from None
            reason = str(why)
            remove_quietly(path)
    from safetensors.torch import save_file

    from ckpt_migrate.model.materialize import materialize_all

    with phase(f"materializing {len(tensors)} tensors", None):
        materialized = {name: tensor.contiguous().clone() for name, tensor in materialize_all(tensors).items()}
    with phase(f"writing {label}", None):
        save_file(materialized, path, metadata=metadata)
    if verify:
        with phase(f"verifying {label}", None):
            verify_file(path, materialized, source)
    return {"path": "general", "fallback": reason}


class SourceDigest:
    """The source file's sha256 for the metadata, when asked for, taken while the output is written.

    ``api.convert`` skips hashing at load time for writers that set ``hashes_source``; this writer
    takes the hash with ``source_hash=True`` (unless the checkpoint already carries it). With
    ``one_pass`` and a local source file, the hash is fed by the streaming copy from the very
    buffers it copies through (:class:`~ckpt_migrate.io.hashing.HashThread`, on another core) and
    only the bytes the copy never reads (headers, the pickle) are read for it; pass this object as
    ``write_tensors(digest=...)``. Otherwise (a folder, a remote source, ``one_pass=False``) a
    background thread reads the source again, overlapping the copy. Either way the metadata is
    written with :data:`SHA256_PLACEHOLDER` (same length) and patched in place once the hash is known.
    A source of at most :data:`EAGER_HASH_MAX_BYTES` is hashed at once instead: reading a small
    file twice from the page cache costs less than reopening, patching and re-parsing the output.
    """

    def __init__(self, checkpoint: Checkpoint, wanted: bool, one_pass: bool = False) -> None:
        self.checkpoint = checkpoint
        self.value: str | None = checkpoint.meta.get("source_sha256")
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.feed: HashThread | None = None
        source = checkpoint.meta.get("source")
        if not wanted or self.value is not None or not isinstance(source, str) or not source:
            return
        if one_pass and "://" not in source and os.path.isfile(source):
            try:
                if os.path.getsize(source) <= EAGER_HASH_MAX_BYTES:
                    self.value = file_sha256(source)
                    return
                self.feed = HashThread(SequentialSha256(source))
                return
            except OSError:
                self.feed = None
        self.thread = threading.Thread(target=self._run, args=(source,), name="ckpt-migrate-sha256", daemon=True)
        self.thread.start()

    def _run(self, source: str) -> None:
        from ckpt_migrate.io.source import Source

        try:
            self.value = Source(source).sha256()
        except BaseException as error:  # noqa: BLE001 - re-raised in the writer's thread by result()
            self.error = error

    @property
    def pending(self) -> bool:
        return self.thread is not None or self.feed is not None

    def metadata(self, checkpoint: Checkpoint) -> dict[str, str]:
        """The checkpoint's safetensors metadata, with the placeholder while the hash is pending."""
        metadata = safetensors_metadata(checkpoint)
        if self.pending:
            metadata["source_sha256"] = SHA256_PLACEHOLDER
        elif self.value is not None:
            metadata["source_sha256"] = self.value
        return metadata

    def result(self) -> str | None:
        """Wait for the hash and return it (None when it was not asked for).

        Raises:
            CkptMigrateError: the source could not be read again.
        """
        if self.feed is not None:
            try:
                self.value = self.feed.result()
            except BaseException as error:  # noqa: BLE001 - reported below as one line
                self.error = error
            self.feed = None
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            if isinstance(self.error, CkptMigrateError):
                raise self.error
            raise CkptMigrateError(f"cannot hash the source: {self.error}", path=self.checkpoint.meta.get("source"))
        return self.value

    def finish(self, paths: list[str], source: str) -> None:
        """Patch the real hash into each written file's metadata and check it reads back.

        Raises:
            VerificationError: the placeholder is not found exactly once, or the patched header does not read back.
        """
        if not self.pending:
            return
        value = self.result() or ""
        for path in paths:
            patch_metadata(path, "source_sha256", SHA256_PLACEHOLDER, value, source)

    def written(self, checkpoint: Checkpoint) -> dict[str, str]:
        """The metadata as written: the checkpoint's, with the hash once it is known (the checkpoint itself is not changed)."""
        metadata = safetensors_metadata(checkpoint)
        if self.value is not None:
            metadata["source_sha256"] = self.value
        return metadata

    def close(self) -> None:
        """Stop a one-pass hash that will not be finished (the write failed); idempotent."""
        if self.feed is not None:
            self.feed.close()
            self.feed = None


def patch_metadata(path: str, key: str, old: str, new: str, source: str) -> None:
    """Replace the metadata value ``old`` of ``key`` by ``new`` (same length) in place, then reparse the header.

    Raises:
        VerificationError: the value is not found exactly once, the lengths differ, or the header no longer reads back.
    """
    from ckpt_migrate.converters.readers.safetensors_file import parse_header

    needle = json.dumps(key).encode() + b":" + json.dumps(old).encode()
    replacement = json.dumps(new).encode()
    if len(replacement) != len(json.dumps(old).encode()):
        raise VerificationError(f"metadata {key!r} cannot be patched with a value of another length", path=source)
    with open(path, "r+b") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        header = handle.read(length)
        at = header.find(needle)
        if at < 0 or header.find(needle, at + 1) >= 0:
            raise VerificationError(f"metadata {key!r} placeholder not found once in the written header", path=source)
        handle.seek(8 + at + len(needle) - len(replacement))
        handle.write(replacement)
        handle.seek(0)
        raw = handle.read(8 + length)
    _, metadata, _ = parse_header(raw, os.path.getsize(path), path)
    if metadata.get(key) != new:
        raise VerificationError(f"metadata {key!r} does not read back after patching", path=source)


class SafetensorsWriter(Writer):
    """One ``.safetensors`` file, or a Hugging Face sharded folder with ``--max-shard-size``.

    Tied tensors are written under every name. The streaming path (no torch, constant memory) is
    used whenever it is exact; ``options.stream`` forces it (True) or the torch path (False).
    ``hashes_source``: ``load`` does not hash the source for this writer; ``options.source_hash``
    asks for the sha256 in the metadata, taken here while the output is written.
    """

    name = "safetensors"
    description = "safetensors file (or sharded folder with --max-shard-size)"
    suffixes = WRITER_SUFFIXES["safetensors"]
    requires = ("safetensors", "torch")
    hashes_source = True

    def write(self, checkpoint: Checkpoint, dst: str, options: ConvertOptions) -> WriteReport:
        from ckpt_migrate.converters.writers.safetensors import hf_layout

        check_representable(checkpoint)
        checkpoint = with_quantizer_tensors(checkpoint)
        if checkpoint.meta.get("hf_prefix") and not options.max_shard_size and not dst.lower().endswith(".safetensors"):
            return hf_layout.write_hf_folder(checkpoint, dst, options)
        if options.dedupe_shared or options.hf_layout:
            checkpoint, _ = hf_layout.drop_aliases(checkpoint, "transformers" if options.hf_layout else "safetensors")
        if options.max_shard_size:
            from ckpt_migrate.converters.writers.safetensors.sharded import write_sharded

            return write_sharded(checkpoint, dst, options)
        if dst.endswith(os.sep) or os.path.isdir(dst):
            raise UsageError("is a folder; a single safetensors file needs a file name (or pass --max-shard-size for shards)", path=dst)
        digest = SourceDigest(checkpoint, options.source_hash, one_pass=True)
        metadata = digest.metadata(checkpoint)
        source = str(checkpoint.meta.get("source", dst))
        try:
            with atomic_path(dst, options.force) as tmp:
                details = write_tensors(checkpoint.tensors, tmp, metadata, verify=options.verify, source=source,
                                        stream=options.stream, digest=digest, label=os.path.basename(dst))
                digest.finish([tmp], source)
        finally:
            digest.close()
        size = os.path.getsize(dst)
        return WriteReport([dst], len(checkpoint.tensors), size, options.verify, {"metadata": digest.written(checkpoint), **details},
                           source_sha256=digest.result())
