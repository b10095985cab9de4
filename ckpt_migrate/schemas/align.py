"""Align the keys of a source state_dict with a target's, and write the alignment as a schema.

Matching runs in phases, each on what the previous ones left: exact name; longest common dotted
suffix (at least the parameter name and its module's name, same shape, unique both ways); sibling
keys of a module already matched ("module"); then shape and order within module types: modules are
grouped by their parameter names and shapes, and matched in order when both sides hold the same
number of them. Matches by shape and order are guesses (modules of identical shapes paired in the
order they appear) and are reported as such; anything that several candidates fit equally (the
counts differ) is reported as ambiguous and left unmatched.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ckpt_migrate.errors import SchemaError
from ckpt_migrate.schemas.engine import ListTensorOps, apply_schemas
from ckpt_migrate.schemas.loader import loads_schema

Shape = tuple[int, ...]

HOW: dict[str, str] = {
    "exact": "same name",
    "suffix": "longest common dotted suffix, same shape",
    "module": "sibling of keys already matched in the same module",
    "shape": "the only module with these parameter names and shapes",
    "shape-order": "shape and order among modules with the same parameter names and shapes (a guess: review it)",
}
GUESSES = ("shape-order",)
"""Ways of matching that pair keys by position among equals rather than by anything unique to them."""

_SHORT = {"exact": "name", "suffix": "suffix", "module": "module", "shape": "shape", "shape-order": "shape and order"}


@dataclass
class Alignment:
    """The result of :func:`align_keys`.

    ``matches`` holds ``(source, target, how)`` in source order, ``how`` being a key of
    :data:`HOW`. ``ambiguous`` lists source keys that several targets fit equally, with their
    ``candidates``. ``shape_mismatches`` holds ``(key, source shape, target shape)`` for exact
    name matches whose shapes differ.
    """

    matches: list[tuple[str, str, str]] = field(default_factory=list)
    unmatched_source: list[str] = field(default_factory=list)
    unmatched_target: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    candidates: dict[str, list[str]] = field(default_factory=dict)
    shape_mismatches: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    source_shapes: dict[str, Shape] = field(default_factory=dict)
    target_shapes: dict[str, Shape] = field(default_factory=dict)

    @property
    def mapping(self) -> dict[str, str]:
        """Matched source key → target key."""
        return {src: dst for src, dst, _ in self.matches}

    @property
    def guessed(self) -> list[str]:
        """Source keys matched by shape and order only (modules of identical shapes paired in order): guesses to review."""
        return [src for src, _, how in self.matches if how in GUESSES]


def _split_key(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _join(module: str, leaf: str) -> str:
    return f"{module}.{leaf}" if module else leaf


class _Matcher:
    def __init__(self, source: Mapping[str, Sequence[int]], target: Mapping[str, Sequence[int]]) -> None:
        self.src = {k: tuple(v) for k, v in source.items()}
        self.tgt = {k: tuple(v) for k, v in target.items()}
        self.pairs: dict[str, tuple[str, str]] = {}
        self.used: set[str] = set()
        self.candidates: dict[str, list[str]] = defaultdict(list)

    def match(self, s: str, t: str, how: str) -> None:
        self.pairs[s] = (t, how)
        self.used.add(t)

    def left_source(self) -> list[str]:
        return [k for k in self.src if k not in self.pairs]

    def left_target(self) -> list[str]:
        return [k for k in self.tgt if k not in self.used]

    def exact(self) -> None:
        for key in self.src:
            if key in self.tgt:
                self.match(key, key, "exact")

    def suffix(self) -> None:
        index: dict[tuple[tuple[str, ...], Shape], list[str]] = defaultdict(list)
        for t in self.left_target():
            parts = t.split(".")
            for n in range(2, len(parts) + 1):
                index[(tuple(parts[-n:]), self.tgt[t])].append(t)
        by_length: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for s in self.left_source():
            parts, seen = s.split("."), set()
            for n in range(len(parts), 1, -1):
                for t in index.get((tuple(parts[-n:]), self.src[s]), ()):
                    if t not in seen:
                        seen.add(t)
                        by_length[n].append((s, t))
        blocked: set[str] = set()
        for n in sorted(by_length, reverse=True):
            live = [(s, t) for s, t in by_length[n] if not {s, t} & blocked and s not in self.pairs and t not in self.used]
            per_source = Counter(s for s, _ in live)
            per_target = Counter(t for _, t in live)
            for s, t in live:
                if per_source[s] == 1 and per_target[t] == 1:
                    self.match(s, t, "suffix")
                else:
                    self.candidates[s].append(t)
                    blocked.update((s, t))

    def complete_modules(self) -> None:
        targets: dict[str, set[str]] = defaultdict(set)
        for s, (t, _) in self.pairs.items():
            (sm, sl), (tm, tl) = _split_key(s), _split_key(t)
            targets[sm].add(tm if sl == tl else "\0")
        for s in self.left_source():
            module, leaf = _split_key(s)
            found = targets.get(module, set())
            if not module or len(found) != 1 or "\0" in found:
                continue
            t = _join(next(iter(found)), leaf)
            if t in self.tgt and t not in self.used and self.tgt[t] == self.src[s]:
                self.match(s, t, "module")

    @staticmethod
    def _modules(keys: list[str], shapes: Mapping[str, Shape]) -> "OrderedDict[str, list[tuple[str, Shape]]]":
        modules: OrderedDict[str, list[tuple[str, Shape]]] = OrderedDict()
        for key in keys:
            module, leaf = _split_key(key)
            modules.setdefault(module, []).append((leaf, shapes[key]))
        return modules

    def shape_order(self) -> None:
        groups: dict[tuple, tuple[list[str], list[str]]] = OrderedDict()
        for side, (keys, shapes) in enumerate(((self.left_source(), self.src), (self.left_target(), self.tgt))):
            for module, params in self._modules(keys, shapes).items():
                groups.setdefault(tuple(sorted(params)), ([], []))[side].append(module)
        for signature, (src_modules, tgt_modules) in groups.items():
            if not src_modules or not tgt_modules:
                continue
            leaves = [leaf for leaf, _ in signature]
            if len(src_modules) == len(tgt_modules):
                how = "shape" if len(src_modules) == 1 else "shape-order"
                for sm, tm in zip(src_modules, tgt_modules):
                    for leaf in leaves:
                        self.match(_join(sm, leaf), _join(tm, leaf), how)
                continue
            for sm in src_modules:
                for leaf in leaves:
                    self.candidates[_join(sm, leaf)].extend(_join(tm, leaf) for tm in tgt_modules)

    def result(self) -> Alignment:
        alignment = Alignment(source_shapes=dict(self.src), target_shapes=dict(self.tgt))
        for s in self.src:
            if s in self.pairs:
                t, how = self.pairs[s]
                alignment.matches.append((s, t, how))
                if self.src[s] != self.tgt[t]:
                    alignment.shape_mismatches.append((s, self.src[s], self.tgt[t]))
                continue
            alignment.unmatched_source.append(s)
            options = list(dict.fromkeys(t for t in self.candidates.get(s, ()) if t not in self.used))
            if options:
                alignment.ambiguous.append(s)
                alignment.candidates[s] = options
        alignment.unmatched_target = self.left_target()
        return alignment


def align_keys(source: Mapping[str, Sequence[int]], target: Mapping[str, Sequence[int]]) -> Alignment:
    """Match source keys to target keys by name, suffix, module, then shape and order.

    Both arguments map key → shape, in state_dict order.
    """
    matcher = _Matcher(source, target)
    matcher.exact()
    matcher.suffix()
    matcher.complete_modules()
    matcher.shape_order()
    matcher.complete_modules()
    return matcher.result()


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _comment(text: str) -> str:
    return "# " + text.replace("\r", " ").replace("\n", " ")


def _shape(shape: Shape | None) -> str:
    return "?" if shape is None else str(list(shape))


def _prefix_candidates(src: str, dst: str) -> list[tuple[str, str]]:
    a, b = src.split("."), dst.split(".")
    common = 0
    while common < min(len(a) - 1, len(b)) and a[-1 - common] == b[-1 - common]:
        common += 1
    found = []
    for n in range(common, 0, -1):
        head = b[:-n]
        found.append((".".join(a[:-n]) + ".", ".".join(head) + "." if head else ""))
    return found


def _plan(alignment: Alignment) -> tuple[str | None, list[tuple[str, str, list[tuple[str, str]]]], list[tuple[str, str, str]]]:
    """Return (add_prefix, prefix renames with their keys and hows, single renames)."""
    mapping = alignment.mapping
    source_keys = list(alignment.source_shapes) or [s for s, _, _ in alignment.matches] + alignment.unmatched_source
    renames = [(s, t, how) for s, t, how in alignment.matches if s != t]
    if not renames:
        return None, [], []
    heads = {t[: len(t) - len(s)] if t.endswith("." + s) else None for s, t in ((k, mapping.get(k)) for k in source_keys) if t}
    if len(heads) == 1 and None not in heads and len(mapping) == len(source_keys):
        return next(iter(heads)), [], []
    hows = {s: how for s, _, how in alignment.matches}
    under_prefix: dict[str, list[str]] = defaultdict(list)
    for key in source_keys:
        parts = key.split(".")
        for n in range(1, len(parts)):
            under_prefix[".".join(parts[:n]) + "."].append(key)
    covered: set[str] = set()
    prefixes: list[tuple[str, str, list[tuple[str, str]]]] = []
    singles: list[tuple[str, str, str]] = []
    for s, t, how in renames:
        if s in covered:
            continue
        for old, new in _prefix_candidates(s, t):
            under = under_prefix.get(old, [])
            if len(under) > 1 and all(mapping.get(k) == new + k[len(old):] for k in under):
                prefixes.append((old, new, [(k, hows[k]) for k in under]))
                covered.update(under)
                break
        else:
            singles.append((s, t, how))
            covered.add(s)
    return None, prefixes, singles


def _describe_keys(prefix: str, items: list[tuple[str, str]]) -> str:
    names = [k[len(prefix):] for k, _ in items]
    listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    kinds = sorted({how for _, how in items})
    return f"{len(names)} keys ({listed}): matched by {'; '.join(HOW.get(k, k) for k in kinds)}"


def _rules_text(alignment: Alignment, single_table: bool) -> list[str]:
    if single_table:
        add, prefixes, singles = None, [], [(s, t, how) for s, t, how in alignment.matches if s != t]
    else:
        add, prefixes, singles = _plan(alignment)
    lines: list[str] = []
    if add is not None:
        lines += ["[[rules]]", _comment(f"every source key sits under {add} in the target"), f"add_prefix = {_toml_string(add)}", ""]
    if prefixes:
        lines += ["[[rules]]", "[rules.rename_prefix]"]
        for old, new, items in prefixes:
            lines += [_comment(_describe_keys(old, items)), f"{_toml_string(old)} = {_toml_string(new)}"]
        lines.append("")
    if singles:
        lines += ["[[rules]]", "[rules.rename]"]
        for s, t, how in singles:
            lines += [_comment(f"matched by {HOW.get(how, how)}"), f"{_toml_string(s)} = {_toml_string(t)}"]
        lines.append("")
    return lines


def _report_lines(alignment: Alignment) -> list[str]:
    lines: list[str] = []
    src, tgt = alignment.source_shapes, alignment.target_shapes
    for key in alignment.unmatched_source:
        if key in alignment.candidates:
            options = ", ".join(alignment.candidates[key])
            lines.append(_comment(f"ambiguous: source {key} {_shape(src.get(key))} fits several targets equally: {options}"))
        else:
            lines.append(_comment(f"unmatched source {key} {_shape(src.get(key))}: no target with the same name, suffix or shape"))
    for key in alignment.unmatched_target:
        lines.append(_comment(f"unmatched target {key} {_shape(tgt.get(key))}: nothing in the source maps to it"))
    for key, a, b in alignment.shape_mismatches:
        lines.append(_comment(f"shape differs: {key} is {_shape(a)} in the source, {_shape(b)} in the target"))
    if lines:
        lines.insert(0, _comment("Could not match (review; add rules by hand if needed):"))
    return lines


def _render(alignment: Alignment, name: str, description: str, single_table: bool) -> str:
    counts = Counter(how for _, _, how in alignment.matches)
    summary = ", ".join(f"{n} by {_SHORT[how]}" for how, n in counts.items()) or "none"
    total = len(alignment.matches) + len(alignment.unmatched_source)
    lines = [
        _comment("Inferred by `ckpt-migrate schema infer` from a key alignment; review before use."),
        _comment(f"Matched {len(alignment.matches)} of {total} source keys ({summary}); "
                 f"{len(alignment.unmatched_target)} target key(s) unmatched, {len(alignment.ambiguous)} ambiguous."),
        *([_comment(f"{len(alignment.guessed)} of the matches are guesses by shape and order (modules of identical shapes "
                    f"paired in the order they appear): review them.")] if alignment.guessed else []),
        f"name = {_toml_string(name)}",
        f"description = {_toml_string(description)}",
        "",
    ]
    lines += _rules_text(alignment, single_table)
    lines += _report_lines(alignment)
    return "\n".join(lines).rstrip("\n") + "\n"


def _renames_correctly(text: str, alignment: Alignment) -> bool:
    source_keys = list(alignment.source_shapes) or [s for s, _, _ in alignment.matches] + alignment.unmatched_source
    mapping = alignment.mapping
    try:
        schema = loads_schema(text, "<inferred>")
        result = apply_schemas({k: None for k in source_keys}, [schema], ListTensorOps())
    except SchemaError:
        return False
    return list(result.tensors) == [mapping.get(k, k) for k in source_keys]


def schema_from_alignment(alignment: Alignment, name: str, *, description: str | None = None) -> str:
    """Write ``alignment`` as reviewable schema TOML text that renames matched keys to targets.

    Whole module prefixes become one ``rename_prefix`` entry, other keys ``rename`` entries;
    each entry has a comment saying how it was matched, and comment lines list unmatched and
    ambiguous keys.

    Raises:
        SchemaError: the alignment maps two source keys onto one target.
    """
    targets = Counter(t for _, t, _ in alignment.matches)
    doubled = [t for t, n in targets.items() if n > 1]
    if doubled:
        raise SchemaError(f"alignment maps several source keys onto {', '.join(map(repr, doubled))}")
    if description is None:
        description = (
            f"Inferred key alignment: {sum(1 for s, t, _ in alignment.matches if s != t)} key(s) renamed, "
            f"{len(alignment.unmatched_source)} source and {len(alignment.unmatched_target)} target key(s) unmatched"
        )
    text = _render(alignment, name, description, single_table=False)
    if not _renames_correctly(text, alignment):
        text = _render(alignment, name, description, single_table=True)
    return text
