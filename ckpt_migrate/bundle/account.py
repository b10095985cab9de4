"""The storage account: every tensor storage of a source is written under a name or left out for a reason.

A reader's objects are walked once (shared objects visited once); each storage found is either
referenced by a selected tensor (written), or left out with the reason its place gives
(optimizer/scheduler/RNG state, EMA weights not selected, a non-persistent buffer, a runtime
attribute of a scripted module, a one-element metric), or *unexplained*: weight-bearing bytes
that a conversion would drop silently. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from ckpt_migrate.errors import LimitExceededError
from ckpt_migrate.model.checkpoint import StorageRef, TensorRef
from ckpt_migrate.model.scripted import ScriptedState
from ckpt_migrate.unpickler.stubs import StubObject

MAX_DEPTH = 300
OPTIMIZER = "optimizer state"
SCHEDULER = "learning-rate scheduler state"
SCALER = "AMP grad-scaler state"
RNG = "random-number-generator state"
EMA = "EMA weights, not selected (--ema selects them)"
NON_PERSISTENT = "non-persistent buffer (not in state_dict)"
MODULE_ATTRIBUTE = "plain attribute of a module, not a parameter or buffer (not in state_dict)"
_MODULE_SLOTS = ("_parameters", "_buffers", "_modules")
SCALAR = "one-element value (a metric or counter), kept with the extras"
OTHER_SET = "another weight set of the bundle, not selected"


def reason_for_key(key: str) -> str | None:
    """The reason a bundle key's tensors are not weights, from its name; None for model-like keys.

    Args:
        key: a dict key or attribute name on the path to a tensor.

    Returns:
        One of the reasons of this module, or None.
    """
    lowered = key.lower()
    if "optim" in lowered:
        return OPTIMIZER
    if "sched" in lowered:
        return SCHEDULER
    if "scaler" in lowered or lowered == "amp":
        return SCALER
    if "rng" in lowered or lowered in ("random_state", "generator"):
        return RNG
    if lowered.startswith("ema") or lowered.endswith("_ema") or lowered.startswith("model_ema") or "_ema_" in lowered:
        return EMA
    return None


@dataclass
class StorageEntry:
    """One storage: its key, size, the names it is written under, or why it is left out."""

    key: str
    nbytes: int
    where: str
    names: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def status(self) -> str:
        if self.names:
            return "written"
        return "left out" if self.reason else "unexplained"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"storage": self.key, "bytes": self.nbytes, "status": self.status, "where": self.where}
        if self.names:
            out["names"] = self.names[:8] + ([f"... {len(self.names) - 8} more"] if len(self.names) > 8 else [])
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class StorageAccount:
    """Every storage of a source with its fate."""

    entries: list[StorageEntry] = field(default_factory=list)

    def of_status(self, status: str) -> list[StorageEntry]:
        return [e for e in self.entries if e.status == status]

    @property
    def unexplained(self) -> list[StorageEntry]:
        return self.of_status("unexplained")

    def reasons(self) -> dict[str, tuple[int, int]]:
        """Reason → (storages, bytes) for the storages left out."""
        out: dict[str, tuple[int, int]] = {}
        for entry in self.of_status("left out"):
            count, size = out.get(entry.reason or "", (0, 0))
            out[entry.reason or ""] = (count + 1, size + entry.nbytes)
        return out

    def summary(self) -> str:
        """One line: how many storages are written, left out (by reason) and unexplained."""
        written = self.of_status("written")
        parts = [f"{len(self.entries)} storages: {len(written)} written ({sum(e.nbytes for e in written)} bytes)"]
        for reason, (count, size) in self.reasons().items():
            parts.append(f"{count} left out: {reason} ({size} bytes)")
        if self.unexplained:
            parts.append(f"{len(self.unexplained)} UNEXPLAINED ({sum(e.nbytes for e in self.unexplained)} bytes)")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "storages": [e.to_json() for e in self.entries]}


class _Walker:
    def __init__(self) -> None:
        self.found: dict[int, tuple[StorageRef, list[tuple[str, str | None, int]]]] = {}
        self.seen: dict[int, Any] = {}

    def add(self, ref: TensorRef, path: str, reason: str | None) -> None:
        storage = ref.storage
        slot = self.found.setdefault(id(storage), (storage, []))
        slot[1].append((path, reason, ref.numel))
        for param in (ref.quantization or {}).get("params") or ():
            if isinstance(param, TensorRef):
                self.add(param, f"{path} (quantizer)", reason)

    def walk(self, value: Any, path: str, reason: str | None, depth: int = 0) -> None:
        if isinstance(value, TensorRef):
            self.add(value, path, reason)
            return
        if not isinstance(value, (StubObject, ScriptedState, dict, list, tuple)) and not hasattr(value, "args"):
            return
        marker = (id(value), reason)
        if marker in self.seen:
            return
        if depth > MAX_DEPTH:
            raise LimitExceededError(f"containers nested more than {MAX_DEPTH} deep")
        self.seen[marker] = value
        for name, child, child_reason in self.children(value, reason):
            self.walk(child, f"{path}.{name}" if path else str(name), child_reason, depth + 1)

    def children(self, value: Any, reason: str | None) -> Iterable[tuple[str, Any, str | None]]:
        if isinstance(value, ScriptedState):
            for name, ref in value.tensors.items():
                yield name, ref, None
            for item in value.left_out:
                yield item.path, item.ref, item.reason
            return
        if isinstance(value, dict):
            for key, item in value.items():
                yield str(key), item, reason or reason_for_key(str(key))
            return
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                yield str(index), item, reason
            return
        if isinstance(value, StubObject):
            attrs = value.attributes
            hidden = attrs.get("_non_persistent_buffers_set") or ()
            hidden = set(hidden) if isinstance(hidden, (set, frozenset, list, tuple)) else set()
            is_module = "_parameters" in attrs and "_modules" in attrs
            for key, item in attrs.items():
                if key == "_buffers" and hidden and isinstance(item, dict):
                    for name, buffer in item.items():
                        yield f"_buffers.{name}", buffer, reason or (NON_PERSISTENT if name in hidden else None)
                elif is_module and key not in _MODULE_SLOTS:
                    yield str(key), item, reason or MODULE_ATTRIBUTE
                else:
                    yield str(key), item, reason or reason_for_key(str(key))
            if not attrs and value.state is not None:
                yield "state", value.state, reason
            yield "items", value.items, reason
            yield "listitems", value.listitems, reason
            yield "args", value.args, reason
            return
        args = getattr(value, "args", None)
        if isinstance(args, (tuple, list)):
            yield "args", args, reason


def account(root: Any, selected: dict[str, Any], *, not_selected_reason: dict[str, str] | None = None) -> StorageAccount:
    """Account for every storage reachable from ``root`` against the ``selected`` tensors.

    Args:
        root: what the reader found (the pickled object, or a :class:`ScriptedState`).
        selected: name → tensor reference that will be written.
        not_selected_reason: top-level key → reason for bundle entries deliberately not chosen.

    Returns:
        The account, storages in the order they were first found.

    Raises:
        LimitExceededError: containers nested deeper than the limit.
    """
    walker = _Walker()
    extra = not_selected_reason or {}
    if isinstance(root, dict) and extra:
        for key, item in root.items():
            walker.walk(item, str(key), extra.get(str(key)) or reason_for_key(str(key)))
    else:
        walker.walk(root, "", None)
    names: dict[int, list[str]] = {}
    for name, ref in selected.items():
        if isinstance(ref, TensorRef):
            names.setdefault(id(ref.storage), []).append(name)
            for param in (ref.quantization or {}).get("params") or ():
                if isinstance(param, TensorRef):
                    names.setdefault(id(param.storage), []).append(f"{name} (quantizer)")
            if id(ref.storage) not in walker.found:
                walker.found[id(ref.storage)] = (ref.storage, [(name, None, ref.numel)])
    result = StorageAccount()
    for key, (storage, places) in walker.found.items():
        entry = StorageEntry(storage.key, storage.nbytes, places[0][0], names.get(key, []))
        if not entry.names:
            entry.reason = next((reason for _, reason, _ in places if reason), None)
            if entry.reason is None and all(numel <= 1 for _, _, numel in places):
                entry.reason = SCALAR
        result.entries.append(entry)
    return result
