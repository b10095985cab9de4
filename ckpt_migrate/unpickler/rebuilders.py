"""Allowlisted rebuilders of tensors, storages and numpy arrays: they make lazy references and checked arrays.

Tensor rebuilders never read tensor bytes: they make :class:`TensorRef` objects (byte ranges of the
file) after checking sizes, strides and offsets. ``_load_from_bytes`` opens a nested payload through
the same interpreter and rules.
"""

from __future__ import annotations

from typing import Any

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, LimitExceededError
from ckpt_migrate.model.layout import contiguous_strides
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef
from ckpt_migrate.unpickler.context import CallContext, Handler, NestedResult, arg as _arg
from ckpt_migrate.unpickler.stubs import GlobalRef, TorchMarker


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
    strides = _int_tuple(ctx, stride, "stride") if stride is not None else contiguous_strides(shape)
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
    handler = TENSOR_REBUILDERS.get(name)
    if handler is None:
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
    ctx.budget.charge_alloc(array.nbytes, f"a tensor of {array.nbytes} bytes from a numpy array")
    array = numpy.ascontiguousarray(array)
    dtype = _dtypes.from_torch_name(str(array.dtype))
    if dtype is None:
        raise CorruptFileError(f"numpy dtype {array.dtype} has no torch equivalent", path=ctx.path)
    data = array.tobytes()
    byteorder = "big" if array.dtype.byteorder == ">" else "little"
    storage = StorageRef("numpy", dtype, array.size, str(_arg(args, 2, "cpu")), ByteSource(ctx.path, 0, len(data), buffer=data), byteorder)
    return TensorRef(storage, dtype, array.shape, contiguous_strides(array.shape), 0, bool(_arg(args, 3, False)))


def _load_from_bytes(ctx: CallContext, args: tuple) -> Any:
    if ctx.load_nested is None or not args or not isinstance(args[0], (bytes, bytearray)):
        raise CorruptFileError("torch.storage._load_from_bytes without a byte payload", path=ctx.path)
    ctx.budget.open_nested()
    ctx.budget.charge_alloc(len(args[0]), f"a nested payload of {len(args[0])} bytes")
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
        ctx.budget.charge_alloc(len(data), f"a numpy array of {len(data)} bytes")
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



TENSOR_REBUILDERS: dict[str, Handler] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_device_tensor_from_numpy": _rebuild_device_tensor_from_numpy,
}
"""The rebuilders ``_rebuild_from_type_v2`` may wrap."""

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")

REBUILDERS: dict[str, Handler] = {
    **TENSOR_REBUILDERS,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._utils._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": _rebuild_parameter,
    "torch.storage._load_from_bytes": _load_from_bytes,
    "numpy.dtype": _numpy_dtype,
}
for _core in _NUMPY_CORE:
    REBUILDERS[f"{_core}._reconstruct"] = _numpy_reconstruct
    REBUILDERS[f"{_core}.scalar"] = _numpy_scalar
