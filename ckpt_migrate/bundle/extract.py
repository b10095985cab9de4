"""From a reader's top object to tensors and extras: state_dicts, whole models, bundles, Lightning.

Torch-free. Whole-model stubs are walked as ``nn.Module.state_dict()`` walks real modules:
parameters, then persistent buffers, then submodules in order. Bundles are unwrapped by probing
known keys in a fixed order (as timm does); an ambiguous bundle is an error listing candidates.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ckpt_migrate.model.checkpoint import TensorRef
from ckpt_migrate.errors import LimitExceededError, SelectionError
from ckpt_migrate.bundle.keys import EMA_KEYS, MODEL_KEYS, NON_MODEL_KEYS
from ckpt_migrate.bundle.account import OTHER_SET, account, reason_for_key
from ckpt_migrate.bundle.classify import arrays_as_tensors, classify
from ckpt_migrate.model.scripted import ScriptedState
from ckpt_migrate.unpickler.stubs import StubObject, describe_value

MAX_DEPTH = 300
MAX_NAMES = 1_000_000


@dataclass
class Extraction:
    """The weights chosen from a file, what else it held, and how they were found."""

    tensors: "OrderedDict[str, TensorRef]"
    extras: dict[str, Any]
    kind: str
    selected: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    account: Any = None
    note: str = ""


def is_module_stub(value: Any) -> bool:
    """True for a stub of an ``nn.Module`` subclass (it has ``_modules`` and ``_parameters``)."""
    if not isinstance(value, StubObject):
        return False
    attrs = value.attributes
    return "_parameters" in attrs and "_modules" in attrs


def is_torchscript_stub(value: Any) -> bool:
    return isinstance(value, StubObject) and value.class_name.startswith("__torch__.")


def _as_mapping(value: Any) -> dict | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, StubObject) and value.items:
        return value.items
    return None


class _Walk:
    """One walk over a reader's objects: each shared container visited once, its names reused by reference.

    A memo DAG (the same list reached through 2^40 paths) costs one visit per object; the names it
    expands to are counted before they are built, and more than ``MAX_NAMES`` is an error.
    """

    def __init__(self, classes: list[str] | None) -> None:
        self.classes = classes if classes is not None else []
        self.names: dict[int, tuple[Any, list[tuple[str, TensorRef]]]] = {}
        self.counts: dict[int, tuple[Any, int]] = {}
        self.active: set[int] = set()

    def count(self, value: Any, mode: str, depth: int = 0) -> int:
        if isinstance(value, TensorRef):
            return 1
        key = id(value)
        known = self.counts.get(key)
        if known is not None and known[0] is value:
            return known[1]
        if depth > MAX_DEPTH or key in self.active:
            raise LimitExceededError(f"containers nested more than {MAX_DEPTH} deep (or holding themselves)")
        self.active.add(key)
        try:
            total = sum(self.count(child, child_mode, depth + 1) for _, child, child_mode in self.children(value, mode))
        finally:
            self.active.discard(key)
        if total > MAX_NAMES:
            raise LimitExceededError(f"shared containers expand to more than {MAX_NAMES:,} tensor names")
        self.counts[key] = (value, total)
        return total

    def collect(self, value: Any, mode: str) -> list[tuple[str, TensorRef]]:
        if isinstance(value, TensorRef):
            return [("", value)]
        known = self.names.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        walked_as_module = mode in ("module", "torchscript") or (mode == "any" and (is_module_stub(value) or is_torchscript_stub(value)))
        if walked_as_module and value.class_name not in self.classes:
            self.classes.append(value.class_name)
        out: list[tuple[str, TensorRef]] = []
        for name, child, child_mode in self.children(value, mode):
            for inner, ref in self.collect(child, child_mode):
                out.append((f"{name}.{inner}" if inner else name, ref))
        self.names[id(value)] = (value, out)
        return out

    def children(self, value: Any, mode: str) -> list[tuple[str, Any, str]]:
        """(name, child, how to walk the child) in ``state_dict()`` order."""
        if mode == "module" or (mode == "any" and is_module_stub(value)):
            return _module_children(value)
        if mode == "torchscript" or (mode == "any" and is_torchscript_stub(value)):
            return _torchscript_children(value)
        if mode != "any":
            return []
        mapping = _as_mapping(value)
        if mapping is not None:
            return [(str(k), v, "any") for k, v in mapping.items() if _may_hold(v)]
        if isinstance(value, (list, tuple)):
            return [(str(i), v, "any") for i, v in enumerate(value) if _may_hold(v)]
        return []

    def flatten(self, value: Any, prefix: str, out: "OrderedDict[str, TensorRef]", mode: str = "any") -> "OrderedDict[str, TensorRef]":
        self.count(value, mode)
        for name, ref in self.collect(value, mode):
            out[(prefix + name) if name else prefix.rstrip(".")] = ref
        return out


def _may_hold(value: Any) -> bool:
    return isinstance(value, (TensorRef, StubObject, dict, list, tuple))


def _module_children(module: StubObject) -> list[tuple[str, Any, str]]:
    attrs = module.attributes
    out: list[tuple[str, Any, str]] = []
    for name, value in (_as_mapping(attrs.get("_parameters")) or {}).items():
        if isinstance(value, TensorRef):
            out.append((str(name), value, "leaf"))
    non_persistent = attrs.get("_non_persistent_buffers_set") or ()
    non_persistent = set(non_persistent) if isinstance(non_persistent, (set, frozenset, list, tuple)) else set()
    for name, value in (_as_mapping(attrs.get("_buffers")) or {}).items():
        if isinstance(value, TensorRef) and name not in non_persistent:
            out.append((str(name), value, "leaf"))
    for name, child in (_as_mapping(attrs.get("_modules")) or {}).items():
        if is_module_stub(child):
            out.append((str(name), child, "module"))
    return out


def _torchscript_children(obj: StubObject) -> list[tuple[str, Any, str]]:
    state = obj.attributes or ({str(i): v for i, v in enumerate(obj.state)} if isinstance(obj.state, (tuple, list)) else {})
    out: list[tuple[str, Any, str]] = []
    for name, value in state.items():
        if isinstance(value, TensorRef):
            out.append((str(name), value, "leaf"))
        elif is_torchscript_stub(value):
            out.append((str(name), value, "torchscript"))
        elif isinstance(value, (tuple, list)):
            out.extend((f"{name}.{index}", item, "leaf") for index, item in enumerate(value) if isinstance(item, TensorRef))
    return out


def module_state_dict(module: StubObject, prefix: str = "", out: "OrderedDict[str, TensorRef] | None" = None,
                      classes: list[str] | None = None) -> "OrderedDict[str, TensorRef]":
    """The ``state_dict()`` of a whole-model stub: parameters, persistent buffers, then children.

    A submodule shared by two parents appears under both names, as in torch; it is visited once.

    Raises:
        LimitExceededError: modules nested deeper than the limit, or expanding to too many names.
    """
    return _Walk(classes).flatten(module, prefix, OrderedDict() if out is None else out, "module")


def torchscript_state_dict(obj: StubObject, prefix: str = "", out: "OrderedDict[str, TensorRef] | None" = None,
                           classes: list[str] | None = None) -> "OrderedDict[str, TensorRef]":
    """Tensors held as attributes of TorchScript module objects (``__torch__.*`` stubs), in attribute order.

    Raises:
        LimitExceededError: objects nested deeper than the limit, or expanding to too many names.
    """
    return _Walk(classes).flatten(obj, prefix, OrderedDict() if out is None else out, "torchscript")


def _flatten_tensors(value: Any, prefix: str, out: "OrderedDict[str, TensorRef]", classes: list[str]) -> None:
    _Walk(classes).flatten(value, prefix, out)


def weights_of(value: Any, classes: list[str] | None = None) -> "OrderedDict[str, TensorRef]":
    """The weights a value holds: a state_dict's tensors, a whole model's state_dict, nested containers flattened.

    Raises:
        LimitExceededError: containers nested deeper than the limit, or expanding to too many names.
    """
    return _Walk(classes).flatten(value, "", OrderedDict())


def holds_tensors(value: Any, depth: int = 0, _seen: dict[int, Any] | None = None) -> bool:
    """True when ``value`` contains at least one tensor anywhere (each shared object looked at once).

    Raises:
        LimitExceededError: containers nested deeper than the limit.
    """
    if isinstance(value, TensorRef):
        return True
    if not isinstance(value, (StubObject, dict, list, tuple)):
        return False
    seen = {} if _seen is None else _seen
    if id(value) in seen:
        return False
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"containers nested more than {MAX_DEPTH} deep")
    seen[id(value)] = value
    if isinstance(value, StubObject):
        parts: Any = (value.attributes, value.items, value.listitems)
    elif isinstance(value, dict):
        parts = value.values()
    else:
        parts = value
    return any(holds_tensors(v, depth + 1, seen) for v in parts)


def _is_state_dict(mapping: dict) -> bool:
    values = list(mapping.values())
    return bool(values) and all(isinstance(v, TensorRef) or v is None for v in values) and all(isinstance(k, str) for k in mapping)


def _lookup(root: Any, path: str) -> Any:
    value = root
    for part in path.split("."):
        mapping = _as_mapping(value)
        if mapping is not None and part in mapping:
            value = mapping[part]
        elif isinstance(value, StubObject) and part in value.attributes:
            value = value.attributes[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise SelectionError(f"--select {path}: no value at {part!r}; top-level keys: {', '.join(map(str, _keys(root)))}")
    return value


def _keys(value: Any) -> list:
    mapping = _as_mapping(value)
    return list(mapping) if mapping is not None else []


def _is_lightning(mapping: dict) -> bool:
    return "pytorch-lightning_version" in mapping or ("state_dict" in mapping and ("optimizer_states" in mapping or "hyper_parameters" in mapping))


def extract(root: Any, *, select: str | None = None, ema: bool = False, fmt: str = "") -> Extraction:
    """Choose the model weights in ``root``, keep everything else as inert extras, and account for every storage.

    Content that is not weights (optimizer, scheduler or RNG state, training arguments) gives an
    extraction with no tensors, the content under its canonical extras key, and ``note`` saying what
    it is; numpy weight dicts (Detectron2/Caffe2) become tensors first.

    Raises:
        SelectionError: ``--select`` names nothing, ``--ema`` finds no EMA weights, no weights at all,
            or several weight sets and no ``--select``.
        LimitExceededError: containers nested deeper than the limit.
    """
    if isinstance(root, ScriptedState):
        found = Extraction(root.tensors, {}, "torchscript", [], list(root.classes))
        found.account = account(root, found.tensors)
        return found
    content = None if select else classify(root)
    if content is not None:
        found = Extraction(OrderedDict(), {content.extras_key: root}, content.kind, [], [], note=content.message)
        found.account = account({content.extras_key: root}, {}, not_selected_reason={content.extras_key: content.message.split(",")[0]})
        return found
    root = arrays_as_tensors(root)
    found = _choose(root, select=select, ema=ema, fmt=fmt)
    mapping = _as_mapping(root)
    others = ({str(k): reason_for_key(str(k)) or OTHER_SET for k, v in mapping.items()
               if str(k) not in found.selected and not isinstance(v, TensorRef)}
              if mapping is not None and found.selected else {})
    found.account = account(root, found.tensors, not_selected_reason=others)
    return found


def _choose(root: Any, *, select: str | None = None, ema: bool = False, fmt: str = "") -> Extraction:
    classes: list[str] = []
    if fmt == "torchscript" and is_torchscript_stub(root):
        return Extraction(torchscript_state_dict(root, classes=classes), {}, "torchscript", [], classes)
    if select:
        chosen = _lookup(root, select)
        mapping = _as_mapping(root) or {}
        extras = {k: v for k, v in mapping.items() if k != select.split(".")[0]}
        return Extraction(weights_of(chosen, classes), extras, _kind_of(root, chosen), [select], classes)
    if is_module_stub(root):
        return Extraction(module_state_dict(root, classes=classes), {}, "full_model", [], classes)
    mapping = _as_mapping(root)
    if mapping is None:
        if isinstance(root, (list, tuple)) and holds_tensors(root):
            return Extraction(weights_of(root, classes), {}, "tensors", [], classes)
        raise SelectionError(f"no weights found: the file holds {describe_value(root)}, not a state_dict, model or bundle")
    if ema:
        found = [k for k in EMA_KEYS if k in mapping and holds_tensors(mapping[k])]
        if not found:
            raise SelectionError(f"--ema: no EMA weights ({', '.join(EMA_KEYS)}) in this file; keys: {', '.join(map(str, mapping))}")
        key = found[0]
        return Extraction(weights_of(mapping[key], classes), {k: v for k, v in mapping.items() if k != key}, _kind_of(root, mapping[key]), [key], classes)
    if _is_state_dict(mapping):
        return Extraction(OrderedDict((k, v) for k, v in mapping.items() if v is not None), {}, "state_dict", [], classes)
    if _is_lightning(mapping):
        return Extraction(weights_of(mapping["state_dict"], classes), {k: v for k, v in mapping.items() if k != "state_dict"}, "lightning", ["state_dict"], classes)
    known = [k for k in MODEL_KEYS if k in mapping and holds_tensors(mapping[k])]
    if not known and "model" in mapping and mapping["model"] is None and "ema" in mapping and holds_tensors(mapping["ema"]):
        known = ["ema"]
    if len(known) > 1:
        raise SelectionError(f"ambiguous bundle: several model candidates ({', '.join(known)}); choose one with --select KEY")
    if known:
        key = known[0]
        return Extraction(weights_of(mapping[key], classes), {k: v for k, v in mapping.items() if k != key}, _kind_of(root, mapping[key]), [key], classes)
    direct = [k for k, v in mapping.items() if isinstance(v, TensorRef)]
    if direct and len(direct) * 2 >= len(mapping):
        tensors: "OrderedDict[str, TensorRef]" = OrderedDict()
        for key, value in mapping.items():
            if holds_tensors(value):
                _flatten_tensors(value, f"{key}.", tensors, classes)
        return Extraction(tensors, {k: v for k, v in mapping.items() if not holds_tensors(v)}, "state_dict", [], classes)
    candidates = [k for k, v in mapping.items() if k not in NON_MODEL_KEYS and not str(k).startswith("ema")
                  and reason_for_key(str(k)) is None and holds_tensors(v)]
    if not candidates:
        raise SelectionError(f"no weights found: a {type(root).__name__} with keys {', '.join(map(str, mapping))} and no tensors")
    if len(candidates) > 1:
        raise SelectionError(f"several weight sets in one file ({', '.join(map(str, candidates))}); "
                             f"choose one with --select KEY (they are never merged)")
    tensors = weights_of(mapping[candidates[0]], classes)
    if not tensors:
        raise SelectionError(f"no model weights found: a {type(root).__name__} with keys {', '.join(map(str, mapping))}, "
                             f"its {candidates[0]!r} holding {describe_value(mapping[candidates[0]])}; not a model checkpoint")
    return Extraction(tensors, {k: v for k, v in mapping.items() if k not in candidates}, "bundle", candidates, classes)


def _kind_of(root: Any, chosen: Any) -> str:
    if root is chosen:
        return "full_model" if is_module_stub(root) else "state_dict"
    return "bundle"
