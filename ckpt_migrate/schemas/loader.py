"""Find, read and validate schema files: built-in TOML files, user paths, and entry points.

A schema is identified by a path to a ``.toml`` file or by an ID: the stem of a built-in file in
this package, or the name of an entry point in the ``ckpt_migrate.schemas`` group. An entry point
loads to a TOML path, a :class:`Schema`, or a callable returning either.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ckpt_migrate.errors import SchemaError, UnknownSchemaError
from ckpt_migrate.schemas.engine import RULE_KINDS, Rule, Schema

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ENTRY_POINT_GROUP = "ckpt_migrate.schemas"
TOP_LEVEL_KEYS = ("name", "description", "extends", "rules")
_OPTIONS: dict[str, tuple[str, ...]] = {"strip_prefix": ("when",), "regex": ("replace",)}


@dataclass(frozen=True)
class _Origin:
    """Where an ID comes from: a built-in file or an entry point."""

    id: str
    label: str
    load: Callable[[], Schema]


class _Invalid(Exception):
    """A rule-level problem; the caller adds the file and rule index."""


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    for key in table:
        if key not in allowed:
            raise _Invalid(f"unknown key {key!r} in {what}{_suggest(key, allowed)}; expected {', '.join(allowed)}")


def _string(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _Invalid(f"{what} must be a {'' if empty else 'non-empty '}string, got {value!r}")
    return value


def _strings(value: Any, what: str, *, minimum: int = 1) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) < minimum:
        raise _Invalid(f"{what} must be a string or a list of at least {minimum} string(s), got {value!r}")
    return tuple(_string(item, what) for item in items)


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{what} must be an integer, got {value!r}")
    return value


def _integers(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid(f"{what} must be a non-empty list of integers, got {value!r}")
    return tuple(_integer(item, what) for item in value)


def _mapping(value: Any, what: str, *, empty_values: bool) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise _Invalid(f"{what} must be a non-empty table of old = new strings, got {value!r}")
    return {_string(k, f"{what} key"): _string(v, f"{what} value for {k!r}", empty=empty_values) for k, v in value.items()}


def _table(value: Any, kind: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{kind} must be a table such as {{ {', '.join(f'{k} = ...' for k in required)} }}, got {value!r}")
    _check_keys(value, tuple(required) + tuple(optional), kind)
    for key in required:
        if key not in value:
            raise _Invalid(f"{kind} needs {key!r}")
    return value


def _pattern(value: Any, what: str) -> str:
    patterns = _strings(value, what)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Invalid(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None
    return patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)


def _check_template(pattern: str, replace: str) -> None:
    compiled = re.compile(pattern)
    names = {index: name for name, index in compiled.groupindex.items()}
    dummy = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, compiled.groups + 1))
    try:
        re.sub(dummy, replace, "")
    except re.error as exc:
        raise _Invalid(f"replace {replace!r} does not fit regex {pattern!r}: {exc}") from None


def _parse_strip_prefix(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        _check_keys(value, ("common",), "strip_prefix")
        if "when" in table:
            raise _Invalid("strip_prefix = { common = N } always applies to every key; remove 'when'")
        common = _integer(value.get("common"), "strip_prefix.common")
        if common < 1:
            raise _Invalid(f"strip_prefix.common must be at least 1, got {common}")
        return {"prefixes": (), "when": "all", "common": common}
    when = table.get("when", "any")
    if when not in ("any", "all"):
        raise _Invalid(f"when must be 'any' or 'all', got {when!r}")
    return {"prefixes": _strings(value, "strip_prefix"), "when": when, "common": 0}


def _parse_regex(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    pattern = _pattern(value, "regex")
    if "replace" not in table:
        raise _Invalid("regex needs 'replace' (use drop = '...' to remove keys)")
    replace = _string(table["replace"], "replace", empty=True)
    _check_template(pattern, replace)
    return {"pattern": pattern, "replace": replace}


def _parse_rename(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    mapping = _mapping(value, "rename", empty_values=False)
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        if new in seen:
            raise _Invalid(f"rename maps both {seen[new]!r} and {old!r} to {new!r}")
        seen[new] = old
    return {"mapping": mapping}


def _parse_reshape(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    spec = _table(value, "reshape", ("key", "shape"))
    shape = _integers(spec["shape"], "reshape.shape")
    if any(d < -1 for d in shape) or shape.count(-1) > 1:
        raise _Invalid(f"reshape.shape {list(shape)} may hold sizes >= 0 and at most one -1 (inferred)")
    return {"key": _string(spec["key"], "reshape.key"), "shape": shape}


def _parse_transpose(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    spec = _table(value, "transpose", ("key", "dims"))
    dims = _integers(spec["dims"], "transpose.dims")
    if len(set(dims)) != len(dims):
        raise _Invalid(f"transpose.dims {list(dims)} repeats a dim")
    return {"key": _string(spec["key"], "transpose.key"), "dims": dims}


def _parse_split(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    spec = _table(value, "split", ("key", "into"), ("dim", "sizes"))
    into = _strings(spec["into"], "split.into", minimum=2)
    if len(set(into)) != len(into):
        raise _Invalid(f"split.into repeats a name: {list(into)}")
    sizes = None
    if "sizes" in spec:
        sizes = _integers(spec["sizes"], "split.sizes")
        if len(sizes) != len(into) or any(s < 0 for s in sizes):
            raise _Invalid(f"split.sizes {list(sizes)} must hold one size >= 0 per name in into ({len(into)})")
    return {"key": _string(spec["key"], "split.key"), "dim": _integer(spec.get("dim", 0), "split.dim"), "into": into, "sizes": sizes}


def _parse_concat(value: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    spec = _table(value, "concat", ("keys", "into"), ("dim",))
    keys = _strings(spec["keys"], "concat.keys", minimum=2)
    if len(set(keys)) != len(keys):
        raise _Invalid(f"concat.keys repeats a name: {list(keys)}")
    return {"keys": keys, "dim": _integer(spec.get("dim", 0), "concat.dim"), "into": _string(spec["into"], "concat.into")}


_PARSERS: dict[str, Callable[[Any, Mapping[str, Any]], dict[str, Any]]] = {
    "strip_prefix": _parse_strip_prefix,
    "add_prefix": lambda v, t: {"prefix": _string(v, "add_prefix")},
    "rename_prefix": lambda v, t: {"mapping": _mapping(v, "rename_prefix", empty_values=True)},
    "regex": _parse_regex,
    "rename": _parse_rename,
    "drop": lambda v, t: {"pattern": _pattern(v, "drop")},
    "keep": lambda v, t: {"pattern": _pattern(v, "keep")},
    "reshape": _parse_reshape,
    "transpose": _parse_transpose,
    "split": _parse_split,
    "concat": _parse_concat,
}


def _parse_rule(table: Any) -> Rule:
    if not isinstance(table, dict):
        raise _Invalid(f"must be a table ([[rules]]), got {table!r}")
    kinds = [key for key in table if key in RULE_KINDS]
    if len(kinds) > 1:
        raise _Invalid(f"holds several rule kinds ({', '.join(kinds)}); write one [[rules]] table per rule")
    if not kinds:
        unknown = next((key for key in table if not any(key in opts for opts in _OPTIONS.values())), None)
        if unknown is None:
            raise _Invalid(f"has no rule kind; expected one of {', '.join(RULE_KINDS)}")
        raise _Invalid(f"unknown rule kind {unknown!r}{_suggest(unknown, RULE_KINDS)}; expected one of {', '.join(RULE_KINDS)}")
    kind = kinds[0]
    _check_keys(table, (kind,) + _OPTIONS.get(kind, ()), f"a {kind} rule")
    return Rule(kind, _PARSERS[kind](table[kind], table))


def parse_schema(data: Mapping[str, Any], source: str, *, default_name: str | None = None) -> Schema:
    """Build a validated :class:`Schema` from a decoded TOML document.

    ``source`` names the file in errors and becomes :attr:`Schema.source`; ``default_name`` is
    used when the document has no ``name`` (the file stem by default).

    Raises:
        SchemaError: a top-level key or a rule is malformed; the message names ``source`` and
            the 1-based rule index.
    """
    def fail(message: str) -> SchemaError:
        return SchemaError(message, path=source)

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise fail(f"unknown top-level key {key!r}{_suggest(key, TOP_LEVEL_KEYS)}; expected {', '.join(TOP_LEVEL_KEYS)}")
    fallback = default_name or ("schema" if source.startswith("<") else Path(source).stem) or "schema"
    name = data.get("name", fallback)
    description = data.get("description", "")
    if not isinstance(name, str) or not name:
        raise fail(f"name must be a non-empty string, got {name!r}")
    if not isinstance(description, str):
        raise fail(f"description must be a string, got {description!r}")
    try:
        base = list(_strings(data["extends"], "extends")) if "extends" in data else []
    except _Invalid as exc:
        raise fail(str(exc)) from None
    tables = data.get("rules", [])
    if not isinstance(tables, list):
        raise fail("'rules' must be an array of tables written as [[rules]]")
    rules = []
    for index, table in enumerate(tables, start=1):
        try:
            rules.append(_parse_rule(table))
        except _Invalid as exc:
            raise fail(f"rule {index}: {exc}") from None
    return Schema(name=name, description=description, rules=rules, base=base, source=source)


def loads_schema(text: str, source: str = "<string>", *, default_name: str | None = None) -> Schema:
    """Parse schema TOML ``text``; ``source`` names it in errors.

    Raises:
        SchemaError: the text is not valid TOML or the schema is malformed.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"not valid TOML: {exc}", path=source) from None
    return parse_schema(data, source, default_name=default_name)


def _load_file(path: Path, source: str | None = None) -> Schema:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError("schema file not found; pass an existing .toml file or a schema ID (see `ckpt-migrate schema list`)", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file: {exc}", path=str(path)) from None
    schema = loads_schema(text, str(path), default_name=path.stem)
    if source is not None:
        schema.source = source
    return schema


def _builtin_origins() -> list[_Origin]:
    folder = resources.files(__package__)
    origins = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml") and entry.is_file():
            ident = entry.name[: -len(".toml")]
            origins.append(_Origin(ident, f"builtin:{ident}", lambda e=entry, i=ident: _load_builtin(e, i)))
    return origins


def _load_builtin(entry: Any, ident: str) -> Schema:
    schema = loads_schema(entry.read_text(encoding="utf-8"), str(entry), default_name=ident)
    schema.source = f"builtin:{ident}"
    return schema


def _entry_points() -> list[Any]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(ep: Any) -> Schema:
    label = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})"
    try:
        obj = ep.load()
        if callable(obj) and not isinstance(obj, Schema):
            obj = obj()
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"{label} could not be loaded: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, Schema):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return _load_file(Path(obj))
    raise SchemaError(f"{label} gave {type(obj).__name__}; expected a TOML path, a Schema, or a callable returning one")


def _origins() -> dict[str, _Origin]:
    found: dict[str, _Origin] = {}
    for origin in _builtin_origins():
        found[origin.id] = origin
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        label = f"entry point {ep.name} = {ep.value}"
        if ep.name in found:
            if found[ep.name].label == label:
                continue
            raise SchemaError(f"schema ID {ep.name!r} is defined twice: by {found[ep.name].label} and by {label}")
        found[ep.name] = _Origin(ep.name, label, lambda e=ep: _load_entry_point(e))
    return found


def available_ids() -> list[str]:
    """Return the IDs of the built-in schemas, then those of entry points.

    Raises:
        SchemaError: two sources define the same ID.
    """
    return list(_origins())


def _is_path(text: str) -> bool:
    return text.endswith(".toml") or "/" in text or os.sep in text


def load_schema(id_or_path: str | os.PathLike[str]) -> Schema:
    """Load one schema from a ``.toml`` path or by ID (built-in first, then entry points).

    Raises:
        SchemaError: the file is missing or malformed (the message names the file and the rule
            index), the ID is unknown (the message lists the available IDs), or two sources
            define the same ID.
    """
    text = os.fspath(id_or_path)
    if _is_path(text):
        return _load_file(Path(text))
    origins = _origins()
    if text in origins:
        return origins[text].load()
    if Path(text).is_file():
        return _load_file(Path(text))
    listing = ", ".join(origins) or "none"
    raise UnknownSchemaError(
        f"unknown schema {text!r}{_suggest(text, origins)}; available: {listing}; "
        "or pass the path of a .toml schema file"
    )


def list_schemas() -> list[Schema]:
    """Load and return every built-in schema, then every entry-point schema.

    Raises:
        SchemaError: a schema is malformed or two sources define the same ID.
    """
    return [origin.load() for origin in _origins().values()]


def _load_base(ident: str, parent: Schema) -> Schema:
    if _is_path(ident) and not os.path.isabs(ident) and not parent.source.startswith(("builtin:", "<")):
        candidate = Path(parent.source).parent / ident
        if candidate.is_file():
            return _load_file(candidate)
    return load_schema(ident)


def resolve_schemas(ids: Sequence[str | Schema]) -> list[Schema]:
    """Load the schemas named by ``ids`` and expand ``extends``: bases first, each schema once.

    A relative path in ``extends`` is looked up next to the file that names it first.

    Raises:
        SchemaError: a schema cannot be loaded, or ``extends`` forms a cycle.
    """
    ordered: list[Schema] = []
    done: set[str] = set()

    def visit(schema: Schema, chain: list[Schema]) -> None:
        key = schema.source if schema.source != "<memory>" else f"<memory>:{schema.name}"
        if key in done:
            return
        if any((s.source, s.name) == (schema.source, schema.name) for s in chain):
            names = " -> ".join(s.name for s in chain + [schema])
            raise SchemaError(f"schemas extend each other in a cycle: {names}")
        for base in schema.base:
            visit(_load_base(base, schema), chain + [schema])
        done.add(key)
        ordered.append(schema)

    for item in ids:
        visit(item if isinstance(item, Schema) else load_schema(item), [])
    return ordered
