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
from ckpt_migrate.unpickler.stubs import StubObject, describe_value

MODEL_KEYS = ("model_state_dict", "state_dict", "model", "net", "network", "module")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optimizer_states", "optim", "optimizers")
NON_MODEL_KEYS = OPTIMIZER_KEYS + ("scheduler", "scheduler_state_dict", "lr_scheduler", "lr_schedulers",
                                   "scaler", "scaler_state_dict", "amp", "loops", "callbacks")
MAX_DEPTH = 300


@dataclass
class Extraction:
    """The weights chosen from a file, what else it held, and how they were found."""

    tensors: "OrderedDict[str, TensorRef]"
    extras: dict[str, Any]
    kind: str
    selected: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


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


def module_state_dict(module: StubObject, prefix: str = "", out: "OrderedDict[str, TensorRef] | None" = None,
                      classes: list[str] | None = None, depth: int = 0) -> "OrderedDict[str, TensorRef]":
    """The ``state_dict()`` of a whole-model stub: parameters, persistent buffers, then children.

    Raises:
        LimitExceededError: modules nested deeper than the limit.
    """
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"modules nested more than {MAX_DEPTH} deep")
    out = OrderedDict() if out is None else out
    if classes is not None and module.class_name not in classes:
        classes.append(module.class_name)
    attrs = module.attributes
    for name, value in (_as_mapping(attrs.get("_parameters")) or {}).items():
        if isinstance(value, TensorRef):
            out[prefix + str(name)] = value
    non_persistent = attrs.get("_non_persistent_buffers_set") or ()
    non_persistent = set(non_persistent) if isinstance(non_persistent, (set, frozenset, list, tuple)) else set()
    for name, value in (_as_mapping(attrs.get("_buffers")) or {}).items():
        if isinstance(value, TensorRef) and name not in non_persistent:
            out[prefix + str(name)] = value
    for name, child in (_as_mapping(attrs.get("_modules")) or {}).items():
        if is_module_stub(child):
            module_state_dict(child, f"{prefix}{name}.", out, classes, depth + 1)
    return out


def torchscript_state_dict(obj: StubObject, prefix: str = "", out: "OrderedDict[str, TensorRef] | None" = None,
                           classes: list[str] | None = None, depth: int = 0) -> "OrderedDict[str, TensorRef]":
    """Tensors held as attributes of TorchScript module objects (``__torch__.*`` stubs), in attribute order.

    Raises:
        LimitExceededError: objects nested deeper than the limit.
    """
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"TorchScript objects nested more than {MAX_DEPTH} deep")
    out = OrderedDict() if out is None else out
    if classes is not None and obj.class_name not in classes:
        classes.append(obj.class_name)
    state = obj.attributes or ({str(i): v for i, v in enumerate(obj.state)} if isinstance(obj.state, (tuple, list)) else {})
    for name, value in state.items():
        if isinstance(value, TensorRef):
            out[prefix + str(name)] = value
        elif is_torchscript_stub(value):
            torchscript_state_dict(value, f"{prefix}{name}.", out, classes, depth + 1)
        elif isinstance(value, (tuple, list)):
            for index, item in enumerate(value):
                if isinstance(item, TensorRef):
                    out[f"{prefix}{name}.{index}"] = item
    return out


def _flatten_tensors(value: Any, prefix: str, out: "OrderedDict[str, TensorRef]", classes: list[str], depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"containers nested more than {MAX_DEPTH} deep")
    if isinstance(value, TensorRef):
        out[prefix.rstrip(".")] = value
    elif is_module_stub(value):
        module_state_dict(value, prefix, out, classes, depth + 1)
    elif is_torchscript_stub(value):
        torchscript_state_dict(value, prefix, out, classes, depth + 1)
    elif (mapping := _as_mapping(value)) is not None:
        for key, item in mapping.items():
            _flatten_tensors(item, f"{prefix}{key}.", out, classes, depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten_tensors(item, f"{prefix}{index}.", out, classes, depth + 1)


def weights_of(value: Any, classes: list[str] | None = None) -> "OrderedDict[str, TensorRef]":
    """The weights a value holds: a state_dict's tensors, a whole model's state_dict, nested containers flattened."""
    out: "OrderedDict[str, TensorRef]" = OrderedDict()
    _flatten_tensors(value, "", out, classes if classes is not None else [])
    return out


def holds_tensors(value: Any, depth: int = 0) -> bool:
    """True when ``value`` contains at least one tensor anywhere."""
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"containers nested more than {MAX_DEPTH} deep")
    if isinstance(value, TensorRef):
        return True
    if isinstance(value, StubObject):
        return holds_tensors(value.attributes, depth + 1) or holds_tensors(value.items, depth + 1) or holds_tensors(value.listitems, depth + 1)
    if isinstance(value, dict):
        return any(holds_tensors(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(holds_tensors(v, depth + 1) for v in value)
    return False


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
    """Choose the model weights in ``root`` and keep everything else as inert extras.

    Raises:
        SelectionError: ``--select`` names nothing, ``--ema`` finds no EMA weights, no weights at all,
            or several candidate keys and no ``--select``.
    """
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
    candidates = [k for k, v in mapping.items() if k not in NON_MODEL_KEYS and not str(k).startswith("ema") and holds_tensors(v)]
    if not candidates:
        raise SelectionError(f"no weights found: a {type(root).__name__} with keys {', '.join(map(str, mapping))} and no tensors")
    tensors = OrderedDict()
    if len(candidates) == 1:
        tensors = weights_of(mapping[candidates[0]], classes)
    else:
        for key in candidates:
            _flatten_tensors(mapping[key], f"{key}.", tensors, classes)
    return Extraction(tensors, {k: v for k, v in mapping.items() if k not in candidates}, "bundle", candidates, classes)


def _kind_of(root: Any, chosen: Any) -> str:
    if root is chosen:
        return "full_model" if is_module_stub(root) else "state_dict"
    return "bundle"
