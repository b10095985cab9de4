"""What the safe interpreter lets a pickle name, build and call.

Three tables, all keyed by dotted name after Python 2 name mapping:

- ``CALLABLES``: names a pickle may *call* (``REDUCE``); each maps to a fixed, harmless
  constructor of ours (tensor rebuilders make lazy :class:`TensorRef` objects).
- ``CLASSES``: names a pickle may *instantiate* (``NEWOBJ``) as real, harmless objects.
- ``VALUES``: names a pickle may *mention* as plain values (dtypes, ``numpy.ndarray``...).

Everything else mentioned becomes a stub class; calling it is refused. Names in
:func:`gadget_reason` are code-execution gadgets: refused always, and ``--allow-call`` cannot
accept them.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import decimal
import fractions
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, LimitExceededError
from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits
from ckpt_migrate.unpickler.stubs import Device, GlobalRef, PickledOrderedDict, StubObject, TorchMarker

Handler = Callable[["CallContext", tuple], Any]


class CallContext:
    """What a handler may use: the file name for errors, the limits, and a way to open nested pickles.

    ``merge`` records the verdicts of a nested pickle in the enclosing one; ``hashing`` charges
    the hashing of keys a handler is about to insert into a dict or set.
    """

    def __init__(
        self,
        path: str,
        load_nested: Callable[[bytes], Any] | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        merge: Callable[[Iterable[Any]], None] | None = None,
        hashing: Callable[[Any], None] | None = None,
    ) -> None:
        self.path = path
        self.load_nested = load_nested
        self.limits = limits
        self.merge = merge
        self.hashing = hashing


@dataclass
class NestedResult:
    """What a nested loader found: the payload's top object and its globals' verdicts (by name)."""

    value: Any
    globals: dict[str, Any] = field(default_factory=dict)


def _arg(args: tuple, index: int, default: Any = None) -> Any:
    return args[index] if len(args) > index else default


def _expect_storage(ctx: CallContext, value: Any) -> StorageRef:
    if not isinstance(value, StorageRef):
        raise CorruptFileError(f"a tensor rebuilder got {type(value).__name__} where a storage was expected", path=ctx.path)
    return value


def _int_tuple(ctx: CallContext, value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CorruptFileError(f"tensor {what} is not a tuple of integers: {value!r:.80}", path=ctx.path)
    return tuple(value)


_INT64_MAX = (1 << 63) - 1


def _check_geometry(ctx: CallContext, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> None:
    """Refuse sizes, strides and offsets no real tensor has, before any arithmetic trusts them."""
    limit = ctx.limits.max_tensor_elements
    if len(shape) > 64:
        raise CorruptFileError(f"tensor declares {len(shape)} dimensions", path=ctx.path)
    for value in (*shape, *strides, offset):
        if not 0 <= value <= _INT64_MAX:
            raise CorruptFileError(f"tensor size, stride or offset {value} is outside 0..2**63-1", path=ctx.path)
    count = 1
    for size in shape:
        count *= size
    if count > limit or any(size > limit for size in shape):
        raise LimitExceededError(f"tensor of shape {list(shape)} declares more than {limit} elements", path=ctx.path)


def _make_tensor(ctx: CallContext, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False, dtype: _dtypes.DType | None = None) -> TensorRef:
    storage = _expect_storage(ctx, storage)
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise CorruptFileError("tensor storage offset is not an integer", path=ctx.path)
    shape = _int_tuple(ctx, size, "size")
    strides = _int_tuple(ctx, stride, "stride") if stride is not None else _contiguous_strides(shape)
    _check_geometry(ctx, shape, strides, offset)
    element_type = dtype or storage.dtype
    if element_type.name != storage.dtype.name:
        storage = _retyped_storage(ctx, storage, element_type)
    return TensorRef(storage, element_type, shape, strides, offset, bool(requires_grad))


def _retyped_storage(ctx: CallContext, storage: StorageRef, dtype: _dtypes.DType) -> StorageRef:
    if storage.nbytes % dtype.itemsize:
        raise CorruptFileError(f"storage of {storage.nbytes} bytes cannot hold {dtype.name} elements", path=ctx.path)
    cache = storage.__dict__.setdefault("_retyped", {})
    if dtype.name not in cache:
        cache[dtype.name] = StorageRef(storage.key, dtype, storage.nbytes // dtype.itemsize, storage.location, storage.source, storage.byteorder)
    return cache[dtype.name]


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _rebuild_tensor(ctx: CallContext, args: tuple) -> TensorRef:
    return _make_tensor(ctx, *args[:4])


def _rebuild_tensor_v2(ctx: CallContext, args: tuple) -> TensorRef:
    return _make_tensor(ctx, args[0], args[1], args[2], args[3], _arg(args, 4, False))


def _rebuild_tensor_v3(ctx: CallContext, args: tuple) -> TensorRef:
    marker = _arg(args, 6)
    dtype = _dtypes.from_torch_name(marker.name) if isinstance(marker, TorchMarker) else None
    if dtype is None:
        raise CorruptFileError(f"_rebuild_tensor_v3 names an unknown dtype {marker!r}", path=ctx.path)
    return _make_tensor(ctx, args[0], args[1], args[2], args[3], _arg(args, 4, False), dtype)


def _expect_tensor(ctx: CallContext, value: Any) -> TensorRef:
    if not isinstance(value, TensorRef):
        raise CorruptFileError(f"a parameter rebuilder got {type(value).__name__} where a tensor was expected", path=ctx.path)
    return value


def _rebuild_parameter(ctx: CallContext, args: tuple) -> TensorRef:
    tensor = _expect_tensor(ctx, args[0])
    tensor.requires_grad = bool(_arg(args, 1, True))
    return tensor


def _rebuild_qtensor(ctx: CallContext, args: tuple) -> TensorRef:
    tensor = _make_tensor(ctx, args[0], args[1], args[2], args[3], _arg(args, 5, False))
    params = _arg(args, 4, ())
    scheme = params[0].name if params and isinstance(params[0], TorchMarker) else str(_arg(params, 0))
    tensor.quantization = {"scheme": scheme, "params": list(params[1:])}
    return tensor


def _rebuild_from_type_v2(ctx: CallContext, args: tuple) -> Any:
    func, new_type, func_args = args[0], args[1], _arg(args, 2, ())
    name = func.dotted if isinstance(func, GlobalRef) else ""
    handler = CALLABLES.get(name)
    if handler is None or name not in _TENSOR_REBUILDERS:
        raise CorruptFileError(f"_rebuild_from_type_v2 wraps {name or type(func).__name__}, which is not a tensor rebuilder", path=ctx.path)
    tensor = handler(ctx, tuple(func_args))
    if isinstance(tensor, TensorRef) and isinstance(new_type, GlobalRef) and new_type.dotted not in ("torch.Tensor", "torch.nn.parameter.Parameter"):
        tensor.subclass = new_type.dotted
    return tensor


def _rebuild_device_tensor_from_numpy(ctx: CallContext, args: tuple) -> TensorRef:
    array = args[0]
    import numpy

    if not isinstance(array, numpy.ndarray) or array.dtype.hasobject:
        raise CorruptFileError("_rebuild_device_tensor_from_numpy expects a numeric numpy array", path=ctx.path)
    array = numpy.ascontiguousarray(array)
    dtype = _dtypes.from_torch_name(str(array.dtype))
    if dtype is None:
        raise CorruptFileError(f"numpy dtype {array.dtype} has no torch equivalent", path=ctx.path)
    data = array.tobytes()
    byteorder = "big" if array.dtype.byteorder == ">" else "little"
    storage = StorageRef("numpy", dtype, array.size, str(_arg(args, 2, "cpu")), ByteSource(ctx.path, 0, len(data), buffer=data), byteorder)
    return TensorRef(storage, dtype, array.shape, _contiguous_strides(array.shape), 0, bool(_arg(args, 3, False)))


def _load_from_bytes(ctx: CallContext, args: tuple) -> Any:
    if ctx.load_nested is None or not args or not isinstance(args[0], (bytes, bytearray)):
        raise CorruptFileError("torch.storage._load_from_bytes without a byte payload", path=ctx.path)
    try:
        found = ctx.load_nested(bytes(args[0]))
    except CkptMigrateError as error:
        if ctx.merge is not None:
            ctx.merge(getattr(error, "globals", {}).values())
        raise
    if isinstance(found, NestedResult):
        if ctx.merge is not None:
            ctx.merge(found.globals.values())
        return found.value
    return found


_CONCRETE = (list, tuple, set, frozenset, dict, str, bytes, bytearray, collections.deque)


def _items(ctx: CallContext, value: Any, what: str) -> Any:
    """``value`` when it is a container the pickle built (its size is already paid for), else an error."""
    if value is None:
        return ()
    if not isinstance(value, _CONCRETE):
        raise CorruptFileError(f"{what} of {type(value).__name__}, not a list, tuple, set, dict or string", path=ctx.path)
    return value


def _ordered_dict(ctx: CallContext, args: tuple) -> PickledOrderedDict:
    result = PickledOrderedDict()
    if args and args[0] is not None:
        result.update(_items(ctx, args[0], "OrderedDict"))
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
    return _to_set(list(_items(ctx, args[0], "set")) if args else [], frozen=False)


def _frozenset(ctx: CallContext, args: tuple) -> Any:
    return _to_set(list(_items(ctx, args[0], "frozenset")) if args else [], frozen=True)


def _from_items(kind: type, what: str) -> Handler:
    def handler(ctx: CallContext, args: tuple) -> Any:
        try:
            return kind(_items(ctx, args[0], what)) if args else kind()
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
            return kind(source)
        if isinstance(source, int) and not isinstance(source, bool):
            if not 0 <= source <= ctx.limits.max_alloc_bytes:
                raise LimitExceededError(f"{kind.__name__}({source}) would allocate more than {ctx.limits.max_alloc_bytes} bytes", path=ctx.path)
            return kind(source)
        if isinstance(source, (list, tuple)) and all(isinstance(v, int) and 0 <= v < 256 for v in source):
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


def _numpy_reconstruct(ctx: CallContext, args: tuple) -> "NumpyArrayBuilder":
    return NumpyArrayBuilder()


class NumpyArrayBuilder:
    """What ``numpy.core.multiarray._reconstruct`` returns before ``BUILD`` gives it data."""

    def build(self, ctx: CallContext, state: Any) -> Any:
        import numpy

        if not isinstance(state, tuple) or len(state) != 5:
            raise CorruptFileError("numpy array state is not (version, shape, dtype, fortran, data)", path=ctx.path)
        _, shape, dtype, fortran, data = state
        if isinstance(dtype, NumpyDTypeBuilder):
            dtype = dtype.dtype
        if not isinstance(dtype, numpy.dtype):
            raise CorruptFileError("numpy array state has no dtype", path=ctx.path)
        shape = _int_tuple(ctx, shape, "shape")
        if dtype.hasobject:
            return list(data) if isinstance(data, (list, tuple)) else data
        if isinstance(data, str):
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise CorruptFileError("numpy array data is not bytes", path=ctx.path)
        count = 1
        for size in shape:
            count *= size
        if count * dtype.itemsize != len(data):
            raise CorruptFileError(f"numpy array of shape {list(shape)} needs {count * dtype.itemsize} bytes, found {len(data)}", path=ctx.path)
        return numpy.frombuffer(bytes(data), dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


class NumpyDTypeBuilder:
    """A ``numpy.dtype`` whose byte order arrives later through ``BUILD``."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def build(self, ctx: CallContext, state: Any) -> Any:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            if state[1] in ("<", ">"):
                return self.dtype.newbyteorder(state[1])
        return self.dtype


def _numpy_dtype(ctx: CallContext, args: tuple) -> NumpyDTypeBuilder:
    import numpy

    spec = _arg(args, 0)
    if not isinstance(spec, str) or len(spec) > 16:
        raise CorruptFileError(f"numpy.dtype of {spec!r:.40} is not a simple type code", path=ctx.path)
    try:
        return NumpyDTypeBuilder(numpy.dtype(spec))
    except TypeError as error:
        raise CorruptFileError(f"numpy.dtype({spec!r}): {error}", path=ctx.path) from None


def _numpy_scalar(ctx: CallContext, args: tuple) -> Any:
    import numpy

    dtype, data = args[0], _arg(args, 1)
    if isinstance(dtype, NumpyDTypeBuilder):
        dtype = dtype.dtype
    if not isinstance(dtype, numpy.dtype):
        raise CorruptFileError("numpy scalar without a dtype", path=ctx.path)
    if dtype.hasobject:
        return data
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise CorruptFileError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes", path=ctx.path)
    return numpy.frombuffer(bytes(data), dtype=dtype)[0]


def _codecs_encode(ctx: CallContext, args: tuple) -> bytes:
    text, encoding = args[0], _arg(args, 1, "utf-8")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        raise CorruptFileError(f"_codecs.encode with {encoding!r} is not a plain text encoding", path=ctx.path)
    return text.encode(encoding)


def _reconstructor(ctx: CallContext, args: tuple) -> Any:
    cls, state = args[0], _arg(args, 2)
    if not isinstance(cls, GlobalRef):
        raise CorruptFileError("copyreg._reconstructor without a class", path=ctx.path)
    factory = CLASSES.get(cls.dotted)
    if factory is not None:
        return factory(ctx, ())
    return StubObject(cls, args=(state,) if state is not None else ())


def _newobj(ctx: CallContext, args: tuple) -> Any:
    cls = _arg(args, 0)
    if not isinstance(cls, GlobalRef):
        raise CorruptFileError("copyreg.__newobj__ without a class", path=ctx.path)
    factory = CLASSES.get(cls.dotted)
    return factory(ctx, tuple(args[1:])) if factory else StubObject(cls, args=tuple(args[1:]))


def _newobj_ex(ctx: CallContext, args: tuple) -> Any:
    cls, cls_args, kwargs = _arg(args, 0), _arg(args, 1, ()), _arg(args, 2, {})
    if not isinstance(cls, GlobalRef):
        raise CorruptFileError("copyreg.__newobj_ex__ without a class", path=ctx.path)
    cls_args = tuple(cls_args) if isinstance(cls_args, (tuple, list)) else ()
    factory = CLASSES.get(cls.dotted)
    if factory:
        return factory(ctx, cls_args)
    return StubObject(cls, args=cls_args, kwargs=dict(kwargs) if isinstance(kwargs, dict) else {})


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


_TENSOR_REBUILDERS = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_device_tensor_from_numpy",
}

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")

CALLABLES: dict[str, Handler] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_device_tensor_from_numpy": _rebuild_device_tensor_from_numpy,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._utils._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": _rebuild_parameter,
    "torch.storage._load_from_bytes": _load_from_bytes,
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
    "collections.Counter": _from_items(collections.Counter, "Counter"),
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
    "builtins.dict": _from_items(dict, "dict"),
    "builtins.int": _safe(int),
    "builtins.float": _safe(float),
    "builtins.bool": _safe(bool),
    "builtins.str": _safe(lambda *a: str(*a[:1]) if a and isinstance(a[0], str) else ""),
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
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
for _core in _NUMPY_CORE:
    CALLABLES[f"{_core}._reconstruct"] = _numpy_reconstruct
    CALLABLES[f"{_core}.scalar"] = _numpy_scalar
CALLABLES["numpy.dtype"] = _numpy_dtype

CLASSES: dict[str, Handler] = {
    "collections.OrderedDict": _ordered_dict,
    "argparse.Namespace": _namespace,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.object": lambda ctx, args: StubObject(GlobalRef("builtins", "object")),
    "builtins.dict": lambda ctx, args: {},
    "builtins.list": lambda ctx, args: [],
    "collections.defaultdict": _defaultdict,
}

_TORCH_DTYPE_NAMES = [d.name for d in _dtypes.DTYPES.values()] + [
    "float", "double", "half", "long", "int", "short", "cfloat", "cdouble", "chalf",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "quint2x4", "bits8", "bits16",
]
_TORCH_MARKERS = ["strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn",
                  "contiguous_format", "channels_last", "channels_last_3d", "preserve_format",
                  "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
                  "per_channel_affine_float_qparams"]

VALUES: dict[str, Any] = {f"torch.{name}": TorchMarker(f"torch.{name}") for name in _TORCH_DTYPE_NAMES + _TORCH_MARKERS}
for _name in ["numpy.ndarray", "numpy.dtype", "builtins.object", "builtins.list", "builtins.dict", "builtins.set",
              "builtins.int", "builtins.float", "builtins.str", "builtins.tuple", "builtins.bytes",
              "collections.OrderedDict", "torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.Parameter",
              "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
              "torch._utils._rebuild_qtensor", "torch._utils._rebuild_tensor_v3"]:
    VALUES.setdefault(_name, None)


def storage_dtype(name: str) -> _dtypes.DType | None:
    """The element type of an allowlisted storage class name (``torch.FloatStorage``, ``torch.cuda.HalfStorage``)."""
    if not (name.startswith("torch.") and name.endswith("Storage")):
        return None
    if name.count(".") > 2 or (name.count(".") == 2 and not name.startswith("torch.cuda.")):
        if name not in ("torch.storage.UntypedStorage", "torch.storage.TypedStorage"):
            return None
    return _dtypes.from_storage_name(name)


_GADGET_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "runpy", "importlib", "pickle", "_pickle", "cPickle",
    "pickletools", "marshal", "ctypes", "_ctypes", "shutil", "socket", "timeit", "cProfile", "profile", "pdb", "bdb",
    "code", "codeop", "pty", "commands", "popen2", "webbrowser", "multiprocessing", "concurrent", "asyncio",
    "threading", "_thread", "signal", "io", "_io", "tempfile", "glob", "zipimport", "types", "gc", "inspect",
    "functools", "operator", "_operator", "pydoc", "platform", "distutils", "setuptools", "pip", "sysconfig", "site",
    "linecache", "smtplib", "ftplib", "http", "urllib", "requests", "telnetlib", "dill", "cloudpickle", "joblib",
    "yaml", "jinja2", "_posixsubprocess", "posixpath", "ntpath", "zipfile", "tarfile", "sqlite3", "venv", "ensurepip",
    "imp", "builtin", "trace", "tracemalloc", "faulthandler", "atexit", "readline", "rlcompleter", "xmlrpc",
    "logging", "unittest", "doctest", "idlelib", "tkinter", "turtle", "mmap", "fcntl", "resource", "select",
    "selectors", "ssl", "shelve", "dbm", "copy", "weakref", "contextlib", "abc", "pkgutil", "modulefinder",
    "codecs", "antigravity", "this", "_winapi", "msvcrt", "winreg", "_osx_support", "_aix_support", "compileall",
    "py_compile", "zipapp", "_bootlocale", "_imp", "_frozen_importlib", "_frozen_importlib_external", "_sitebuiltins",
    "spawn", "pexpect", "sh", "plumbum", "fabric", "paramiko", "numexpr", "sympy", "pandas.io", "IPython",
}
_GADGET_INNER = {
    "os", "posix", "nt", "sys", "subprocess", "builtins", "runpy", "importlib", "pickle", "cPickle",
    "marshal", "ctypes", "_ctypes", "shutil", "socket", "pty", "multiprocessing", "_posixsubprocess", "dill",
    "cloudpickle", "joblib", "commands", "_imp", "_frozen_importlib", "_frozen_importlib_external",
}
_GADGET_FUNCTIONS = {
    "system", "popen", "popen2", "popen3", "popen4", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve",
    "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "execl", "execle", "execlp", "execlpe", "execv", "execve",
    "execvp", "execvpe", "eval", "exec", "execfile", "compile", "__import__", "import_module", "getattr", "setattr",
    "delattr", "attrgetter", "methodcaller", "loads", "load_module", "exec_module", "run_path", "run_module",
    "check_output", "check_call", "Popen", "getoutput", "getstatusoutput", "rmtree", "breakpoint", "set_trace",
    "fork", "forkpty", "kill", "killpg", "load_inline", "load_library", "runstring", "_forward_from_src",
}
_GADGET_NAMES = {
    "torch.load", "torch.hub", "torch.jit", "torch.serialization", "torch._C", "torch.utils.cpp_extension",
    "torch._dynamo", "torch._inductor", "torch.fx", "torch.package", "torch.ops", "torch.library",
    "torch.storage", "torch.distributed", "torch.multiprocessing", "torch.utils.data", "torch._ops",
    "torch.compile", "torch.export", "torch.utils.collect_env", "torch.testing", "torch.backends",
    "torch.utils.benchmark", "torch.utils.checkpoint", "torch.utils.bottleneck", "torch.func", "torch.vmap",
    "torch._classes", "torch.classes", "torch._higher_order_ops", "torch._export", "torch._functorch",
    "torch.cuda.memory", "torch.utils._config_module", "torch._jit_internal", "torch._sources", "torch.onnx",
    "numpy.load", "numpy.loads", "numpy.lib", "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib",
    "numpy.fromfile", "numpy.memmap", "numpy.save", "numpy.savez", "numpy.savetxt", "numpy.loadtxt", "numpy.genfromtxt",
    "numpy.core._internal", "numpy._core._internal", "numpy.core.numeric.load", "numpy.compat", "numpy.core.records",
    "numpy._core.records", "numpy.rec", "numpy.core.memmap", "numpy._core.memmap", "numpy.core.multiarray.fromfile",
    "numpy._core.multiarray.fromfile", "numpy.core._methods", "numpy._core._methods", "numpy._pytesttester",
    "torch._utils._rebuild_sparse_tensor",
}
_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "range", "bytearray", "bytes", "list", "tuple", "dict",
                  "int", "float", "bool", "str", "object"}
_SAFE_IN_GADGET_PREFIX = {"torch.storage._load_from_bytes", "torch.storage.UntypedStorage", "torch.storage.TypedStorage", "torch.serialization._get_layout",
                          "torch.jit._pickle.restore_type_tag", "torch.jit._pickle.build_intlist",
                          "torch.jit._pickle.build_doublelist", "torch.jit._pickle.build_boollist",
                          "torch.jit._pickle.build_tensorlist", "copyreg._reconstructor", "copyreg.__newobj__"}
_DCP_METADATA = {  # torch.distributed.checkpoint .metadata records: inert stubs, never imported
    f"torch.distributed.checkpoint.metadata.{n}" for n in
    ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {"torch.distributed.checkpoint.filesystem._StorageInfo",
     "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
     "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING"}
_SAFE_IN_GADGET_PREFIX |= _DCP_METADATA
for _enum in ("torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING", "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING"):
    CALLABLES[_enum] = _identity


_NEVER = "a known code-execution gadget, never allowed (not even with --allow-call)"


def gadget_reason(dotted: str) -> str | None:
    """Why ``dotted`` is a known code-execution gadget that can never be allowed, or ``None``.

    Checks every part of a dotted name, so re-exports (``torch.os.system``) and attribute chains
    (``os.path.join.__globals__``) are caught as well as direct names.
    """
    if dotted in _SAFE_IN_GADGET_PREFIX:
        return None
    parts = dotted.split(".")
    name = parts[-1]
    if any(p.startswith("__") and p.endswith("__") and p not in ("__main__", "__builtin__", "__torch__", "__newobj__", "__newobj_ex__") for p in parts[1:]):
        return "reaches into interpreter internals through a dunder attribute"
    if parts[0] == "builtins":
        return None if name in _SAFE_BUILTINS and len(parts) == 2 else "builtins can evaluate code, open files or import modules"
    for module in (parts[0], ".".join(parts[:2])):
        if module in _GADGET_MODULES:
            return f"module {module} can run commands, code or file operations"
    for prefix in _GADGET_NAMES:
        if dotted == prefix or dotted.startswith(prefix + "."):
            return f"{prefix} can load or execute code"
    inner = next((p for p in parts[1:-1] if p in _GADGET_INNER), None)
    if inner is not None:
        return f"reaches module {inner} through an attribute of {parts[0]}"
    if name in _GADGET_FUNCTIONS and dotted not in CALLABLES:
        return f"{name} runs commands, code or loaders wherever it is re-exported"
    return None


def classify(dotted: str, allow_calls: frozenset[str] | set[str] = frozenset()) -> tuple[str, str]:
    """The verdict on a mention of ``dotted`` before any call: ``(verdict, reason)``.

    ``refused`` for gadgets (with why, and that ``--allow-call`` cannot accept them), ``allowed``
    for allowlisted names, ``stub`` for everything else (an inert stand-in; calling it is refused).
    """
    gadget = gadget_reason(dotted)
    if gadget:
        reason = f"{gadget}; {_NEVER}"
        if dotted in allow_calls:
            reason += "; --allow-call was given for it and was ignored"
        return "refused", reason
    if dotted in CALLABLES or dotted in VALUES or dotted in CLASSES or storage_dtype(dotted):
        return "allowed", ""
    return "stub", ""


HASHING = {"builtins.set", "builtins.frozenset", "builtins.dict", "collections.OrderedDict", "collections.Counter"}
"""Allowlisted constructors that hash their first argument's items (the interpreter charges the work)."""
