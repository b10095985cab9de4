"""Torch-free table of the element types checkpoints hold.

Maps the names a pickle uses (``FloatStorage``, ``torch.float16``) and the codes safetensors uses
(``F16``) to one canonical name (``float16``) with its item size, so readers and the streaming
writer never need to import torch to plan bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """One element type: canonical name, bytes per element, safetensors code and kind."""

    name: str
    itemsize: int
    safetensors: str | None
    kind: str  # "float", "int", "uint", "bool", "complex", "quantized"

    @property
    def is_floating(self) -> bool:
        return self.kind == "float"


_TABLE = [
    DType("float64", 8, "F64", "float"),
    DType("float32", 4, "F32", "float"),
    DType("float16", 2, "F16", "float"),
    DType("bfloat16", 2, "BF16", "float"),
    DType("float8_e4m3fn", 1, "F8_E4M3", "float"),
    DType("float8_e5m2", 1, "F8_E5M2", "float"),
    DType("int64", 8, "I64", "int"),
    DType("int32", 4, "I32", "int"),
    DType("int16", 2, "I16", "int"),
    DType("int8", 1, "I8", "int"),
    DType("uint8", 1, "U8", "uint"),
    DType("uint16", 2, "U16", "uint"),
    DType("uint32", 4, "U32", "uint"),
    DType("uint64", 8, "U64", "uint"),
    DType("bool", 1, "BOOL", "bool"),
    DType("complex64", 8, "C64", "complex"),
    DType("complex128", 16, None, "complex"),
    DType("complex32", 4, None, "complex"),
    DType("qint8", 1, None, "quantized"),
    DType("quint8", 1, None, "quantized"),
    DType("qint32", 4, None, "quantized"),
    DType("quint4x2", 1, None, "quantized"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _TABLE if d.safetensors}

_STORAGE_NAMES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "UntypedStorage": "uint8",
}

_TORCH_ATTR_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}


def from_storage_name(name: str) -> DType | None:
    """Return the element type of a storage class name such as ``FloatStorage`` or ``torch.cuda.HalfStorage``."""
    short = name.rsplit(".", 1)[-1]
    dtype_name = _STORAGE_NAMES.get(short)
    return DTYPES[dtype_name] if dtype_name else None


def from_torch_name(name: str) -> DType | None:
    """Return the element type named like a torch dtype attribute (``float16``, ``torch.half``)."""
    short = name.rsplit(".", 1)[-1]
    short = _TORCH_ATTR_ALIASES.get(short, short)
    return DTYPES.get(short)


def get(name: str) -> DType:
    """Return the element type with canonical ``name``.

    Raises:
        KeyError: the name is not a known element type.
    """
    return DTYPES[name]
