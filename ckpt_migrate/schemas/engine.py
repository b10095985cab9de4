"""Apply key-remapping schemas to an ordered name → tensor mapping, without importing torch.

Tensors are opaque to the engine: every operation on their values goes through a
:class:`TensorOps` object, so the same rules run on torch tensors, lazy references, or the
pure-Python :class:`ListTensor` used by the tests. Rules are validated when a schema is loaded
(see :mod:`ckpt_migrate.schemas.loader`); this module only applies them.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, NamedTuple, Protocol, Sequence, TypeVar

import regex

from ckpt_migrate.errors import SchemaError
from ckpt_migrate.model.layout import resolve_permutation
from ckpt_migrate.schemas.patterns import BoundedPattern, PatternTimeout

T = TypeVar("T")

RULE_KINDS: tuple[str, ...] = (
    "strip_prefix",
    "add_prefix",
    "rename_prefix",
    "regex",
    "rename",
    "drop",
    "keep",
    "reshape",
    "transpose",
    "split",
    "concat",
)


class TensorOps(Protocol[T]):
    """The few tensor operations the engine needs; an implementation knows the tensor type.

    ``transpose`` receives a full permutation of the dimensions from the engine (implementations
    may also accept a two-element swap). ``split`` receives sizes that sum to the dimension.
    """

    def shape(self, t: T) -> tuple[int, ...]: ...

    def reshape(self, t: T, shape: tuple[int, ...]) -> T: ...

    def transpose(self, t: T, dims: tuple[int, ...]) -> T: ...

    def split(self, t: T, dim: int, sizes: list[int]) -> list[T]: ...

    def concat(self, ts: list[T], dim: int) -> T: ...


@dataclass(frozen=True, eq=False)
class Rule:
    """One validated rule: its ``kind`` (one of :data:`RULE_KINDS`) and normalized ``params``.

    Params per kind: ``strip_prefix`` {prefixes, when, common}; ``add_prefix`` {prefix};
    ``rename_prefix``/``rename`` {mapping}; ``regex`` {pattern, replace}; ``drop``/``keep``
    {pattern}; ``reshape`` {key, shape}; ``transpose`` {key, dims}; ``split`` {key, dim, into,
    sizes}; ``concat`` {keys, dim, into}.

    Semantics: ``strip_prefix`` with ``when = "any"`` strips each listed prefix, in list order,
    from the keys that have it; with ``when = "all"`` it strips a listed prefix only when every key
    has it, repeatedly; ``common = N`` strips the first N dotted components when every key shares
    them. ``rename_prefix`` uses the longest matching prefix. ``regex`` replaces every match
    (``re.sub``); ``drop``/``keep`` use ``re.search``. A ``-1`` in a reshape shape is inferred.
    ``transpose`` dims are two dims to swap, or a full permutation.
    """

    kind: str
    params: Mapping[str, Any]

    def describe(self) -> str:
        """Return a one-line human-readable summary of the rule."""
        p = self.params
        if self.kind == "strip_prefix":
            if p.get("common"):
                return f"strip the first {p['common']} key component(s) when every key shares them"
            when = " when every key has it" if p.get("when") == "all" else ""
            return f"strip prefix {', '.join(map(repr, p['prefixes']))}{when}"
        if self.kind == "add_prefix":
            return f"add prefix {p['prefix']!r}"
        if self.kind in ("rename_prefix", "rename"):
            pairs = ", ".join(f"{a!r} -> {b!r}" for a, b in p["mapping"].items())
            return f"{self.kind.replace('_', ' ')} {pairs}"
        if self.kind == "regex":
            return f"regex {p['pattern']!r} -> {p['replace']!r}"
        if self.kind in ("drop", "keep"):
            return f"{self.kind} keys matching {p['pattern']!r}"
        if self.kind == "reshape":
            return f"reshape {p['key']!r} to {list(p['shape'])}"
        if self.kind == "transpose":
            return f"transpose {p['key']!r} with dims {list(p['dims'])}"
        if self.kind == "split":
            return f"split {p['key']!r} on dim {p['dim']} into {', '.join(map(repr, p['into']))}"
        if self.kind == "concat":
            return f"concat {', '.join(map(repr, p['keys']))} on dim {p['dim']} into {p['into']!r}"
        return self.kind


@dataclass
class Schema:
    """A named, ordered list of rules; ``base`` names the schemas it builds on (``extends``)."""

    name: str
    description: str = ""
    rules: list[Rule] = field(default_factory=list)
    base: list[str] = field(default_factory=list)
    source: str = "<memory>"


@dataclass
class RuleReport:
    """What one rule did: ``touched`` holds ``(old, new)`` pairs (``new`` is None when dropped).

    ``index`` is 1-based, counting ``[[rules]]`` tables in the schema. ``notes`` carries details
    such as shape changes.
    """

    schema: str
    index: int
    kind: str
    touched: list[tuple[str, str | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class SchemaResult(Generic[T]):
    """The renamed tensors, one report per rule, warnings, and the names of the schemas applied."""

    tensors: "OrderedDict[str, T]"
    reports: list[RuleReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)


class _Outcome(NamedTuple):
    state: "OrderedDict[str, Any]"
    touched: list[tuple[str, str | None]]
    notes: list[str]
    missing: list[str]


class _Context:
    """Names the schema and rule in every message about it."""

    def __init__(self, schema: Schema, index: int, kind: str) -> None:
        where = "" if schema.source.startswith(("builtin:", "<")) else f" ({schema.source})"
        self.prefix = f"schema {schema.name!r}{where}, rule {index} ({kind}): "

    def error(self, message: str) -> SchemaError:
        return SchemaError(self.prefix + message)


def apply_schemas(
    tensors: Mapping[str, T],
    schemas: Sequence[Schema],
    ops: TensorOps[T],
    *,
    strict: bool = False,
) -> SchemaResult[T]:
    """Apply ``schemas`` in order, each rule in order, to a copy of ``tensors``.

    Key order is preserved: renamed keys keep their position, split outputs take the place of
    their source, a concat output takes the place of its first listed input. ``extends`` is not
    expanded here: pass the list from :func:`~ckpt_migrate.schemas.loader.resolve_schemas`.

    Raises:
        SchemaError: two keys would get the same name, a key would become empty, a reshape or
            split does not fit the tensor's shape, a rule is unknown, or (with ``strict``) a rule
            touches nothing or names a key that is not there.
    """
    state: OrderedDict[str, T] = OrderedDict(tensors)
    result: SchemaResult[T] = SchemaResult(state)
    for schema in schemas:
        for index, rule in enumerate(schema.rules, start=1):
            ctx = _Context(schema, index, rule.kind)
            applier = _APPLIERS.get(rule.kind)
            if applier is None:
                raise ctx.error(f"unknown rule kind; expected one of {', '.join(RULE_KINDS)}")
            outcome = applier(state, rule.params, ops, ctx)
            state = outcome.state
            result.reports.append(RuleReport(schema.name, index, rule.kind, outcome.touched, outcome.notes))
            problems = []
            if not outcome.touched:
                problems.append("touched no key")
            if outcome.missing:
                problems.append("key(s) not found: " + ", ".join(map(repr, outcome.missing)))
            if problems:
                if strict:
                    raise ctx.error("; ".join(problems) + " (an error in strict mode)")
                result.warnings.append(ctx.prefix + "; ".join(problems))
        result.applied.append(schema.name)
    result.tensors = state
    return result


def _rename_keys(state: "OrderedDict[str, T]", new_name: Callable[[str], str], ctx: _Context) -> _Outcome:
    renamed: OrderedDict[str, T] = OrderedDict()
    origin: dict[str, str] = {}
    touched: list[tuple[str, str | None]] = []
    for old, value in state.items():
        new = new_name(old)
        if not new:
            raise ctx.error(f"{old!r} would become an empty key")
        if new in origin:
            raise ctx.error(f"{origin[new]!r} and {old!r} would both become {new!r}")
        origin[new] = old
        renamed[new] = value
        if new != old:
            touched.append((old, new))
    return _Outcome(renamed, touched, [], [])


def _strip_prefix(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    if p.get("common"):
        n = p["common"]
        heads = {tuple(k.split(".")[:n]) if k.count(".") >= n else None for k in state}
        if len(heads) != 1 or None in heads:
            return _Outcome(state, [], [], [])
        cut = len(".".join(next(iter(heads)))) + 1
        return _rename_keys(state, lambda k: k[cut:], ctx)
    prefixes: Sequence[str] = p["prefixes"]
    if p.get("when") == "all":
        current = {k: k for k in state}
        changed = True
        while changed and current:
            changed = False
            for prefix in prefixes:
                if all(v.startswith(prefix) for v in current.values()):
                    current = {k: v[len(prefix):] for k, v in current.items()}
                    changed = True
        return _rename_keys(state, current.__getitem__, ctx)

    def strip(key: str) -> str:
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        return key

    return _rename_keys(state, strip, ctx)


def _add_prefix(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    return _rename_keys(state, lambda k: p["prefix"] + k, ctx)


def _rename_prefix(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    by_length = sorted(p["mapping"].items(), key=lambda item: len(item[0]), reverse=True)

    def rename(key: str) -> str:
        for old, new in by_length:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return _rename_keys(state, rename, ctx)


def _regex(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    pattern = BoundedPattern(p["pattern"])
    try:
        return _rename_keys(state, lambda k: pattern.sub(p["replace"], k), ctx)
    except (re.error, regex.error) as exc:
        raise ctx.error(f"replace {p['replace']!r} is invalid: {exc}") from None
    except PatternTimeout as exc:
        raise ctx.error(str(exc)) from None


def _rename(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    mapping: Mapping[str, str] = p["mapping"]
    outcome = _rename_keys(state, lambda k: mapping.get(k, k), ctx)
    return outcome._replace(missing=[k for k in mapping if k not in state])


def _filter(state: "OrderedDict[str, T]", keep: Callable[[str], bool], ctx: _Context) -> _Outcome:
    kept = OrderedDict((k, v) for k, v in state.items() if keep(k))
    if state and not kept:
        raise ctx.error(f"would drop every key ({len(state)}); check the pattern")
    return _Outcome(kept, [(k, None) for k in state if k not in kept], [], [])


def _drop(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    pattern = BoundedPattern(p["pattern"])
    try:
        return _filter(state, lambda k: pattern.search(k) is None, ctx)
    except PatternTimeout as exc:
        raise ctx.error(str(exc)) from None


def _keep(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    pattern = BoundedPattern(p["pattern"])
    try:
        return _filter(state, lambda k: pattern.search(k) is not None, ctx)
    except PatternTimeout as exc:
        raise ctx.error(str(exc)) from None


def _resolve_shape(key: str, old: tuple[int, ...], wanted: Sequence[int], ctx: _Context) -> tuple[int, ...]:
    numel = math.prod(old)
    shape = list(wanted)
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or numel % known:
            raise ctx.error(f"cannot reshape {key!r} from {list(old)} ({numel} elements) to {list(wanted)}")
        shape[shape.index(-1)] = numel // known
    if math.prod(shape) != numel:
        raise ctx.error(
            f"cannot reshape {key!r} from {list(old)} ({numel} elements) "
            f"to {list(wanted)} ({math.prod(shape)} elements)"
        )
    return tuple(shape)


def _replace_value(state: "OrderedDict[str, T]", key: str, value: T) -> "OrderedDict[str, T]":
    out = OrderedDict(state)
    out[key] = value
    return out


def _reshape(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    key = p["key"]
    if key not in state:
        return _Outcome(state, [], [], [key])
    old = tuple(ops.shape(state[key]))
    new = _resolve_shape(key, old, p["shape"], ctx)
    out = _replace_value(state, key, ops.reshape(state[key], new))
    return _Outcome(out, [(key, key)], [f"{key}: {list(old)} -> {list(new)}"], [])


def _normalize_dim(dim: int, ndim: int, key: str, ctx: _Context) -> int:
    if not -ndim <= dim < ndim:
        raise ctx.error(f"dim {dim} is out of range for {key!r} with {ndim} dimension(s)")
    return dim % ndim


def _permutation(key: str, ndim: int, dims: Sequence[int], ctx: _Context) -> tuple[int, ...]:
    if len(dims) in (2, ndim):
        for dim in dims:
            _normalize_dim(dim, ndim, key, ctx)
    perm = resolve_permutation(ndim, dims)
    if perm is None:
        raise ctx.error(
            f"dims {list(dims)} are neither two dims to swap nor a permutation of the "
            f"{ndim} dims of {key!r}"
        )
    return perm


def _transpose(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    key = p["key"]
    if key not in state:
        return _Outcome(state, [], [], [key])
    old = tuple(ops.shape(state[key]))
    perm = _permutation(key, len(old), p["dims"], ctx)
    value = ops.transpose(state[key], perm)
    new = [old[d] for d in perm]
    return _Outcome(_replace_value(state, key, value), [(key, key)], [f"{key}: {list(old)} -> {new}"], [])


def _split(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    key, into = p["key"], list(p["into"])
    if key not in state:
        return _Outcome(state, [], [], [key])
    shape = tuple(ops.shape(state[key]))
    if not shape:
        raise ctx.error(f"cannot split {key!r}: it is a scalar")
    dim = _normalize_dim(p["dim"], len(shape), key, ctx)
    size = shape[dim]
    if p.get("sizes") is None:
        if size % len(into):
            raise ctx.error(f"cannot split dim {dim} of {key!r} (shape {list(shape)}) into {len(into)} equal parts")
        sizes = [size // len(into)] * len(into)
    else:
        sizes = list(p["sizes"])
        if sum(sizes) != size:
            raise ctx.error(f"sizes {sizes} sum to {sum(sizes)}, but dim {dim} of {key!r} is {size} (shape {list(shape)})")
    clash = [name for name in into if name in state and name != key]
    if clash:
        raise ctx.error(f"split outputs already exist: {', '.join(map(repr, clash))}")
    parts = ops.split(state[key], dim, sizes)
    out: OrderedDict[str, T] = OrderedDict()
    for k, v in state.items():
        if k == key:
            out.update(zip(into, parts))
        else:
            out[k] = v
    return _Outcome(out, [(key, name) for name in into], [f"{key}: {list(shape)} split on dim {dim} into {sizes}"], [])


def _concat(state: "OrderedDict[str, T]", p: Mapping[str, Any], ops: TensorOps[T], ctx: _Context) -> _Outcome:
    keys, into = list(p["keys"]), p["into"]
    missing = [k for k in keys if k not in state]
    if len(missing) == len(keys):
        return _Outcome(state, [], [], missing)
    if missing:
        raise ctx.error(f"cannot concat: input(s) {', '.join(map(repr, missing))} not found")
    shapes = [tuple(ops.shape(state[k])) for k in keys]
    ndim = len(shapes[0])
    if ndim == 0:
        raise ctx.error(f"cannot concat scalars ({keys[0]!r})")
    dim = _normalize_dim(p["dim"], ndim, keys[0], ctx)
    ref = shapes[0][:dim] + shapes[0][dim + 1:]
    for k, s in zip(keys, shapes):
        if len(s) != ndim or s[:dim] + s[dim + 1:] != ref:
            listing = ", ".join(f"{name!r} {list(shape)}" for name, shape in zip(keys, shapes))
            raise ctx.error(f"shapes differ outside dim {dim}: {listing}")
    if into in state and into not in keys:
        raise ctx.error(f"concat output {into!r} already exists")
    value = ops.concat([state[k] for k in keys], dim)
    out: OrderedDict[str, T] = OrderedDict()
    for k, v in state.items():
        if k == keys[0]:
            out[into] = value
        elif k not in keys:
            out[k] = v
    total = sum(s[dim] for s in shapes)
    new_shape = list(shapes[0][:dim]) + [total] + list(shapes[0][dim + 1:])
    return _Outcome(out, [(k, into) for k in keys], [f"{into}: {new_shape} from {len(keys)} tensors on dim {dim}"], [])


_APPLIERS: dict[str, Callable[..., _Outcome]] = {
    "strip_prefix": _strip_prefix,
    "add_prefix": _add_prefix,
    "rename_prefix": _rename_prefix,
    "regex": _regex,
    "rename": _rename,
    "drop": _drop,
    "keep": _keep,
    "reshape": _reshape,
    "transpose": _transpose,
    "split": _split,
    "concat": _concat,
}


@dataclass(frozen=True)
class ListTensor:
    """A tiny row-major tensor of Python values: a flat ``data`` tuple and a ``shape``.

    Raises:
        ValueError: ``data`` does not hold exactly ``prod(shape)`` values.
    """

    data: tuple[Any, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(self.data))
        object.__setattr__(self, "shape", tuple(self.shape))
        if len(self.data) != math.prod(self.shape):
            raise ValueError(f"{len(self.data)} values do not fill shape {list(self.shape)}")

    @classmethod
    def arange(cls, shape: Sequence[int], start: int = 0) -> "ListTensor":
        """Return a tensor of ``shape`` holding ``start, start + 1, ...`` in row-major order."""
        n = math.prod(shape)
        return cls(tuple(range(start, start + n)), tuple(shape))

    def tolist(self) -> Any:
        """Return the values as nested lists (the bare value for a scalar)."""
        def nest(data: Sequence[Any], shape: tuple[int, ...]) -> Any:
            if not shape:
                return data[0]
            step = math.prod(shape[1:])
            return [nest(data[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]

        return nest(self.data, self.shape)


class ListTensorOps:
    """Reference :class:`TensorOps` over :class:`ListTensor`, for tests and plain-data callers."""

    def shape(self, t: ListTensor) -> tuple[int, ...]:
        """Return the shape of ``t``."""
        return t.shape

    def reshape(self, t: ListTensor, shape: tuple[int, ...]) -> ListTensor:
        """Return ``t`` viewed with ``shape``.

        Raises:
            ValueError: the element counts differ.
        """
        return ListTensor(t.data, tuple(shape))

    def transpose(self, t: ListTensor, dims: tuple[int, ...]) -> ListTensor:
        """Permute the dimensions of ``t`` by ``dims``, a full permutation (:func:`_permutation` resolves swaps).

        Raises:
            ValueError: ``dims`` is not a permutation of ``t``'s dims.
        """
        ndim = len(t.shape)
        perm = [int(d) for d in dims]
        if sorted(perm) != list(range(ndim)):
            raise ValueError(f"dims {list(dims)} do not permute shape {list(t.shape)}")
        strides = [math.prod(t.shape[i + 1:]) for i in range(ndim)]
        new_shape = tuple(t.shape[d] for d in perm)
        data = tuple(
            t.data[sum(i * strides[d] for i, d in zip(index, perm))]
            for index in itertools.product(*(range(n) for n in new_shape))
        )
        return ListTensor(data, new_shape)

    def split(self, t: ListTensor, dim: int, sizes: list[int]) -> list[ListTensor]:
        """Split ``t`` along ``dim`` into consecutive parts of the given ``sizes``.

        Raises:
            ValueError: the sizes do not sum to the dimension.
        """
        dim %= len(t.shape)
        length = t.shape[dim]
        if sum(sizes) != length:
            raise ValueError(f"sizes {sizes} do not sum to {length}")
        outer, inner = math.prod(t.shape[:dim]), math.prod(t.shape[dim + 1:])
        parts, start = [], 0
        for size in sizes:
            data: list[Any] = []
            for o in range(outer):
                base = (o * length + start) * inner
                data.extend(t.data[base:base + size * inner])
            parts.append(ListTensor(tuple(data), t.shape[:dim] + (size,) + t.shape[dim + 1:]))
            start += size
        return parts

    def concat(self, ts: list[ListTensor], dim: int) -> ListTensor:
        """Concatenate ``ts`` along ``dim``.

        Raises:
            ValueError: the shapes differ outside ``dim``.
        """
        first = ts[0].shape
        dim %= len(first)
        for t in ts:
            if len(t.shape) != len(first) or t.shape[:dim] + t.shape[dim + 1:] != first[:dim] + first[dim + 1:]:
                raise ValueError(f"cannot concat shapes {[list(x.shape) for x in ts]} on dim {dim}")
        outer, inner = math.prod(first[:dim]), math.prod(first[dim + 1:])
        data: list[Any] = []
        for o in range(outer):
            for t in ts:
                chunk = t.shape[dim] * inner
                data.extend(t.data[o * chunk:(o + 1) * chunk])
        total = sum(t.shape[dim] for t in ts)
        return ListTensor(tuple(data), first[:dim] + (total,) + first[dim + 1:])
