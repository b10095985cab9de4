"""Writer ``normalized``: the one canonical, safe-to-load form of a training bundle (DESIGN §3).

A torch zip file that ``torch.load(path, weights_only=True)`` opens with no extra allowlisting,
holding the tutorial's keys: ``model_state_dict`` (wrapper prefixes stripped when every key has
them), and when present ``optimizer_state_dict``, ``scheduler_state_dict``, ``scaler_state_dict``,
``epoch``, ``loss`` (a float), ``extra`` and ``meta``. A loop that loads it resumes exactly as if it
never stopped. Such files are ordinary torch zip files, so the ``torch-zip`` reader opens them and
:func:`~ckpt_migrate.bundle.training_state.split_training_state` recognises their ``meta``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Iterator, Mapping

from ckpt_migrate.io.atomic import atomic_path
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor, TensorRef
from ckpt_migrate.errors import UnsupportedFormatError, VerificationError
from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.bundle.training_state import NORMALIZED_FORMAT, NORMALIZED_VERSION, TrainingState, split_training_state
from ckpt_migrate.unpickler import Device, TorchMarker
from ckpt_migrate.model.equality import same_tensor
from ckpt_migrate.model.provenance import source_label
from ckpt_migrate.bundle.keys import WRAPPER_PREFIXES
from ckpt_migrate.converters.base import WriteReport, Writer
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.converters.filenames import WRITER_SUFFIXES

_PROVENANCE = ("source", "source_sha256", "reader", "format", "kind", "selected", "classes", "tool", "schemas", "stripped", "warnings",
               "left_out")


def strip_wrapper_prefixes(names: list[str]) -> tuple[list[str], list[str]]:
    """Names with ``module.``/``_orig_mod.``/``_forward_module.`` removed while every name has the same one.

    Returns the new names and the prefixes removed, outermost first.
    """
    stripped: list[str] = []
    while names:
        prefix = next((p for p in WRAPPER_PREFIXES if all(n.startswith(p) for n in names)), None)
        if prefix is None or any(n == prefix for n in names):
            break
        names = [n[len(prefix):] for n in names]
        stripped.append(prefix)
    return names, stripped


def build_payload(checkpoint: Checkpoint) -> tuple[dict[str, Any], TrainingState]:
    """The normalized dict with tensor references (and markers) still lazy, and the conversion record.

    Raises:
        LimitExceededError: extras nested deeper than the limit.
    """
    state = split_training_state(checkpoint.extras, checkpoint.tensors)
    names, stripped = strip_wrapper_prefixes([str(n) for n in checkpoint.tensors])
    model = OrderedDict(zip(names, checkpoint.tensors.values()))
    payload: dict[str, Any] = {"model_state_dict": model}
    if state.optimizer is not None:
        payload["optimizer_state_dict"] = state.optimizer
    if state.scheduler is not None:
        payload["scheduler_state_dict"] = state.scheduler
    if state.scaler is not None:
        payload["scaler_state_dict"] = state.scaler
    if state.epoch is not None:
        payload["epoch"] = state.epoch
    if state.loss is not None:
        payload["loss"] = state.loss
    if state.extra:
        payload["extra"] = state.extra
    payload["meta"] = normalized_meta(checkpoint, state, stripped)
    return payload, state


def normalized_meta(checkpoint: Checkpoint, state: TrainingState, stripped: list[str]) -> dict[str, Any]:
    """Provenance and the record of every conversion, as JSON-like plain data."""
    meta: dict[str, Any] = {"format": NORMALIZED_FORMAT, "format_version": NORMALIZED_VERSION}
    for key in _PROVENANCE:
        value = checkpoint.meta.get(key)
        if value not in (None, [], {}):
            meta["source_format" if key == "format" else key] = source_label(checkpoint.meta) if key == "source" else to_plain(value, max_items=10_000)
    meta.setdefault("schemas", [])
    if stripped:
        meta["stripped_prefixes"] = stripped
    if state.sources:
        meta["taken_from"] = dict(state.sources)
    if state.optimizer_params and any(state.optimizer_params):
        meta["optimizer_param_names"] = list(state.optimizer_params)
    if state.converted:
        meta["converted"] = dict(state.converted)
    if state.unrepresentable:
        meta["unrepresentable"] = dict(state.unrepresentable)
    if state.previous_meta:
        meta["source_meta"] = state.previous_meta
    return meta


def tensorize(value: Any, _memo: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """Replace lazy leaves with torch objects: tensor references, arrays, devices and dtypes.

    A container shared by several parents is converted once and stays shared.

    Raises:
        UnsupportedFormatError: a quantization scheme this writer cannot rebuild.
    """
    import torch

    if isinstance(value, TensorRef):
        return _quantized(value) if value.quantization else value.materialize()
    if isinstance(value, DerivedTensor):
        return value.materialize()
    if isinstance(value, Device):
        return torch.device(value.spec)
    if isinstance(value, TorchMarker):
        return getattr(torch, value.name.rsplit(".", 1)[-1])
    if not isinstance(value, (dict, list, tuple)):
        if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
            import numpy

            return torch.from_numpy(numpy.array(value, copy=True))
        return value
    memo = {} if _memo is None else _memo
    known = memo.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    if isinstance(value, dict):
        out: Any = OrderedDict() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            out[key] = tensorize(item, memo)
    elif isinstance(value, list):
        out = [tensorize(v, memo) for v in value]
    else:
        out = tuple(tensorize(v, memo) for v in value)
    memo[id(value)] = (value, out)
    return out


def _quantized(ref: TensorRef) -> Any:
    import torch

    raw = ref.materialize()
    scheme = str(ref.quantization.get("scheme", ""))
    params = list(ref.quantization.get("params") or [])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        if scheme.endswith("per_tensor_affine") and len(params) >= 2:
            return torch._make_per_tensor_quantized_tensor(raw, float(params[0]), int(params[1]))
        if scheme.endswith("per_channel_affine") and len(params) >= 3:
            scales, zeros = (tensorize(p) for p in params[:2])
            return torch._make_per_channel_quantized_tensor(raw, scales, zeros, int(params[2]))
    raise UnsupportedFormatError(f"quantized tensor with scheme {scheme or 'unknown'} cannot be rebuilt; use --to safetensors")


def materialize_payload(payload: dict[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
    """The payload with real tensors; model tensors keep the storage sharing ``torch.load`` gave them."""
    out = dict(payload)
    refs = checkpoint.tensors
    if not any(getattr(ref, "quantization", None) for ref in refs.values()):
        model = OrderedDict(zip(payload["model_state_dict"], checkpoint.materialize().values()))
    else:
        model = OrderedDict((name, tensorize(ref)) for name, ref in payload["model_state_dict"].items())
    out["model_state_dict"] = model
    memo: dict[int, tuple[Any, Any]] = {}
    for key, value in payload.items():
        if key != "model_state_dict":
            out[key] = tensorize(value, memo)
    return out


def walk_tensors(value: Any, path: str = "", _seen: set[int] | None = None) -> Iterator[tuple[str, Any]]:
    """Every tensor in a nested structure with its dotted path; a shared container is walked once."""
    import torch

    if isinstance(value, torch.Tensor):
        yield path, value
        return
    if not isinstance(value, (dict, list, tuple)):
        return
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk_tensors(item, f"{path}.{key}" if path else str(key), seen)
    else:
        for index, item in enumerate(value):
            yield from walk_tensors(item, f"{path}.{index}" if path else str(index), seen)


def compare_structures(expected: Any, actual: Any, path: str = "", _same: set[tuple[int, int]] | None = None) -> str | None:
    """Where two nested structures first differ (keys, types, values, tensor bits), or ``None`` when equal.

    A pair of containers already found equal (shared objects on both sides) is not compared again.
    """
    import torch

    where = path or "top level"
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        if not (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)) or not same_tensor(expected, actual):
            return f"tensor {where} differs"
        return None
    if isinstance(expected, (Mapping, list, tuple)):
        same = set() if _same is None else _same
        pair = (id(expected), id(actual))
        if pair in same:
            return None
        problem = _compare_containers(expected, actual, path, same)
        if problem is None:
            same.add(pair)
        return problem
    if isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected) and math.isnan(actual):
        return None
    if type(expected) is not type(actual) or expected != actual:
        return f"value {where} differs ({expected!r:.40} vs {actual!r:.40})"
    return None


def _compare_containers(expected: Any, actual: Any, path: str, same: set[tuple[int, int]]) -> str | None:
    where = path or "top level"
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping) or list(expected.keys()) != list(actual.keys()):
            return f"keys of {where} differ"
        for key in expected:
            problem = compare_structures(expected[key], actual[key], f"{path}.{key}" if path else str(key), same)
            if problem:
                return problem
        return None
    if type(expected) is not type(actual) or len(expected) != len(actual):
        return f"{where} differs in type or length"
    for index, (a, b) in enumerate(zip(expected, actual)):
        problem = compare_structures(a, b, f"{path}.{index}" if path else str(index), same)
        if problem:
            return problem
    return None


def verify_normalized(path: str, expected: dict[str, Any], source: str) -> None:
    """Reload ``path`` with ``torch.load(weights_only=True)`` and compare everything, tensors bit for bit.

    Raises:
        VerificationError: the file does not load with weights_only, or anything differs.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(TypedStorage is deprecated|quantized tensor creation).*")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to reload is a verification failure
        raise VerificationError(f"the written file does not load with torch.load(weights_only=True): {error}", path=source) from None
    problem = compare_structures(expected, loaded)
    if problem:
        raise VerificationError(f"read back from the output: {problem}", path=source)


class NormalizedWriter(Writer):
    """A normalized torch checkpoint (DESIGN §3) that resumes training exactly."""

    name = "normalized"
    description = "torch checkpoint that loads with weights_only=True: model, optimizer, scheduler, epoch"
    suffixes = WRITER_SUFFIXES["normalized"]
    requires = ("torch",)

    def write(self, checkpoint: Checkpoint, dst: str, options: ConvertOptions) -> WriteReport:
        import torch

        from ckpt_migrate.reports.progress import phase

        label = os.path.basename(dst)
        payload, state = build_payload(checkpoint)
        with phase(f"materializing {len(checkpoint.tensors)} tensors", None):
            data = materialize_payload(payload, checkpoint)
        source = checkpoint.meta.get("source", dst)
        with atomic_path(dst, options.force) as tmp:
            with phase(f"saving {label}", None):
                torch.save(data, tmp)
            if options.verify:
                with phase(f"verifying {label}", None):
                    verify_normalized(tmp, data, source)
        tensors = list(walk_tensors(data))
        details = {key: data["meta"][key] for key in ("stripped_prefixes", "converted", "unrepresentable", "taken_from") if key in data["meta"]}
        details["keys"] = list(data)
        return WriteReport([dst], len(tensors), os.path.getsize(dst), options.verify, details)
