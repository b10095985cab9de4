"""The diff report: how two checkpoints differ in keys, dtypes, shapes and values.

The only numeric work (the max absolute difference of two tensors) materializes one pair at a time
through a small callable, so the report logic imports no torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ckpt_migrate.model.checkpoint import Checkpoint
from ckpt_migrate.reports.check import Shape, listed

def diff(a: str | os.PathLike, b: str | os.PathLike, *, select: str | None = None, allow_calls: Sequence[str] = ()) -> "DiffReport":
    """Compare the tensors of checkpoints ``a`` and ``b`` (any formats), one tensor pair in memory at a time.

    Args:
        a: the first checkpoint file or folder.
        b: the second checkpoint file or folder.
        select: the bundle key whose weights are compared, in both files.
        allow_calls: calls accepted as inert records while reading.

    Returns:
        A :class:`DiffReport`: keys only in A or B, renamed pairs, dtype, shape and value changes.

    Raises:
        TypeError: an unknown keyword argument.
        CkptMigrateError: either file cannot be read (naming it); any subclass, exit code on the class.
    """
    from ckpt_migrate.api import load

    first = load(a, select=select, allow_calls=allow_calls, hash_source=False)
    second = load(b, select=select, allow_calls=allow_calls, hash_source=False)
    report = diff_report(first, second)
    report.formats = (first.format, second.format)
    return report


@dataclass
class TensorDifference:
    """One common key's comparison: dtypes, shapes, and the max absolute difference when comparable.

    ``max_abs_diff`` is ``None`` when the shapes differ; ``nan`` when NaNs sit in different places.
    """

    key: str
    dtype_a: str
    dtype_b: str
    shape_a: Shape
    shape_b: Shape
    max_abs_diff: float | None = None

    @property
    def equal(self) -> bool:
        """Same dtype, same shape, same values."""
        return self.dtype_a == self.dtype_b and self.shape_a == self.shape_b and self.max_abs_diff == 0

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; a non-finite difference is written as a string (``"nan"``, ``"inf"``)."""
        diff = self.max_abs_diff
        return {"key": self.key, "dtype": [self.dtype_a, self.dtype_b], "shape": [listed(self.shape_a), listed(self.shape_b)],
                "max_abs_diff": diff if diff is None or math.isfinite(diff) else str(diff)}


@dataclass
class DiffReport:
    """Keys only in A, only in B, and every common key's :class:`TensorDifference`, in A's order.

    ``renamed`` pairs a key only in A with a key only in B holding the same dtype, shape and bytes
    (each unique on both sides): probably one tensor under a new name.
    """

    a: str
    b: str
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    common: list[TensorDifference] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    formats: tuple[str, ...] = ()

    @property
    def dtype_changes(self) -> list[TensorDifference]:
        return [d for d in self.common if d.dtype_a != d.dtype_b]

    @property
    def shape_changes(self) -> list[TensorDifference]:
        return [d for d in self.common if d.shape_a != d.shape_b]

    @property
    def value_changes(self) -> list[TensorDifference]:
        """Common tensors of the same shape whose values differ."""
        return [d for d in self.common if d.max_abs_diff is not None and d.max_abs_diff != 0]

    @property
    def identical(self) -> bool:
        """Same keys, dtypes, shapes and values."""
        return not (self.only_a or self.only_b) and all(d.equal for d in self.common)

    @property
    def max_abs_diff(self) -> float | None:
        """The largest difference over all comparable common tensors (``None`` when there are none)."""
        values = [d.max_abs_diff for d in self.common if d.max_abs_diff is not None]
        if not values:
            return None
        return float("nan") if any(math.isnan(v) for v in values) else max(values)

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: summary counts, key lists and the per-key comparisons that differ."""
        overall = self.max_abs_diff
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "counts": {"only_a": len(self.only_a), "only_b": len(self.only_b), "common": len(self.common),
                       "dtype_changes": len(self.dtype_changes), "shape_changes": len(self.shape_changes),
                       "value_changes": len(self.value_changes)},
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "renamed": [{"a": x, "b": y} for x, y in self.renamed],
            "dtype_changes": [d.to_dict() for d in self.dtype_changes],
            "shape_changes": [d.to_dict() for d in self.shape_changes],
            "value_changes": [d.to_dict() for d in self.value_changes],
            "max_abs_diff": overall if overall is None or math.isfinite(overall) else str(overall),
            "formats": list(self.formats),
        }


Comparer = Callable[[Any, Any], float]
Fingerprint = Callable[[Any], str]


def diff_report(a: Checkpoint, b: Checkpoint, *, compare: Comparer | None = None,
                fingerprint: Fingerprint | None = None) -> DiffReport:
    """Compare two checkpoints key by key; values are compared one tensor pair at a time.

    ``compare(ref_a, ref_b)`` returns the max absolute difference of two same-shape tensors; the
    default materializes both with torch, compares in a common type, and frees them before the next
    pair. ``fingerprint(ref)`` digests one tensor's bytes, to pair keys renamed between A and B.

    Raises:
        CkptMigrateError: a tensor's bytes cannot be read (naming the file).
    """
    compare = compare or max_abs_difference
    fingerprint = fingerprint or tensor_digest
    report = DiffReport(str(a.meta.get("source", "A")), str(b.meta.get("source", "B")))
    report.only_a = [k for k in a.tensors if k not in b.tensors]
    report.only_b = [k for k in b.tensors if k not in a.tensors]
    for key, ref_a in a.tensors.items():
        if key not in b.tensors:
            continue
        ref_b = b.tensors[key]
        entry = TensorDifference(key, ref_a.dtype.name, ref_b.dtype.name, tuple(ref_a.shape), tuple(ref_b.shape))
        if entry.shape_a == entry.shape_b:
            entry.max_abs_diff = float(compare(ref_a, ref_b))
        report.common.append(entry)
    report.renamed = pair_renamed(a.tensors, report.only_a, b.tensors, report.only_b, fingerprint)
    return report


def pair_renamed(a: Mapping[str, Any], only_a: Sequence[str], b: Mapping[str, Any], only_b: Sequence[str],
                 fingerprint: Fingerprint) -> list[tuple[str, str]]:
    """Pairs ``(key in A, key in B)`` of same dtype, shape and digest, unique on both sides, in A's order.

    Only tensors whose dtype and shape appear on both sides are digested.
    """
    def signature(ref: Any) -> tuple[str, Shape]:
        return ref.dtype.name, tuple(ref.shape)

    shared = {signature(a[k]) for k in only_a} & {signature(b[k]) for k in only_b}

    def digests(refs: Mapping[str, Any], keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        return {k: (*signature(refs[k]), fingerprint(refs[k])) for k in keys if signature(refs[k]) in shared}

    left, right = digests(a, only_a), digests(b, only_b)
    by_digest: dict[tuple[Any, ...], list[str]] = {}
    for key, digest in right.items():
        by_digest.setdefault(digest, []).append(key)
    count_left: dict[tuple[Any, ...], int] = {}
    for digest in left.values():
        count_left[digest] = count_left.get(digest, 0) + 1
    return [(key, by_digest[d][0]) for key, d in left.items() if count_left[d] == 1 and len(by_digest.get(d, [])) == 1]


def tensor_digest(ref: Any) -> str:
    """SHA-256 of a lazy tensor's values in row-major order (native byte order)."""
    import hashlib

    import torch

    tensor = ref.materialize().contiguous().reshape(-1)
    return hashlib.sha256(tensor.view(torch.uint8).numpy().tobytes()).hexdigest()


def max_abs_difference(ref_a: Any, ref_b: Any) -> float:
    """Max ``|a - b|`` of two same-shape lazy tensors (0.0 when bit-identical; NaNs in the same places match)."""
    import torch

    a, b = ref_a.materialize(), ref_b.materialize()
    if a.numel() == 0:
        return 0.0
    if a.dtype == b.dtype and torch.equal(a, b):
        return 0.0
    common = _common_type(a, b)
    a, b = a.to(common), b.to(common)
    if common.is_floating_point or common.is_complex:
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        if not torch.equal(nan_a, nan_b):
            return float("nan")
        both = ~nan_a
        a, b = a[both], b[both]
        if a.numel() == 0:
            return 0.0
    delta = (a - b).abs()
    if torch.isinf(a).any() or torch.isinf(b).any():
        same = a == b
        delta = torch.where(same, torch.zeros_like(delta), delta)
    return float(delta.max().item())


def _common_type(a: Any, b: Any) -> Any:
    import torch

    if a.is_complex() or b.is_complex():
        return torch.complex128
    if a.is_floating_point() or b.is_floating_point():
        return torch.float64
    return torch.int64
