"""What a file holds when it is not model weights, recognised before extraction; numpy weight dicts as tensors.

Optimizer and scheduler state_dicts, RNG state, training-argument objects and scikit-learn objects
are reported in one line (exit 1 for weight outputs) instead of being written as "weights".
Detectron2/Caffe2-style pickles (dicts of numpy arrays under ``model``/``blobs``/the top level)
become tensor references with dtype and bytes kept exactly. Torch-free.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef
from ckpt_migrate.unpickler.stubs import StubObject

RNG_KEYS = frozenset({"python", "numpy", "cpu", "cuda", "mps", "xpu", "npu", "hpu", "mlu", "musa", "xla", "torch", "random"})
CPU_RNG_BYTES = 5056
"""Size of ``torch.get_rng_state()`` (a uint8 tensor)."""
ARRAY_KEYS = ("model", "blobs")
KEEP_HINT = "use --to normalized to keep it"


@dataclass
class Content:
    """A recognised non-weight content: its kind, the one-line message, and the extras key it belongs under."""

    kind: str
    message: str
    extras_key: str


def _mapping(value: Any) -> dict | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, StubObject) and value.items:
        return value.items
    return None


def _is_uint8_tensor(value: Any) -> bool:
    return isinstance(value, TensorRef) and value.dtype.name == "uint8"


def classify(root: Any) -> Content | None:
    """Recognise optimizer/scheduler/RNG state, training arguments and scikit-learn objects.

    Args:
        root: what the reader found.

    Returns:
        The recognised content, or None when ``root`` may hold model weights.
    """
    mapping = _mapping(root)
    if mapping is not None:
        keys = {str(k) for k in mapping}
        if {"state", "param_groups"} <= keys and isinstance(mapping.get("param_groups"), (list, tuple)):
            return Content("optimizer", f"holds optimizer state (state, param_groups), no model weights — {KEEP_HINT}", "optimizer_state_dict")
        if "last_epoch" in keys and ({"base_lrs", "_step_count", "_last_lr"} & keys):
            return Content("scheduler", f"holds learning-rate scheduler state, no model weights — {KEEP_HINT}", "scheduler_state_dict")
        if keys and keys <= RNG_KEYS and ("cpu" in keys or "python" in keys) and (
                "cpu" not in keys or _is_uint8_tensor(mapping["cpu"])):
            return Content("rng", f"holds random-number-generator state ({', '.join(sorted(keys))}), no model weights — {KEEP_HINT}", "rng_state")
    if _is_uint8_tensor(root) and root.shape == (CPU_RNG_BYTES,):
        return Content("rng", f"holds a CPU random-number-generator state (torch.get_rng_state()), no model weights — {KEEP_HINT}", "rng_state")
    if isinstance(root, StubObject):
        name = root.class_name
        if name.startswith("sklearn.") or name.startswith("joblib."):
            return Content("sklearn", f"a scikit-learn object ({name}), not a torch checkpoint; no model weights", "object")
        if name.rsplit(".", 1)[-1].endswith("Arguments") or name.rsplit(".", 1)[-1] in ("TrainingArgs", "TrainArgs"):
            return Content("training_args", f"holds training arguments ({name}), no model weights — {KEEP_HINT}", "training_args")
    return None


_NUMPY_NAMES = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32",
                "uint64", "bool", "complex64", "complex128"}


def _is_numeric_array(value: Any) -> bool:
    return type(value).__name__ == "ndarray" and type(value).__module__ == "numpy" and value.dtype.name in _NUMPY_NAMES


def array_tensor(array: Any, name: str) -> TensorRef:
    """A tensor reference holding a numpy array's bytes exactly (dtype, shape and byte order kept).

    Args:
        array: a numeric numpy array.
        name: where it came from, for messages.

    Returns:
        A contiguous reference onto an in-memory storage.
    """
    import numpy

    data = numpy.ascontiguousarray(array).tobytes()
    dtype = _dtypes.get(array.dtype.name)
    byteorder = "big" if array.dtype.byteorder == ">" else "little"
    storage = StorageRef(f"<numpy {name}>", dtype, int(array.size), "cpu", ByteSource(f"<numpy {name}>", 0, len(data), buffer=data), byteorder)
    shape = tuple(int(s) for s in array.shape)
    stride: list[int] = []
    step = 1
    for size in reversed(shape):
        stride.insert(0, step)
        step *= size
    return TensorRef(storage, dtype, shape, tuple(stride))


def _array_dict(value: Any) -> bool:
    mapping = _mapping(value)
    if not mapping:
        return False
    arrays = [v for v in mapping.values() if _is_numeric_array(v)]
    return bool(arrays) and len(arrays) * 2 >= len(mapping)


def arrays_as_tensors(root: Any) -> Any:
    """``root`` with dicts of numpy arrays (top level, ``model``, ``blobs``) turned into tensor references.

    Args:
        root: what the reader found.

    Returns:
        ``root`` unchanged when it holds no such dict; otherwise a copy of its top-level dict with
        each array dict converted (non-array entries of those dicts are dropped from the weights and
        kept, with everything else, where they were).
    """
    mapping = _mapping(root)
    if mapping is None:
        return root
    if _array_dict(mapping):
        converted: "OrderedDict[str, Any]" = OrderedDict()
        for key, value in mapping.items():
            converted[key] = array_tensor(value, str(key)) if _is_numeric_array(value) else value
        return converted
    if not any(k in mapping and _array_dict(mapping[k]) for k in ARRAY_KEYS):
        return root
    out: "OrderedDict[str, Any]" = OrderedDict(mapping)
    for key in ARRAY_KEYS:
        if key in out and _array_dict(out[key]):
            inner = _mapping(out[key]) or {}
            out[key] = OrderedDict((str(k), array_tensor(v, f"{key}.{k}")) for k, v in inner.items() if _is_numeric_array(v))
    return out
