"""Inert values as plain JSON-able data, for ``inspect``, metadata and reports."""

from __future__ import annotations

import argparse
import datetime
import decimal
import fractions
import pathlib
from typing import Any

from ckpt_migrate.model.checkpoint import TensorRef
from ckpt_migrate.unpickler import AllowedCall, Device, GlobalRef, RefusedCall, StubObject, TorchMarker


def to_plain(value: Any, depth: int = 0, max_items: int = 50) -> Any:
    """A JSON-able rendering of an inert value; long containers are cut to ``max_items`` entries."""
    if depth > 12:
        return "…"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, TensorRef):
        out_tensor: dict[str, Any] = {"tensor": value.dtype.name, "shape": list(value.shape)}
        if value.numel == 1 and value.dtype.kind in ("float", "int", "uint", "bool") and value.dtype.name != "bfloat16":
            out_tensor["value"] = tensor_scalar(value)
        return out_tensor
    if isinstance(value, StubObject):
        state = value.attributes or value.state
        out: dict[str, Any] = {"class": value.class_name}
        if state:
            out["state"] = to_plain(state, depth + 1, max_items)
        if value.items:
            out["items"] = to_plain(value.items, depth + 1, max_items)
        if value.listitems:
            out["list"] = to_plain(value.listitems, depth + 1, max_items)
        return out
    if isinstance(value, AllowedCall):
        return {"call": value.func.dotted, "args": to_plain(list(value.args), depth + 1, max_items)}
    if isinstance(value, RefusedCall):
        return {"refused": value.func.dotted}
    if isinstance(value, (GlobalRef, TorchMarker, Device)):
        return str(value) if not isinstance(value, GlobalRef) else value.dotted
    if isinstance(value, argparse.Namespace):
        return {"namespace": to_plain(vars(value), depth + 1, max_items)}
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): to_plain(v, depth + 1, max_items) for k, v in items[:max_items]}
        if len(items) > max_items:
            out["…"] = f"{len(items) - max_items} more"
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        out_list = [to_plain(v, depth + 1, max_items) for v in items[:max_items]]
        if len(items) > max_items:
            out_list.append(f"… {len(items) - max_items} more")
        return out_list
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if isinstance(value, range):
        return {"range": [value.start, value.stop, value.step]}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return {"timedelta_seconds": value.total_seconds()}
    if isinstance(value, (pathlib.PurePath, decimal.Decimal, fractions.Fraction)):
        return str(value)
    module = type(value).__module__
    if module == "numpy":
        import numpy

        if isinstance(value, numpy.ndarray):
            if value.size <= 8:
                return {"ndarray": str(value.dtype), "shape": list(value.shape), "values": to_plain(value.tolist(), depth + 1)}
            return {"ndarray": str(value.dtype), "shape": list(value.shape)}
        if isinstance(value, numpy.generic):
            return to_plain(value.item(), depth + 1)
        if isinstance(value, numpy.dtype):
            return str(value)
    return f"<{type(value).__name__}>"


def scalar(value: Any) -> int | float | str | bool | None:
    """A JSON scalar for a plain number, numpy scalar or one-element tensor reference; ``None`` otherwise."""
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value
    if type(value).__module__ == "numpy":
        import numpy

        if isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
            return value.item()
        return None
    if isinstance(value, TensorRef) and value.numel == 1 and value.dtype.kind in ("float", "int", "uint", "bool"):
        return tensor_scalar(value)
    return None


def tensor_scalar(ref: TensorRef) -> int | float | bool:
    """The single value of a one-element tensor reference, read without torch."""
    import numpy

    names = {"float64": "f8", "float32": "f4", "float16": "f2", "int64": "i8", "int32": "i4", "int16": "i2",
             "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8", "bool": "?"}
    size = ref.dtype.itemsize
    raw = ref.storage.source.read(ref.offset * size, size)
    if ref.dtype.name == "bfloat16":
        raw = (b"\x00\x00" + raw) if ref.byteorder == "little" else (raw + b"\x00\x00")
        code = "f4"
    else:
        code = names[ref.dtype.name]
    order = "<" if ref.byteorder == "little" else ">"
    return numpy.frombuffer(raw, dtype=numpy.dtype(order + code))[0].item()
