"""A bundle's training state as real structures that ``torch.load(weights_only=True)`` can hold.

Torch-free. Turns the inert extras a reader found into what a training loop loads back:
``optimizer.state_dict()`` (from a state_dict or from a whole pickled optimizer object, whose
parameters are mapped to integer ids in ``param_groups`` order exactly as
``Optimizer.state_dict()`` does), scheduler and AMP GradScaler state (from state_dicts or whole
objects), ``epoch`` and ``loss`` as plain numbers, and everything else as plain data. Tensor
references stay as :class:`~ckpt_migrate.model.checkpoint.TensorRef` leaves for the writer to
materialize; ``torch.device`` and dtype values stay as their inert markers. What cannot be
represented is recorded with its type name, never dropped silently.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import fractions
import pathlib
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

from ckpt_migrate.model.checkpoint import TensorRef
from ckpt_migrate.errors import LimitExceededError
from ckpt_migrate.bundle.extract import is_module_stub, module_state_dict
from ckpt_migrate.bundle.plain import scalar
from ckpt_migrate.bundle.keys import OPTIMIZER_KEYS, SCALER_KEYS, SCHEDULER_KEYS
from ckpt_migrate.unpickler import AllowedCall, Device, GlobalRef, RefusedCall, StubObject, TorchMarker

NORMALIZED_FORMAT = "ckpt-migrate-normalized"
NORMALIZED_VERSION = 1

MAX_DEPTH = 200

_PLAIN_SCALARS = (bool, int, float, str, bytes, complex, type(None))
_SHARED = (dict, list, tuple, set, frozenset, argparse.Namespace, StubObject)
_IN_PROGRESS = object()
DEVICE_TYPES = frozenset({"cpu", "cuda", "mps", "xpu", "xla", "meta", "hip", "ve", "fpga", "maia", "ipu", "mtia",
                          "lazy", "vulkan", "opengl", "opencl", "mkldnn", "ideep", "hpu", "privateuseone"})
_DEVICE = re.compile(r"([a-z_]+)(?::(0|[1-9][0-9]{0,5}))?")


def valid_device(spec: Any) -> bool:
    """True when ``torch.device(spec)`` accepts ``spec``: a known device type and an optional small index.

    Args:
        spec: what the pickle gave ``torch.device`` (a string, or a string and an index).

    Returns:
        Whether the spec is a device torch can rebuild.
    """
    if not isinstance(spec, str):
        return False
    match = _DEVICE.fullmatch(spec)
    return match is not None and match.group(1) in DEVICE_TYPES


@dataclass
class TrainingState:
    """The canonical pieces of a training bundle plus a record of every conversion made.

    ``unrepresentable`` maps a dotted path to the type name of a value that could not be kept;
    ``converted`` maps a dotted path to what a value was turned into (``argparse.Namespace → dict``).
    """

    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    epoch: Any = None
    loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    unrepresentable: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    optimizer_params: list[str | None] | None = None
    previous_meta: dict[str, Any] | None = None
    memo: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False, compare=False)

    def record_unrepresentable(self, path: str, value: Any) -> None:
        self.unrepresentable[path] = type_name(value)

    def record_converted(self, path: str, what: str) -> None:
        self.converted[path] = what


def type_name(value: Any) -> str:
    """The dotted type name of a value, as the pickle named it for stubs and calls."""
    if isinstance(value, StubObject):
        return value.class_name
    if isinstance(value, TensorRef):
        return "tensor"
    if isinstance(value, (AllowedCall, RefusedCall)):
        return f"call of {value.func.dotted}"
    if isinstance(value, GlobalRef):
        return f"reference to {value.dotted}"
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def split_training_state(extras: Mapping[str, Any], model_tensors: Mapping[str, Any] | None = None) -> TrainingState:
    """Sort a bundle's extras into optimizer, scheduler, scaler, epoch, loss and plain ``extra``.

    ``model_tensors`` (name → tensor reference) names the parameters of a whole pickled optimizer
    when its parameter references are the model's own objects.

    Raises:
        LimitExceededError: values nested deeper than the limit.
    """
    state = TrainingState()
    remaining = dict(extras)
    if _is_normalized_meta(remaining.get("meta")):
        state.previous_meta = plain_data(remaining.pop("meta"), "meta", state)
        previous_extra = remaining.pop("extra", None)
        for key, value in (previous_extra.items() if isinstance(previous_extra, dict) else ()):
            remaining.setdefault(key, value)
    names = _identity_names(model_tensors or {})
    if (key := _first(remaining, OPTIMIZER_KEYS)) is not None:
        state.optimizer = optimizer_state(remaining.pop(key), key, state, names)
        state.sources["optimizer_state_dict"] = key
    if (key := _first(remaining, SCHEDULER_KEYS)) is not None:
        state.scheduler = scheduler_state(remaining.pop(key), key, state)
        state.sources["scheduler_state_dict"] = key
    if (key := _first(remaining, SCALER_KEYS)) is not None:
        state.scaler = scaler_state(remaining.pop(key), key, state)
        state.sources["scaler_state_dict"] = key
    if "epoch" in remaining:
        epoch = remaining.pop("epoch")
        number = scalar(epoch)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            state.epoch = number
            if not isinstance(epoch, (int, float)):
                state.record_converted("epoch", f"{type_name(epoch)} → {type(number).__name__}")
        else:
            remaining["epoch"] = epoch
    if "loss" in remaining:
        loss = remaining.pop("loss")
        number = scalar(loss)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            state.loss = float(number)
            if not isinstance(loss, float):
                state.record_converted("loss", f"{type_name(loss)} → float")
        else:
            remaining["loss"] = loss
    for key, value in remaining.items():
        path = f"extra.{key}"
        converted = plain_data(value, path, state)
        if path not in state.unrepresentable:
            state.extra[str(key)] = converted
    return state


def _first(mapping: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((key for key in keys if key in mapping), None)


def _is_normalized_meta(value: Any) -> bool:
    return isinstance(value, dict) and value.get("format") == NORMALIZED_FORMAT


def _identity_names(model_tensors: Mapping[str, Any]) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for name, ref in model_tensors.items():
        names.setdefault(id(ref), name)
        if isinstance(ref, TensorRef):
            names.setdefault(_view_key(ref), name)
    return names


def _view_key(ref: TensorRef) -> tuple:
    return ("view", id(ref.storage), ref.offset, ref.shape, ref.stride)


def _param_name(param: Any, names: Mapping[Any, str]) -> str | None:
    name = names.get(id(param))
    if name is None and isinstance(param, TensorRef):
        name = names.get(_view_key(param))
    return name


def is_optimizer_stub(value: Any) -> bool:
    """True for a whole pickled optimizer (its state holds ``state`` and ``param_groups``)."""
    return isinstance(value, StubObject) and "param_groups" in value.attributes and "state" in value.attributes


def optimizer_state(value: Any, path: str, report: TrainingState, names: Mapping[Any, str] | None = None) -> Any:
    """An ``optimizer.state_dict()`` structure from a state_dict, a whole optimizer object, or a list of either.

    Raises:
        LimitExceededError: values nested deeper than the limit.
    """
    if isinstance(value, (list, tuple)) and value and all(is_optimizer_stub(v) or _is_optimizer_dict(v) for v in value):
        if len(value) == 1:
            report.record_converted(path, "list of one optimizer → its state_dict")
            return optimizer_state(value[0], f"{path}.0", report, names)
        return [optimizer_state(v, f"{path}.{i}", report, names) for i, v in enumerate(value)]
    if is_optimizer_stub(value):
        report.record_converted(path, f"{value.class_name} object → state_dict")
        return _pack_optimizer(value, path, report, names or {})
    if _is_optimizer_dict(value):
        return _normalize_optimizer_dict(value, path, report)
    return plain_data(value, path, report)


def _is_optimizer_dict(value: Any) -> bool:
    return isinstance(value, dict) and "param_groups" in value


def _pack_optimizer(optimizer: StubObject, path: str, report: TrainingState, names: Mapping[Any, str]) -> dict[str, Any]:
    attrs = optimizer.attributes
    mappings: dict[int, int] = {}
    order: list[Any] = []
    groups = []
    start = 0
    for g_index, group in enumerate(_as_list(attrs.get("param_groups"))):
        if not isinstance(group, dict):
            report.record_unrepresentable(f"{path}.param_groups.{g_index}", group)
            continue
        params = _as_list(group.get("params"))
        for index, param in enumerate(params, start):
            if id(param) not in mappings:
                mappings[id(param)] = index
                order.append(param)
        packed = {str(k): plain_data(v, f"{path}.param_groups.{g_index}.{k}", report) for k, v in group.items() if k != "params"}
        packed["params"] = [mappings[id(p)] for p in params]
        start += len(params)
        groups.append(packed)
    packed_state: dict[Any, Any] = {}
    raw_state = attrs.get("state")
    state_items = raw_state.items() if isinstance(raw_state, dict) else ()
    for key, per_param in state_items:
        if isinstance(key, TensorRef):
            index = mappings.get(id(key))
            if index is None:
                index = _match_by_view(key, order)
            if index is None:
                report.record_unrepresentable(f"{path}.state.<unmatched parameter {list(key.shape)}>", key)
                continue
        else:
            index = key
        packed_state[index] = plain_data(per_param, f"{path}.state.{index}", report)
    if names:
        report.optimizer_params = [_param_name(p, names) for p in order]
    return {"state": packed_state, "param_groups": groups}


def _match_by_view(key: TensorRef, order: list[Any]) -> int | None:
    for index, param in enumerate(order):
        if (isinstance(param, TensorRef) and param.storage is key.storage and param.offset == key.offset
                and param.shape == key.shape and param.stride == key.stride):
            return index
    return None


def _normalize_optimizer_dict(value: dict, path: str, report: TrainingState) -> dict[str, Any]:
    from ckpt_migrate.bundle.optimizer_names import keyed_by_id

    by_id = keyed_by_id(value)
    if by_id is not None:
        value, report.optimizer_params = by_id
        report.record_converted(f"{path}.state", "keyed by parameter name (get_state_dict layout) → ids")
    groups = plain_data(value.get("param_groups"), f"{path}.param_groups", report)
    int_ids = isinstance(groups, list) and all(
        isinstance(g, dict) and all(isinstance(p, int) and not isinstance(p, bool) for p in g.get("params", ()))
        for g in groups
    )
    state_in = value.get("state")
    state_out: dict[Any, Any] = {}
    if isinstance(state_in, dict):
        for key, per_param in state_in.items():
            new_key = int(key) if int_ids and isinstance(key, str) and key.isdigit() else key
            if new_key is not key:
                report.record_converted(f"{path}.state", "parameter ids read as strings → int")
            state_out[new_key] = plain_data(per_param, f"{path}.state.{key}", report)
    elif state_in is not None:
        report.record_unrepresentable(f"{path}.state", state_in)
    out: dict[str, Any] = {"state": state_out, "param_groups": groups}
    for key, item in value.items():
        if key not in ("state", "param_groups"):
            out[str(key)] = plain_data(item, f"{path}.{key}", report)
    return out


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def is_scheduler_stub(value: Any) -> bool:
    """True for a whole pickled LR scheduler (it holds an ``optimizer`` or a ``last_epoch``)."""
    return isinstance(value, StubObject) and ("optimizer" in value.attributes or "last_epoch" in value.attributes)


def scheduler_state(value: Any, path: str, report: TrainingState, depth: int = 0) -> Any:
    """A scheduler ``state_dict()``: an object's ``__dict__`` minus ``optimizer``, as ``LRScheduler.state_dict`` builds it.

    Raises:
        LimitExceededError: schedulers nested deeper than the limit.
    """
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"schedulers nested more than {MAX_DEPTH} deep")
    if isinstance(value, (list, tuple)) and value and all(is_scheduler_stub(v) or isinstance(v, dict) for v in value):
        if len(value) == 1 and depth == 0:
            report.record_converted(path, "list of one scheduler → its state_dict")
            return scheduler_state(value[0], f"{path}.0", report, depth + 1)
        return [scheduler_state(v, f"{path}.{i}", report, depth + 1) for i, v in enumerate(value)]
    if not is_scheduler_stub(value):
        return plain_data(value, path, report)
    report.record_converted(path, f"{value.class_name} object → state_dict")
    out: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, item in value.attributes.items():
        if key in ("optimizer", "lr_lambdas"):
            continue
        if is_scheduler_stub(item) or (isinstance(item, (list, tuple)) and item and all(is_scheduler_stub(v) for v in item)):
            nested[key] = item
        else:
            out[key] = plain_data(item, f"{path}.{key}", report)
    for key, item in nested.items():
        out[key] = scheduler_state(item, f"{path}.{key}", report, depth + 1)
    lambdas = value.attributes.get("lr_lambdas")
    if isinstance(lambdas, (list, tuple)):
        out["lr_lambdas"] = [_lambda_state(fn, f"{path}.lr_lambdas.{i}", report) for i, fn in enumerate(lambdas)]
    return out


def _lambda_state(fn: Any, path: str, report: TrainingState) -> Any:
    if isinstance(fn, StubObject) and fn.attributes:
        return plain_data(dict(fn.attributes), path, report)
    return None


def scaler_state(value: Any, path: str, report: TrainingState) -> Any:
    """An AMP ``GradScaler.state_dict()`` from a state_dict or a whole pickled GradScaler."""
    if not (isinstance(value, StubObject) and "_init_scale" in value.attributes):
        return plain_data(value, path, report)
    attrs = value.attributes
    report.record_converted(path, f"{value.class_name} object → state_dict")
    if not attrs.get("_enabled", True):
        return {}
    scale = scalar(attrs.get("_scale")) if attrs.get("_scale") is not None else None
    tracker = scalar(attrs.get("_growth_tracker")) if attrs.get("_growth_tracker") is not None else None
    return {
        "scale": float(scale) if scale is not None else plain_data(attrs.get("_init_scale"), f"{path}._init_scale", report),
        "growth_factor": plain_data(attrs.get("_growth_factor"), f"{path}._growth_factor", report),
        "backoff_factor": plain_data(attrs.get("_backoff_factor"), f"{path}._backoff_factor", report),
        "growth_interval": plain_data(attrs.get("_growth_interval"), f"{path}._growth_interval", report),
        "_growth_tracker": int(tracker) if tracker is not None else plain_data(attrs.get("_init_growth_tracker"), f"{path}._init_growth_tracker", report),
    }


_NOT_STDLIB = object()


def plain_data(value: Any, path: str, report: TrainingState, depth: int = 0) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` opens: containers, numbers, strings, tensors.

    Tensor references, numpy arrays, devices and dtypes stay as leaves for the writer to turn into
    torch objects. Conversions are recorded in ``report.converted``; values that cannot be kept are
    recorded in ``report.unrepresentable`` and become ``None``.

    Raises:
        LimitExceededError: values nested deeper than the limit.
    """
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"values nested more than {MAX_DEPTH} deep at {path}")
    if not isinstance(value, _SHARED):
        return _plain_value(value, path, report, depth)
    known = report.memo.get(id(value))
    if known is not None and known[0] is value:
        if known[1] is _IN_PROGRESS:
            report.unrepresentable[path] = f"{type_name(value)} holding itself"
            return None
        return known[1]
    report.memo[id(value)] = (value, _IN_PROGRESS)
    converted = _plain_value(value, path, report, depth)
    report.memo[id(value)] = (value, converted)
    return converted


def _plain_value(value: Any, path: str, report: TrainingState, depth: int) -> Any:
    if type(value).__module__ == "numpy":
        return _plain_numpy(value, path, report)
    if isinstance(value, _PLAIN_SCALARS) or isinstance(value, TensorRef):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, Device) and not valid_device(value.spec):
        report.record_converted(path, f"torch.device({value.spec!r}), not a valid device → str")
        return str(value.spec)
    if isinstance(value, Device) or (isinstance(value, TorchMarker) and _is_dtype_marker(value)):
        return value
    if isinstance(value, TorchMarker):
        report.record_converted(path, f"{value.name} → str")
        return value.name
    if isinstance(value, dict):
        return _plain_mapping(value, path, report, depth)
    if isinstance(value, list):
        return [plain_data(v, f"{path}.{i}", report, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(plain_data(v, f"{path}.{i}", report, depth + 1) for i, v in enumerate(value))
    if isinstance(value, (set, frozenset)):
        return _plain_set(value, path, report, depth)
    if isinstance(value, argparse.Namespace):
        report.record_converted(path, "argparse.Namespace → dict")
        return {str(k): plain_data(v, f"{path}.{k}", report, depth + 1) for k, v in vars(value).items()}
    converted = _plain_stdlib(value)
    if converted is not _NOT_STDLIB:
        report.record_converted(path, f"{type_name(value)} → {type(converted).__name__}")
        return converted
    if is_optimizer_stub(value):
        return optimizer_state(value, path, report)
    if is_scheduler_stub(value):
        return scheduler_state(value, path, report)
    if is_module_stub(value):
        report.record_converted(path, f"{value.class_name} module → state_dict")
        return OrderedDict(module_state_dict(value))
    if isinstance(value, StubObject) and value.attributes and not value.items and not value.listitems:
        report.record_converted(path, f"{value.class_name} object → dict of its attributes")
        return _plain_mapping(value.attributes, path, report, depth)
    report.record_unrepresentable(path, value)
    return None


def _is_dtype_marker(marker: TorchMarker) -> bool:
    import ckpt_migrate.model.dtypes as _dtypes

    return _dtypes.from_torch_name(marker.name) is not None


def _plain_key(key: Any) -> bool:
    if isinstance(key, tuple):
        return all(_plain_key(k) for k in key)
    return isinstance(key, (bool, int, float, str, bytes, type(None)))


def _plain_mapping(value: dict, path: str, report: TrainingState, depth: int) -> dict:
    out: dict = OrderedDict() if isinstance(value, OrderedDict) else {}
    if isinstance(value, Counter):
        report.record_converted(path, "collections.Counter → dict")
    elif type(value) not in (dict, OrderedDict) and not isinstance(value, OrderedDict):
        report.record_converted(path, f"{type_name(value)} → dict")
    for key, item in value.items():
        if not _plain_key(key):
            report.unrepresentable[f"{path}.<key {type_name(key)}>"] = type_name(key)
            continue
        out[key] = plain_data(item, f"{path}.{key}", report, depth + 1)
    return out


def _plain_set(value: set | frozenset, path: str, report: TrainingState, depth: int) -> Any:
    items = [plain_data(v, f"{path}.{i}", report, depth + 1) for i, v in enumerate(value)]
    if all(_plain_key(v) for v in items):
        if isinstance(value, frozenset):
            report.record_converted(path, "frozenset → set")
        return set(items)
    report.record_converted(path, f"{type(value).__name__} → list")
    return items


def _plain_stdlib(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (pathlib.PurePath, decimal.Decimal, fractions.Fraction)):
        return str(value)
    if isinstance(value, (range, slice)):
        return [value.start, value.stop, value.step]
    return _NOT_STDLIB


def _plain_numpy(value: Any, path: str, report: TrainingState) -> Any:
    import numpy

    if isinstance(value, numpy.ndarray) and value.dtype.kind in "biufc":
        report.record_converted(path, "numpy.ndarray → tensor")
        return value
    if isinstance(value, numpy.generic) and value.dtype.kind in "biufc":
        report.record_converted(path, f"numpy.{value.dtype} → {type(value.item()).__name__}")
        return value.item()
    if isinstance(value, numpy.dtype):
        report.record_converted(path, "numpy.dtype → str")
        return str(value)
    report.record_unrepresentable(path, value)
    return None
