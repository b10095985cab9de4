"""Optimizer state keyed by parameter name (the layout of ``get_state_dict``/``set_state_dict``) and back.

``optimizer.state_dict()`` keys per-parameter state by integer ids in ``param_groups`` order;
``torch.distributed.checkpoint.state_dict.get_state_dict(model, optimizer)`` keys it by the
parameter's fully qualified name, and lists names in ``param_groups[i]["params"]``. Torch-free:
names come from the model's state_dict (parameters in ``named_parameters`` order: buffers and
aliases of an earlier tensor left out), checked against the shapes of the per-parameter state.
"""

from __future__ import annotations

from typing import Any, Mapping

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _alias(ref: Any) -> Any:
    storage = getattr(ref, "storage", None)
    if storage is None:
        return id(ref)
    return (id(storage), getattr(ref, "offset", 0), tuple(getattr(ref, "shape", ())), tuple(getattr(ref, "stride", ())))


def parameter_candidates(model: Mapping[str, Any]) -> list[str]:
    """State_dict names that are parameters as ``named_parameters()`` lists them (best effort without the model).

    Buffers (BatchNorm statistics, integer tensors) and later aliases of one tensor are left out.
    """
    seen: set[Any] = set()
    names = []
    for name, ref in model.items():
        dtype = getattr(ref, "dtype", None)
        kind = getattr(dtype, "kind", "float")
        if name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES or kind not in ("float", "complex"):
            continue
        key = _alias(ref)
        if key in seen:
            continue
        seen.add(key)
        names.append(name)
    return names


def _ids(optimizer: Mapping[str, Any]) -> list[Any]:
    return [param for group in optimizer.get("param_groups") or () for param in group.get("params", ())]


def _shapes_agree(optimizer: Mapping[str, Any], mapping: Mapping[Any, str], model: Mapping[str, Any]) -> bool:
    for key, per_param in (optimizer.get("state") or {}).items():
        name = mapping.get(key)
        if name is None:
            return False
        shape = tuple(getattr(model[name], "shape", ()))
        for value in (per_param or {}).values() if isinstance(per_param, Mapping) else ():
            found = getattr(value, "shape", None)
            if found is not None and tuple(found) not in ((), shape):
                return False
    return True


def name_mapping(optimizer: Mapping[str, Any], model: Mapping[str, Any], known: list[str | None] | None = None) -> dict[Any, str] | None:
    """Integer id → parameter name, or None when the names cannot be told for sure.

    ``known`` is the parameter order recovered from a whole pickled optimizer, when there was one.
    """
    ids = _ids(optimizer)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        return None
    names = list(known) if known and all(known) and len(known) == len(ids) else parameter_candidates(model)
    if len(names) != len(ids) or any(name not in model for name in names):
        return None
    mapping = dict(zip(ids, names))
    return mapping if _shapes_agree(optimizer, mapping, model) else None


def keyed_by_name(optimizer: Mapping[str, Any], mapping: Mapping[Any, str]) -> dict[str, Any]:
    """``optimizer`` with state keys and ``param_groups[i]["params"]`` turned into names."""
    groups = [{**group, "params": [mapping[p] for p in group.get("params", ())]} for group in optimizer.get("param_groups") or ()]
    state = {mapping[key]: value for key, value in (optimizer.get("state") or {}).items()}
    out = {key: value for key, value in optimizer.items() if key not in ("state", "param_groups")}
    return {"state": state, "param_groups": groups, **out}


def keyed_by_id(optimizer: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]] | None:
    """A name-keyed optimizer state back to ``optimizer.state_dict()`` ids (``param_groups`` order), and the names; None if not name-keyed."""
    names = _ids(optimizer)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        return None
    state_in = optimizer.get("state") or {}
    if not isinstance(state_in, Mapping) or not set(state_in) <= set(names):
        return None
    index = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [index[n] for n in group.get("params", ())]} for group in optimizer.get("param_groups") or ()]
    state = {index[name]: state_in[name] for name in names if name in state_in}
    out = {key: value for key, value in optimizer.items() if key not in ("state", "param_groups")}
    return {"state": state, "param_groups": groups, **out}, names


def name_payload_optimizer(payload: dict[str, Any], known: list[str | None] | None = None) -> tuple[dict[str, Any], str | None]:
    """A normalized payload whose ``optimizer_state_dict`` is keyed by parameter name, and why not when it stays keyed by id."""
    optimizer = payload.get("optimizer_state_dict")
    if not isinstance(optimizer, Mapping):
        return payload, None if optimizer is None else "several optimizers: state kept keyed by id"
    mapping = name_mapping(optimizer, payload.get("model_state_dict") or {}, known)
    if mapping is None:
        return payload, "parameter names could not be matched to the optimizer's ids and shapes: state kept keyed by id"
    return {**payload, "optimizer_state_dict": keyed_by_name(optimizer, mapping)}, None
