"""Apply key-remapping schemas to a :class:`~ckpt_migrate.model.checkpoint.Checkpoint`.

The schema engine is torch-free and treats tensors as opaque; :class:`CheckpointTensorOps` gives it
the few value operations it needs over lazy references. A reshape of a contiguous
:class:`TensorRef`, and a transpose or split of any, are new views onto the same storage (no byte is
read); a reshape of a strided view and a concatenation become :class:`DerivedTensor`\\ s, computed
with torch only when a writer materializes them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Sequence

from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor, TensorRef
from ckpt_migrate.model.layout import contiguous_strides
from ckpt_migrate.errors import CkptMigrateError, SchemaError
from ckpt_migrate.schemas import Schema, apply_schemas, resolve_schemas

Tensor = TensorRef | DerivedTensor


def _refuse_per_channel(t: Tensor, operation: str) -> None:
    scheme = str((t.quantization or {}).get("scheme", ""))
    if "per_channel" in scheme:
        raise SchemaError(f"cannot {operation} a per-channel quantized tensor: its scales follow one dimension")


def _derived(dtype: Any, shape: Sequence[int], inputs: tuple[Any, ...], build: Callable[..., Any], description: str,
             quantization: dict[str, Any] | None) -> DerivedTensor:
    return DerivedTensor(dtype, tuple(int(s) for s in shape), inputs, build, description, quantization)


def _reshaper(shape: tuple[int, ...]) -> Callable[[Any], Any]:
    def build(tensor: Any) -> Any:
        return tensor.reshape(shape).contiguous()

    return build


def _permuter(dims: tuple[int, ...]) -> Callable[[Any], Any]:
    def build(tensor: Any) -> Any:
        return tensor.permute(*dims).contiguous()

    return build


def _narrower(dim: int, start: int, length: int) -> Callable[[Any], Any]:
    def build(tensor: Any) -> Any:
        return tensor.narrow(dim, start, length).contiguous()

    return build


def _concatenator(dim: int) -> Callable[..., Any]:
    def build(*tensors: Any) -> Any:
        import torch

        return torch.cat(tensors, dim=dim)

    return build


class CheckpointTensorOps:
    """:class:`~ckpt_migrate.schemas.TensorOps` over :class:`TensorRef` and :class:`DerivedTensor`, without torch."""

    def shape(self, t: Tensor) -> tuple[int, ...]:
        """The shape of ``t``."""
        return tuple(t.shape)

    def reshape(self, t: Tensor, shape: tuple[int, ...]) -> Tensor:
        """A view of a contiguous reference with ``shape``; a derived tensor otherwise.

        Raises:
            SchemaError: the element counts differ, or ``t`` is per-channel quantized.
        """
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != t.numel:
            raise SchemaError(f"cannot reshape {list(t.shape)} ({t.numel} elements) to {list(shape)}")
        if tuple(t.shape) == shape:
            return t
        _refuse_per_channel(t, "reshape")
        if isinstance(t, TensorRef) and t.is_contiguous():
            return t.with_view(shape, contiguous_strides(shape), t.offset)
        return _derived(t.dtype, shape, (t,), _reshaper(shape), f"reshape to {list(shape)}", t.quantization)

    def transpose(self, t: Tensor, dims: tuple[int, ...]) -> Tensor:
        """Permute the dimensions of ``t`` by ``dims``, a full permutation (the engine resolves swaps).

        Raises:
            SchemaError: ``dims`` is not a permutation of ``t``'s dims, or ``t`` is per-channel quantized.
        """
        perm = tuple(int(d) for d in dims)
        if sorted(perm) != list(range(len(t.shape))):
            raise SchemaError(f"dims {list(dims)} do not permute a tensor of {len(t.shape)} dimension(s)")
        if perm == tuple(range(len(t.shape))):
            return t
        _refuse_per_channel(t, "transpose")
        shape = tuple(t.shape[d] for d in perm)
        if isinstance(t, TensorRef):
            return t.with_view(shape, tuple(t.stride[d] for d in perm), t.offset)
        return _derived(t.dtype, shape, (t,), _permuter(perm), f"permute {list(perm)}", t.quantization)

    def split(self, t: Tensor, dim: int, sizes: list[int]) -> list[Tensor]:
        """Consecutive parts of ``t`` along ``dim`` with the given ``sizes``.

        Raises:
            SchemaError: the sizes do not sum to the dimension, or ``t`` is per-channel quantized.
        """
        ndim = len(t.shape)
        dim %= ndim
        if sum(sizes) != t.shape[dim]:
            raise SchemaError(f"sizes {list(sizes)} do not sum to dim {dim} of shape {list(t.shape)}")
        _refuse_per_channel(t, "split")
        parts: list[Tensor] = []
        start = 0
        for size in sizes:
            shape = t.shape[:dim] + (size,) + t.shape[dim + 1:]
            if isinstance(t, TensorRef):
                parts.append(t.with_view(shape, t.stride, t.offset + start * t.stride[dim]))
            else:
                parts.append(_derived(t.dtype, shape, (t,), _narrower(dim, start, size), f"narrow dim {dim}", t.quantization))
            start += size
        return parts

    def concat(self, ts: list[Tensor], dim: int) -> Tensor:
        """A derived tensor joining ``ts`` along ``dim``.

        Raises:
            SchemaError: the tensors differ in dtype or in shape outside ``dim``, or are quantized.
        """
        first = ts[0]
        dim %= len(first.shape)
        if any(t.dtype != first.dtype for t in ts):
            raise SchemaError(f"cannot concat tensors of different dtypes: {', '.join(t.dtype.name for t in ts)}")
        if any(t.quantization for t in ts):
            raise SchemaError("cannot concat quantized tensors: their quantizer parameters would not combine")
        rest = first.shape[:dim] + first.shape[dim + 1:]
        if any(len(t.shape) != len(first.shape) or t.shape[:dim] + t.shape[dim + 1:] != rest for t in ts):
            raise SchemaError(f"cannot concat shapes {[list(t.shape) for t in ts]} on dim {dim}")
        total = sum(t.shape[dim] for t in ts)
        shape = first.shape[:dim] + (total,) + first.shape[dim + 1:]
        return _derived(first.dtype, shape, tuple(ts), _concatenator(dim), f"concat {len(ts)} tensors on dim {dim}", None)


def apply_to_checkpoint(checkpoint: Checkpoint, schema_ids: Sequence[str | Schema], strict: bool = False) -> Checkpoint:
    """Rename (and reshape) ``checkpoint``'s tensors by the schemas named in ``schema_ids``, in order.

    ``extends`` is expanded (bases first). The returned checkpoint records the schemas applied in
    ``meta["schemas"]``, rule warnings in ``meta["warnings"]`` and per-rule reports in
    ``meta["schema_reports"]``; the input checkpoint is not modified.

    Raises:
        SchemaError: a schema cannot be found or is malformed (naming the schema file), two keys
            would collide, a shape does not fit, or (with ``strict``) a rule touches nothing; the
            error names the checkpoint's source file when the schema file is not the culprit.
    """
    source = str(checkpoint.meta.get("source") or "<checkpoint>")
    try:
        schemas = resolve_schemas(list(schema_ids))
        result = apply_schemas(checkpoint.tensors, schemas, CheckpointTensorOps(), strict=strict)
    except CkptMigrateError as error:
        raise error.with_path(source)
    meta = dict(checkpoint.meta)
    meta["schemas"] = list(meta.get("schemas") or []) + list(result.applied)
    meta["warnings"] = list(meta.get("warnings") or []) + list(result.warnings)
    meta["schema_reports"] = list(meta.get("schema_reports") or []) + [
        {"schema": r.schema, "rule": r.index, "kind": r.kind, "touched": len(r.touched), "notes": list(r.notes)}
        for r in result.reports
    ]
    return replace(checkpoint, tensors=OrderedDict(result.tensors), meta=meta)
