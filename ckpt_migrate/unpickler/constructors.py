"""Allowlisted constructors of plain values: containers, byte strings, numbers, dates, paths, devices.

Each checks its arguments and builds a harmless value of a fixed type; none calls anything a
file names.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import decimal
import fractions
import pathlib
import re
from typing import Any, Callable

from ckpt_migrate.errors import CorruptFileError, LimitExceededError
from ckpt_migrate.unpickler.context import CallContext, Handler, arg as _arg
from ckpt_migrate.unpickler.stubs import Device, GlobalRef, PickledOrderedDict, StubObject, TorchMarker


_CONCRETE = (list, tuple, set, frozenset, dict, str, bytes, bytearray, collections.deque)


_SLOT_BYTES = 16
"""Bytes charged per element of a container a constructor copies (a pointer plus hash-table slack)."""


def _items(ctx: CallContext, value: Any, what: str, hashed: bool = False) -> Any:
    """``value`` when it is a container the pickle built, else an error; the copy about to be made is charged.

    The same memoised list can be passed to a constructor many times, so every copy costs its
    length in work and bytes; ``hashed`` also charges hashing its items (sets, dict keys).
    """
    if value is None:
        return ()
    if not isinstance(value, _CONCRETE):
        raise CorruptFileError(f"{what} of {type(value).__name__}, not a list, tuple, set, dict or string", path=ctx.path)
    ctx.budget.charge_ops(len(value))
    ctx.budget.charge_alloc(_SLOT_BYTES * len(value), f"{what}(...) of {len(value)} items")
    if hashed:
        ctx.hash(value)
    return value


def _ordered_dict(ctx: CallContext, args: tuple) -> PickledOrderedDict:
    result = PickledOrderedDict()
    if args and args[0] is not None:
        result.update(_items(ctx, args[0], "OrderedDict", hashed=True))
    return result


_SAFE_FACTORIES = {"builtins.list", "builtins.dict", "builtins.set", "builtins.int", "builtins.float",
                   "builtins.str", "builtins.tuple", "collections.OrderedDict"}


def _defaultdict(ctx: CallContext, args: tuple) -> collections.defaultdict:
    factory = _arg(args, 0)
    if isinstance(factory, GlobalRef) and factory.dotted in _SAFE_FACTORIES:
        real = {"builtins.list": list, "builtins.dict": dict, "builtins.set": set, "builtins.int": int,
                "builtins.float": float, "builtins.str": str, "builtins.tuple": tuple,
                "collections.OrderedDict": collections.OrderedDict}[factory.dotted]
        return collections.defaultdict(real)
    return collections.defaultdict(None)


def _set(ctx: CallContext, args: tuple) -> Any:
    return _to_set(list(_items(ctx, args[0], "set", hashed=True)) if args else [], frozen=False)


def _frozenset(ctx: CallContext, args: tuple) -> Any:
    return _to_set(list(_items(ctx, args[0], "frozenset", hashed=True)) if args else [], frozen=True)


def _from_items(kind: type, what: str, hashed: bool = False) -> Handler:
    def handler(ctx: CallContext, args: tuple) -> Any:
        try:
            return kind(_items(ctx, args[0], what, hashed)) if args else kind()
        except (TypeError, ValueError) as error:
            raise CorruptFileError(f"{what}(...): {error}", path=ctx.path) from None

    return handler


def _deque(ctx: CallContext, args: tuple) -> collections.deque:
    maxlen = _arg(args, 1)
    if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 0):
        raise CorruptFileError(f"deque maxlen {maxlen!r:.40}", path=ctx.path)
    return collections.deque(_items(ctx, _arg(args, 0), "deque"), maxlen)


def _byte_string(kind: type) -> Handler:
    """``bytes``/``bytearray`` as pickles use them: from text and an encoding, from bytes, or from a short list."""

    def handler(ctx: CallContext, args: tuple) -> Any:
        if not args:
            return kind()
        source = args[0]
        if isinstance(source, str):
            return kind(_codecs_encode(ctx, (source, _arg(args, 1, "utf-8"))))
        if isinstance(source, (bytes, bytearray)):
            ctx.budget.charge_alloc(len(source), f"{kind.__name__}(...) of {len(source)} bytes")
            return kind(source)
        if isinstance(source, int) and not isinstance(source, bool):
            if not 0 <= source <= ctx.limits.max_alloc_bytes:
                raise LimitExceededError(f"{kind.__name__}({source}) would allocate more than {ctx.limits.max_alloc_bytes} bytes", path=ctx.path)
            ctx.budget.charge_alloc(source, f"{kind.__name__}({source})")
            return kind(source)
        if isinstance(source, (list, tuple)) and all(isinstance(v, int) and 0 <= v < 256 for v in source):
            ctx.budget.charge_ops(len(source))
            return kind(source)
        raise CorruptFileError(f"{kind.__name__} of {type(source).__name__}", path=ctx.path)

    return handler


_DECIMAL_TEXT = re.compile(r"-?(\d{1,400}(\.\d{0,400})?|\.\d{1,400})([eE][-+]?\d{1,4})?|-?(Infinity|inf|NaN|sNaN)")
_FRACTION_TEXT = re.compile(r"-?\d{1,400}(/\d{1,400})?")


def _decimal(ctx: CallContext, args: tuple) -> decimal.Decimal:
    text = _arg(args, 0, "0")
    if not isinstance(text, str) or not _DECIMAL_TEXT.fullmatch(text):
        raise CorruptFileError(f"decimal.Decimal of {text!r:.60}", path=ctx.path)
    return decimal.Decimal(text)


def _fraction(ctx: CallContext, args: tuple) -> fractions.Fraction:
    text = _arg(args, 0, "0")
    if not isinstance(text, str) or not _FRACTION_TEXT.fullmatch(text):
        raise CorruptFileError(f"fractions.Fraction of {text!r:.60}", path=ctx.path)
    return fractions.Fraction(text)


def _to_set(items: list, frozen: bool) -> Any:
    try:
        return frozenset(items) if frozen else set(items)
    except TypeError:
        return list(items)


def _codecs_encode(ctx: CallContext, args: tuple) -> bytes:
    text, encoding = args[0], _arg(args, 1, "utf-8")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        raise CorruptFileError(f"_codecs.encode with {encoding!r} is not a plain text encoding", path=ctx.path)
    ctx.budget.charge_alloc(len(text) * (4 if encoding in ("utf-8", "utf8") else 1), f"_codecs.encode of {len(text)} characters")
    return text.encode(encoding)



def _torch_device(ctx: CallContext, args: tuple) -> Device:
    spec = str(args[0]) if args else "cpu"
    if len(args) > 1 and args[1] is not None:
        spec = f"{spec}:{args[1]}"
    return Device(spec)


def _safe(call: Callable[..., Any]) -> Handler:
    def handler(ctx: CallContext, args: tuple) -> Any:
        try:
            return call(*args)
        except (TypeError, ValueError, OverflowError) as error:
            raise CorruptFileError(f"{getattr(call, '__name__', call)}{args!r:.60}: {error}", path=ctx.path) from None

    return handler


def _pure_path(flavour: type) -> Handler:
    def handler(ctx: CallContext, args: tuple) -> Any:
        if not all(isinstance(part, str) for part in args):
            raise CorruptFileError("a path made of something other than strings", path=ctx.path)
        return flavour(*args)

    return handler


def _namespace(ctx: CallContext, args: tuple) -> argparse.Namespace:
    return argparse.Namespace()


def _none(ctx: CallContext, args: tuple) -> None:
    return None


def _identity(ctx: CallContext, args: tuple) -> Any:
    return args[0] if args else None



CONSTRUCTORS: dict[str, Handler] = {
    "torch.nn.backends.thnn._get_thnn_function_backend": _none,
    "torch.Size": _from_items(tuple, "torch.Size"),
    "torch.device": _torch_device,
    "torch.serialization._get_layout": lambda ctx, args: TorchMarker(str(_arg(args, 0))),
    "torch.jit._pickle.restore_type_tag": _identity,
    "torch.jit._pickle.build_intlist": _identity,
    "torch.jit._pickle.build_doublelist": _identity,
    "torch.jit._pickle.build_boollist": _identity,
    "torch.jit._pickle.build_tensorlist": _identity,
    "collections.OrderedDict": _ordered_dict,
    "collections.defaultdict": _defaultdict,
    "collections.Counter": _from_items(collections.Counter, "Counter", hashed=True),
    "collections.deque": _deque,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.slice": _safe(slice),
    "builtins.complex": _safe(complex),
    "builtins.range": _safe(range),
    "builtins.bytearray": _byte_string(bytearray),
    "builtins.bytes": _byte_string(bytes),
    "builtins.list": _from_items(list, "list"),
    "builtins.tuple": _from_items(tuple, "tuple"),
    "builtins.dict": _from_items(dict, "dict", hashed=True),
    "builtins.int": _safe(int),
    "builtins.float": _safe(float),
    "builtins.bool": _safe(bool),
    "builtins.str": _safe(lambda *a: str(*a[:1]) if a and isinstance(a[0], str) else ""),
    "_codecs.encode": _codecs_encode,
    "argparse.Namespace": _namespace,
    "datetime.datetime": _safe(datetime.datetime),
    "datetime.date": _safe(datetime.date),
    "datetime.time": _safe(datetime.time),
    "datetime.timedelta": _safe(datetime.timedelta),
    "datetime.timezone": _safe(datetime.timezone),
    "decimal.Decimal": _decimal,
    "fractions.Fraction": _fraction,
    "pathlib.PosixPath": _pure_path(pathlib.PurePosixPath),
    "pathlib.PurePosixPath": _pure_path(pathlib.PurePosixPath),
    "pathlib.WindowsPath": _pure_path(pathlib.PureWindowsPath),
    "pathlib.PureWindowsPath": _pure_path(pathlib.PureWindowsPath),
    "pathlib.Path": _pure_path(pathlib.PurePosixPath),
    "pathlib._local.PosixPath": _pure_path(pathlib.PurePosixPath),
    "pathlib._local.WindowsPath": _pure_path(pathlib.PureWindowsPath),
}

CLASS_CONSTRUCTORS: dict[str, Handler] = {
    "collections.OrderedDict": _ordered_dict,
    "argparse.Namespace": _namespace,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.object": lambda ctx, args: StubObject(GlobalRef("builtins", "object")),
    "builtins.dict": lambda ctx, args: {},
    "builtins.list": lambda ctx, args: [],
    "collections.defaultdict": _defaultdict,
}
