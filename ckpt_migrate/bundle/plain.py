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

_NUMPY_CODES = {"float64": "f8", "float32": "f4", "float16": "f2", "int64": "i8", "int32": "i4", "int16": "i2",
                "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8", "bool": "?"}
SCALAR_DTYPES = frozenset(_NUMPY_CODES) | {"bfloat16"}
DEFAULT_MAX_CHARS = 8_000_000
MAX_DEPTH = 12
SHARED_STRING = 256
_CONTAINERS = (dict, list, tuple, set, frozenset, StubObject, AllowedCall, argparse.Namespace)


class _Renderer:
    """One rendering: shared objects visited once (repeats become ``{"ref": path}``), output size bounded."""

    def __init__(self, max_items: int, max_chars: int) -> None:
        self.max_items = max_items
        self.budget = max_chars
        self.seen: dict[int, tuple[Any, str]] = {}
        self.cut = False

    def spend(self, chars: int) -> bool:
        self.budget -= chars
        if self.budget < 0:
            self.cut = True
        return not self.cut

    def render(self, value: Any, path: str, depth: int) -> Any:
        if self.cut or not self.spend(8):
            return "… (output limit reached)"
        if depth > MAX_DEPTH:
            return "…"
        shared = isinstance(value, _CONTAINERS) or (isinstance(value, str) and len(value) > SHARED_STRING)
        if shared:
            first = self.seen.get(id(value))
            if first is not None and first[0] is value:
                return {"ref": first[1]}
            self.seen[id(value)] = (value, path or "$")
        if isinstance(value, str):
            return value if self.spend(len(value)) else value[: max(0, len(value) + self.budget)] + "…"
        return self.leaf(value, path, depth)

    def child(self, value: Any, path: str, key: Any, depth: int) -> Any:
        return self.render(value, f"{path}.{inert_key(key)}" if path else inert_key(key), depth + 1)

    def items(self, pairs: list[tuple[Any, Any]], path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in pairs[: self.max_items]:
            name = plain_key(key)
            self.spend(len(name))
            out[name] = self.child(item, path, name, depth)
        if len(pairs) > self.max_items:
            out["…"] = f"{len(pairs) - self.max_items} more"
        return out

    def sequence(self, values: list[Any], path: str, depth: int) -> list[Any]:
        out = [self.child(v, path, i, depth) for i, v in enumerate(values[: self.max_items])]
        if len(values) > self.max_items:
            out.append(f"… {len(values) - self.max_items} more")
        return out

    def leaf(self, value: Any, path: str, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return plain_int(value)
        if isinstance(value, float):
            return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
        if isinstance(value, TensorRef):
            out_tensor: dict[str, Any] = {"tensor": value.dtype.name, "shape": list(value.shape)}
            if value.numel == 1 and value.dtype.kind in ("float", "int", "uint", "bool") and value.dtype.name in SCALAR_DTYPES:
                out_tensor["value"] = tensor_scalar(value)
            return out_tensor
        if isinstance(value, StubObject):
            state = value.attributes or value.state
            out: dict[str, Any] = {"class": value.class_name}
            if state:
                out["state"] = self.child(state, path, "state", depth)
            if value.items:
                out["items"] = self.child(value.items, path, "items", depth)
            if value.listitems:
                out["list"] = self.child(value.listitems, path, "list", depth)
            return out
        if isinstance(value, AllowedCall):
            return {"call": value.func.dotted, "args": self.sequence(list(value.args), path, depth)}
        if isinstance(value, RefusedCall):
            return {"refused": value.func.dotted}
        if isinstance(value, (GlobalRef, TorchMarker, Device)):
            return str(value) if not isinstance(value, GlobalRef) else value.dotted
        if isinstance(value, argparse.Namespace):
            return {"namespace": self.items(list(vars(value).items()), path, depth + 1)}
        if isinstance(value, dict):
            return self.items(list(value.items()), path, depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self.sequence(list(value), path, depth)
        if isinstance(value, complex):
            return {"complex": [value.real, value.imag]}
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": len(value)}
        if isinstance(value, (slice, range)):
            return {type(value).__name__: [self.render(getattr(value, a), path, depth + 1) for a in ("start", "stop", "step")]}
        if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
            return value.isoformat()
        if isinstance(value, datetime.timedelta):
            return {"timedelta_seconds": value.total_seconds()}
        if isinstance(value, fractions.Fraction):
            return {"fraction": [plain_int(value.numerator), plain_int(value.denominator)]}
        if isinstance(value, (pathlib.PurePath, decimal.Decimal)):
            return _safe_str(value)
        if type(value).__module__ == "numpy":
            return self.numpy(value, path, depth)
        return f"<{type(value).__name__}>"

    def numpy(self, value: Any, path: str, depth: int) -> Any:
        import numpy

        if isinstance(value, numpy.ndarray):
            if value.size <= 8 and value.dtype.kind in "biufc":
                return {"ndarray": str(value.dtype), "shape": list(value.shape), "values": self.render(value.tolist(), path, depth + 1)}
            return {"ndarray": str(value.dtype), "shape": list(value.shape)}
        if isinstance(value, numpy.generic):
            return self.render(value.item(), path, depth + 1) if value.dtype.kind in "biufcUS" else f"<numpy.{value.dtype}>"
        if isinstance(value, numpy.dtype):
            return str(value)
        return f"<{type(value).__name__}>"


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__}>"


def plain_int(value: int) -> Any:
    """An int as JSON: itself, or ``{"int_hex": "0x…"}`` past Python's 4300-digit conversion limit.

    Args:
        value: any int.

    Returns:
        The int, or its exact hexadecimal text in a dict when it has more than 4000 decimal digits.
    """
    if isinstance(value, bool) or value.bit_length() <= 13_000:
        return value
    return {"int_hex": hex(value)}


def plain_key(key: Any) -> str:
    """A mapping key as a JSON object key (huge ints in hex, other objects by type)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        rendered = plain_int(key)
        return str(rendered) if isinstance(rendered, int) else rendered["int_hex"]
    if isinstance(key, (bool, float, type(None))):
        return str(key)
    if isinstance(key, tuple):
        return "(" + ", ".join(plain_key(k) for k in key[:8]) + (", …" if len(key) > 8 else "") + ")"
    return f"<{type(key).__name__}>"


def inert_key(key: Any) -> str:
    """A path segment for a reference: the key's text, cut to 64 characters."""
    text = key if isinstance(key, str) else str(key)
    return text if len(text) <= 64 else text[:64] + "…"


def to_plain(value: Any, depth: int = 0, max_items: int = 50, max_chars: int = DEFAULT_MAX_CHARS) -> Any:
    """A JSON-able rendering of an inert value.

    Shared objects (one list, dict, stub or long string reached from several places) are rendered
    once; later occurrences are ``{"ref": "<path of the first>"}``, so a memo DAG cannot blow up.
    Long containers are cut to ``max_items`` entries, nesting past 12 levels becomes ``"…"``, and
    once about ``max_chars`` characters are rendered the rest becomes ``"… (output limit reached)"``.

    Args:
        value: what a reader or extraction produced.
        depth: nesting already used by the caller.
        max_items: entries shown per container.
        max_chars: approximate bound on the rendered size.

    Returns:
        Plain JSON-able data (dicts with str keys, lists, str, int, float, bool, None).
    """
    return _Renderer(max_items, max_chars).render(value, "", depth)


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
    if isinstance(value, TensorRef) and value.numel == 1 and value.dtype.name in SCALAR_DTYPES:
        return tensor_scalar(value)
    return None


def tensor_scalar(ref: TensorRef) -> int | float | bool:
    """The single value of a one-element tensor reference, read without torch.

    Args:
        ref: a one-element reference whose dtype is in :data:`SCALAR_DTYPES`.

    Returns:
        The value as a Python number.

    Raises:
        KeyError: a dtype outside :data:`SCALAR_DTYPES` (float8, complex, quantized): callers check first.
    """
    import numpy

    names = _NUMPY_CODES
    size = ref.dtype.itemsize
    raw = ref.storage.source.read(ref.offset * size, size)
    if ref.dtype.name == "bfloat16":
        raw = (b"\x00\x00" + raw) if ref.byteorder == "little" else (raw + b"\x00\x00")
        code = "f4"
    else:
        code = names[ref.dtype.name]
    order = "<" if ref.byteorder == "little" else ">"
    return numpy.frombuffer(raw, dtype=numpy.dtype(order + code))[0].item()
