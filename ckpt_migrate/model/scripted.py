"""What a TorchScript archive holds once its declarations are applied: a state_dict and what it leaves out."""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef


@dataclass
class LeftOut:
    """A tensor of the source that is not written, and why (``path`` says where it was found)."""

    path: str
    ref: TensorRef
    reason: str


@dataclass
class ScriptedState:
    """A scripted module's ``state_dict()`` (packed parameters unpacked, constants recovered).

    ``left_out`` lists every other tensor of the archive with the reason it is not a weight;
    ``module`` is the pickled root object, kept for inspection.
    """

    tensors: "OrderedDict[str, TensorRef]" = field(default_factory=OrderedDict)
    left_out: list[LeftOut] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    module: object = None


_SCALAR_PACKING = {"float32": "<f", "int64": "<q", "float64": "<d"}


def scalar_tensor(value: float | int, dtype: str, name: str) -> TensorRef:
    """A zero-dimensional tensor reference whose bytes live in memory (``torch.tensor(value)`` of ``dtype``).

    Args:
        value: the number.
        dtype: ``float32``, ``float64`` or ``int64``.
        name: where the value came from, for messages.

    Returns:
        A reference to a new one-element storage.
    """
    data = struct.pack(_SCALAR_PACKING[dtype], value)
    kind = _dtypes.get(dtype)
    storage = StorageRef(f"<{name}>", kind, 1, "cpu", ByteSource(f"<{name}>", 0, len(data), buffer=data))
    return TensorRef(storage, kind, (), ())
