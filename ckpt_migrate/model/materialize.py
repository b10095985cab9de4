"""Turning lazy tensor references into torch tensors (the only module of the read path that imports torch)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

from ckpt_migrate.model.checkpoint import StorageRef, TensorRef

_QUANTIZED_REPR = {"qint8": "int8", "quint8": "uint8", "qint32": "int32", "quint4x2": "uint8"}


def torch_dtype(name: str) -> Any:
    """The torch dtype for a canonical element-type name (quantized types as their integer representation)."""
    import torch

    return getattr(torch, _QUANTIZED_REPR.get(name, name))


def storage_tensor(storage: StorageRef) -> Any:
    """The whole storage as a flat tensor in native (little-endian) byte order."""
    import torch

    dtype = torch_dtype(storage.dtype.name)
    if storage.nbytes == 0:
        return torch.empty(0, dtype=dtype)
    raw = bytearray(storage.source.read(0, storage.nbytes))
    if storage.byteorder == "big" and storage.dtype.itemsize > 1:
        width = storage.dtype.itemsize
        parts = 2 if storage.dtype.kind == "complex" else 1
        step = width // parts
        swapped = bytearray(len(raw))
        for start in range(step):
            swapped[start::step] = raw[step - 1 - start::step]
        raw = swapped
    return torch.frombuffer(raw, dtype=dtype)


def _view(base: Any, ref: TensorRef) -> Any:
    import torch

    if ref.numel == 0:
        return torch.empty(ref.shape, dtype=base.dtype)
    return torch.as_strided(base, ref.shape, ref.stride, ref.offset)


def materialize(ref: TensorRef) -> Any:
    """A new contiguous torch tensor with ``ref``'s values."""
    return _view(storage_tensor(ref.storage), ref).contiguous().clone()


def materialize_all(refs: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Name → tensor; tensors that share a storage are views of one base, as ``torch.load`` gives them."""
    bases: dict[int, Any] = {}
    out: "OrderedDict[str, Any]" = OrderedDict()
    for name, ref in refs.items():
        if not isinstance(ref, TensorRef):
            out[name] = ref.materialize()
            continue
        key = id(ref.storage)
        if key not in bases:
            bases[key] = storage_tensor(ref.storage)
        out[name] = _view(bases[key], ref)
    return out
