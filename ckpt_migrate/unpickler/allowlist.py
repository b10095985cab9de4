"""The allowlist: what a pickle may name, build and call, as three tables keyed by dotted name.

- ``CALLABLES``: names a pickle may *call* (``REDUCE``); each maps to a fixed, harmless constructor
  of ours (:mod:`.rebuilders` for tensors and arrays, :mod:`.constructors` for plain values).
- ``CLASSES``: names a pickle may *instantiate* (``NEWOBJ``) as real, harmless objects.
- ``VALUES``: names a pickle may *mention* as plain values (dtypes, ``numpy.ndarray``...).

What happens to every other name is decided by :mod:`.policy`.
"""

from __future__ import annotations

from typing import Any

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.errors import CorruptFileError
from ckpt_migrate.unpickler.constructors import CLASS_CONSTRUCTORS, CONSTRUCTORS
from ckpt_migrate.unpickler.context import CallContext, Handler, arg as _arg
from ckpt_migrate.unpickler.rebuilders import REBUILDERS
from ckpt_migrate.unpickler.stubs import GlobalRef, StubObject, TorchMarker


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



CLASSES: dict[str, Handler] = dict(CLASS_CONSTRUCTORS)

CALLABLES: dict[str, Handler] = {
    **CONSTRUCTORS,
    **REBUILDERS,
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
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


DCP_METADATA = frozenset({
    f"torch.distributed.checkpoint.metadata.{n}" for n in
    ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {"torch.distributed.checkpoint.filesystem._StorageInfo",
     "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
     "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING"})
"""torch.distributed.checkpoint ``.metadata`` records: inert stubs, never imported."""
for _enum in ("torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING", "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING"):
    CALLABLES[_enum] = lambda ctx, args: args[0] if args else None

HASHING = {"builtins.set", "builtins.frozenset", "builtins.dict", "collections.OrderedDict", "collections.Counter"}
"""Allowlisted constructors that hash their first argument's items (the interpreter charges the work)."""


def is_allowlisted(dotted: str) -> bool:
    """True when ``dotted`` is in one of the three tables or names a storage class."""
    return dotted in CALLABLES or dotted in VALUES or dotted in CLASSES or storage_dtype(dotted) is not None
