"""The warm-start report: how a checkpoint's weights would load into a target (``load_state_dict``'s view).

Plain data built from key → shape mappings; no torch is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

Shape = tuple[int, ...]


def listed(shape: Sequence[int]) -> list[int]:
    """A shape as a JSON list of ints."""
    return [int(s) for s in shape]

OPTIONAL_SUFFIX = "num_batches_tracked"


@dataclass
class CheckReport:
    """How a source state_dict loads into a target, key by key, in the target's order.

    ``matched`` keys have the same name and shape on both sides; ``missing`` are target keys the
    source lacks (``optional_missing``: BatchNorm ``num_batches_tracked`` buffers, which
    ``load_state_dict`` fills in); ``unexpected`` are source keys the target lacks; ``mismatched``
    holds ``(key, source shape, target shape)``.
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when ``load_state_dict(strict=True)`` would accept the source."""
        return bool(self.matched) and not (self.missing or self.unexpected or self.mismatched)

    @property
    def nothing_matched(self) -> bool:
        """True when not a single key fits by name and shape."""
        return not self.matched

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with counts and every key list."""
        return {
            "ok": self.ok,
            "counts": {"matched": len(self.matched), "missing": len(self.missing), "optional_missing": len(self.optional_missing),
                       "unexpected": len(self.unexpected), "mismatched": len(self.mismatched)},
            "matched": list(self.matched),
            "missing": list(self.missing),
            "optional_missing": list(self.optional_missing),
            "unexpected": list(self.unexpected),
            "mismatched": [{"key": k, "source": listed(a), "target": listed(b)} for k, a, b in self.mismatched],
        }


def check_report(source_shapes: Mapping[str, Sequence[int]], target_shapes: Mapping[str, Sequence[int]]) -> CheckReport:
    """Compare a source's key → shape mapping with a target's, as ``load_state_dict`` does."""
    source = {k: tuple(v) for k, v in source_shapes.items()}
    report = CheckReport()
    for key, shape in target_shapes.items():
        shape = tuple(shape)
        if key not in source:
            (report.optional_missing if key.rsplit(".", 1)[-1] == OPTIONAL_SUFFIX else report.missing).append(key)
        elif source[key] == shape:
            report.matched.append(key)
        else:
            report.mismatched.append((key, source[key], shape))
    report.unexpected = [key for key in source if key not in target_shapes]
    return report


@dataclass
class WarmStartCheck:
    """What :func:`check` found: the key report plus its context (target, schemas applied, hints).

    ``target`` is the resolved target's JSON summary (label, kind, key count, builder kwargs);
    ``suggestions`` names built-in or registered schemas that would make more keys match;
    ``strict`` says whether anything off (not only "nothing matched") counts as a failure.
    """

    source: str
    target: dict[str, Any]
    report: CheckReport
    schemas: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def failed(self) -> bool:
        """True when nothing matched, or (``strict``) when anything is off, schema warnings included."""
        return self.report.nothing_matched or (self.strict and (not self.report.ok or bool(self.warnings)))

    def problems(self) -> list[str]:
        """Counts of what is off, as short phrases (``1 missing``, ``2 shape-mismatched``)."""
        kinds = (("missing", self.report.missing), ("unexpected", self.report.unexpected),
                 ("shape-mismatched", self.report.mismatched), ("schema warning(s)", self.warnings))
        return [f"{len(items)} {label}" for label, items in kinds if items]

    def to_json(self) -> dict[str, Any]:
        """The same as :meth:`to_dict` (the older name)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """One JSON-ready document: source, target summary, schemas, warnings, hints and the key report."""
        return {"source": self.source, **self.target, "schemas": list(self.schemas), "warnings": list(self.warnings),
                "suggestions": list(self.suggestions), "strict": self.strict, "exit_code": int(self.failed),
                **self.report.to_dict()}


def check(src: str | Any, target: Any, *, schemas: Sequence[str] = (), arch_kwargs: Mapping[str, Any] | None = None,
          select: str | None = None, allow_calls: Sequence[str] = (), strict: bool = False) -> WarmStartCheck:
    """How the weights of checkpoint ``src`` would load into ``target``.

    ``schemas`` rename ``src``'s keys first (rule warnings are collected, not raised). Nothing is
    executed from either file; an architecture is built on the meta device.

    Args:
        src: the checkpoint file (or folder) whose weights would be loaded.
        target: an ``nn.Module`` instance, an ``nn.Module`` class (built with ``arch_kwargs`` on
            the meta device), an architecture SPEC (``vgg16``, ``package.module:Class``), or a
            checkpoint path whose keys are the reference.
        schemas: schema IDs or files applied to ``src``'s keys first.
        arch_kwargs: keyword arguments for an architecture target.
        select: which bundle entry of ``src`` holds the weights.
        allow_calls: calls accepted as inert records while reading.
        strict: anything off (not only "nothing matched") makes ``failed`` true.

    Returns:
        A :class:`WarmStartCheck`; ``failed`` says whether the CLI exits 1.

    Raises:
        TypeError: ``target`` is none of the accepted kinds.
        CkptMigrateError: ``src`` or a target checkpoint cannot be read, a schema is malformed or
            collides keys, or the architecture cannot be built (any subclass; exit code on the class).
    """
    from ckpt_migrate.api import load
    from ckpt_migrate.architectures.targets import resolve_target

    checkpoint = load(src, select=select, allow_calls=allow_calls, hash_source=False)
    if schemas:
        from ckpt_migrate.transforms.schemas import apply_to_checkpoint

        checkpoint = apply_to_checkpoint(checkpoint, schemas)
    resolved = resolve_target(os.fspath(target) if isinstance(target, os.PathLike) else target,
                              arch_kwargs=arch_kwargs, allow_calls=allow_calls)
    shapes = {k: tuple(ref.shape) for k, ref in checkpoint.tensors.items()}
    report = check_report(shapes, resolved.shapes)
    suggestions: list[str] = []
    if report.unexpected or report.mismatched:
        from ckpt_migrate.schemas import list_schemas

        suggestions = suggest_schemas(shapes, resolved.shapes, list_schemas())
    return WarmStartCheck(str(src), resolved.to_json(), report, list(checkpoint.meta.get("schemas", [])),
                          list(checkpoint.meta.get("warnings", [])), suggestions, strict)


class ShapeOnlyOps:
    """:class:`~ckpt_migrate.schemas.TensorOps` over bare shapes, to dry-run schemas on a key → shape mapping."""

    def shape(self, t: Shape) -> Shape:
        """``t`` itself."""
        return tuple(t)

    def reshape(self, t: Shape, shape: Shape) -> Shape:
        """The new shape."""
        return tuple(shape)

    def transpose(self, t: Shape, dims: Sequence[int]) -> Shape:
        """The shape permuted by ``dims``, a full permutation."""
        return tuple(t[int(d)] for d in dims)

    def split(self, t: Shape, dim: int, sizes: list[int]) -> list[Shape]:
        """One shape per part."""
        dim %= len(t)
        return [t[:dim] + (size,) + t[dim + 1:] for size in sizes]

    def concat(self, ts: list[Shape], dim: int) -> Shape:
        """The joined shape."""
        dim %= len(ts[0])
        return ts[0][:dim] + (sum(t[dim] for t in ts),) + ts[0][dim + 1:]


def suggest_schemas(source_shapes: Mapping[str, Sequence[int]], target_shapes: Mapping[str, Sequence[int]],
                    schemas: Sequence[Any]) -> list[str]:
    """Names of the ``schemas`` that, applied alone, make more source keys match the target; best first.

    A schema that fails on these keys (a collision, a shape that does not fit) is skipped.
    """
    from ckpt_migrate.errors import SchemaError
    from ckpt_migrate.schemas import apply_schemas, resolve_schemas

    baseline = len(check_report(source_shapes, target_shapes).matched)
    scored: list[tuple[int, str]] = []
    for schema in schemas:
        try:
            result = apply_schemas({k: tuple(v) for k, v in source_shapes.items()}, resolve_schemas([schema]), ShapeOnlyOps())
        except SchemaError:
            continue
        matched = len(check_report(result.tensors, target_shapes).matched)
        if matched > baseline:
            scored.append((-matched, schema.name))
    return [name for _, name in sorted(scored)]


