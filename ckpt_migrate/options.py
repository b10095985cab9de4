"""``ConvertOptions``: every flag of ``convert`` (and so of ``migrate``), defined, typed and validated once.

The CLI builds its click options from these fields (see :func:`ckpt_migrate.commands.common.convert_flags`),
the API builds the object from keyword arguments, and readers, transforms and writers read the fields
they need. A new flag is one field here, the code that uses it, and nothing else.

This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ckpt_migrate.errors import UsageError

DTYPE_CHOICES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
EXPORTERS = ("auto", "torchscript", "dynamo")


def _flag(group: str, decl: str, help: str, **click: Any) -> dict[str, Any]:
    """Field metadata: the CLI option's group (which commands show it), declaration and help text."""
    return {"group": group, "decl": decl, "help": help, "click": click}


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that shapes one conversion, from reading to verifying.

    Fields are grouped as the CLI shows them: ``read`` (every command that opens a file), ``calls``
    (``--strict-calls``: convert, inspect, scan, migrate),
    ``transform`` (convert and migrate), ``onnx`` (the ONNX writer) and ``write``.
    """

    to: str | None = field(default=None, metadata=_flag("convert", "--to", "Writer name (safetensors, onnx, normalized, dcp); default from DST's suffix.", metavar="FORMAT"))
    allow_calls: tuple[str, ...] = field(default=(), metadata=_flag("read", "--allow-call", "Accept a call to this callable as an inert record (never executed). Repeatable.", multiple=True, metavar="MODULE.NAME"))
    strict_calls: bool = field(default=False, metadata=_flag("calls", "--strict-calls", "Refuse (exit 3) any call outside the allowlist instead of keeping it as an inert record; --allow-call accepts one.", is_flag=True))
    schemas: tuple[str, ...] = field(default=(), metadata=_flag("transform", "--schema", "Key-renaming schema, applied in order. Repeatable.", multiple=True, metavar="ID|FILE"))
    strict_schemas: bool = field(default=False, metadata=_flag("transform", "--strict", "A schema rule that touches nothing is an error.", is_flag=True))
    select: str | None = field(default=None, metadata=_flag("transform", "--select", "Take the weights from this key of a bundle (dotted path allowed).", metavar="KEY"))
    ema: bool = field(default=False, metadata=_flag("transform", "--ema", "Take the EMA weights (state_dict_ema / model_ema / ema).", is_flag=True))
    tag: str | None = field(default=None, metadata=_flag("transform", "--tag", "DeepSpeed folders: read this checkpoint tag (global_stepN) instead of the one `latest` names.", metavar="TAG"))
    weights: str = field(default="master", metadata=_flag("transform", "--weights", "DeepSpeed ZeRO folders: master (fp32 weights from the optimizer partitions) or module (the module's own weights, stages 1-2).", choices=("master", "module"), show_default=True))
    arch: str | None = field(default=None, metadata=_flag("transform", "--arch", "Rebuild this architecture: vgg16, torchvision:resnet50, auto, or package.module:Class.", metavar="SPEC"))
    arch_kwargs: Mapping[str, Any] | None = field(default=None, metadata=_flag("transform", "--arch-kwargs", "Keyword arguments for the architecture builder, as JSON.", metavar="JSON"))
    dtype: str | None = field(default=None, metadata=_flag("transform", "--dtype", "Cast floating tensors (integer and bool tensors untouched).", choices=tuple(DTYPE_CHOICES)))
    strip_optimizer: bool = field(default=False, metadata=_flag("transform", "--strip-optimizer", "Drop optimizer, scheduler and scaler state.", is_flag=True))
    max_shard_size: str | None = field(default=None, metadata=_flag("transform", "--max-shard-size", "Shard safetensors output into a folder (e.g. 2GB).", metavar="SIZE"))
    dedupe_shared: bool = field(default=False, metadata=_flag("transform", "--dedupe-shared", "safetensors: write tensors that share storage once; aliases are recorded in the metadata.", is_flag=True))
    trust_modules: tuple[str, ...] = field(default=(), metadata=_flag("transform", "--trust-module", "Import your own classes under MODULE to rebuild full models. Repeatable.", multiple=True, metavar="MODULE"))
    input_shape: str | tuple[int, ...] | None = field(default=None, metadata=_flag("onnx", "--input-shape", "ONNX: example input shape, e.g. 1,3,224,224.", metavar="SHAPE"))
    opset: int | None = field(default=None, metadata=_flag("onnx", "--opset", "ONNX: opset version.", type=int))
    static: bool = field(default=False, metadata=_flag("onnx", "--static", "ONNX: fixed batch size instead of a dynamic batch axis.", is_flag=True))
    atol: float | None = field(default=None, metadata=_flag("onnx", "--atol", "ONNX: tolerance of the onnxruntime-vs-torch check.", type=float))
    exporter: str = field(default="auto", metadata=_flag("onnx", "--exporter", "ONNX: which torch exporter.", choices=EXPORTERS, show_default=True))
    verify: bool = field(default=True, metadata=_flag("write", "--no-verify", "Skip reading the output back (not recommended).", is_flag=True, negate=True))
    source_hash: bool = field(default=True, metadata=_flag("write", "--no-source-hash", "safetensors: do not record the source's sha256 in the metadata.", is_flag=True, negate=True))
    force: bool = field(default=False, metadata=_flag("write", "--force", "Overwrite an existing output.", is_flag=True))
    output_limit: bool = field(default=True, metadata=_flag("write", "--no-output-limit", "Allow an output larger than 4x the source's tensor bytes + 1 GiB (views or tied names written many times over).", is_flag=True, negate=True))
    stream: bool | None = None
    hf_layout: bool = False

    def __post_init__(self) -> None:
        for name in ("allow_calls", "schemas", "trust_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value or ()))
        if isinstance(self.arch_kwargs, str):
            object.__setattr__(self, "arch_kwargs", parse_arch_kwargs(self.arch_kwargs))
        self.validate()

    def validate(self) -> None:
        """Check every value once, so nothing downstream has to.

        Raises:
            UsageError: a value of the wrong kind or outside its choices; the message names the flag.
        """
        if self.dtype is not None and self.dtype != "keep" and self.dtype not in DTYPE_CHOICES:
            raise UsageError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
        if self.exporter not in EXPORTERS:
            raise UsageError(f"--exporter {self.exporter!r}: expected one of {', '.join(EXPORTERS)}")
        if self.arch_kwargs is not None and not isinstance(self.arch_kwargs, Mapping):
            raise UsageError(f"--arch-kwargs must be a JSON object such as '{{\"num_classes\": 10}}', got {self.arch_kwargs!r}")
        if self.max_shard_size is not None:
            parse_shard_size(self.max_shard_size)
        if self.opset is not None and (not isinstance(self.opset, int) or self.opset < 7):
            raise UsageError(f"--opset {self.opset!r}: expected an ONNX opset number such as 17 or 18")
        if self.atol is not None and (not isinstance(self.atol, (int, float)) or self.atol < 0 or self.atol != self.atol):
            raise UsageError(f"--atol {self.atol!r}: expected a tolerance >= 0")
        if isinstance(self.input_shape, str):
            object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        elif self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        for name in ("allow_calls", "schemas", "trust_modules"):
            if not all(isinstance(item, str) and item for item in getattr(self, name)):
                raise UsageError(f"{_decl(name)}: expected non-empty names, got {getattr(self, name)!r}")

    @classmethod
    def from_kwargs(cls, options: "ConvertOptions | None" = None, **kwargs: Any) -> "ConvertOptions":
        """Build options from keyword arguments, on top of ``options`` when given.

        Raises:
            TypeError: an unknown keyword (a typo must not be ignored silently).
            UsageError: a value fails :meth:`validate`.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if options is None:
            return cls(**kwargs)
        return dataclasses.replace(options, **kwargs) if kwargs else options

    def identity(self) -> dict[str, Any]:
        """The fields that shape an output (everything but verification and overwriting), JSON-ready.

        ``migrate`` digests this to decide whether an earlier output was made with the same options.
        """
        skip = {"verify", "force", "stream", "output_limit"}
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}


def _decl(name: str) -> str:
    for f in dataclasses.fields(ConvertOptions):
        if f.name == name and f.metadata:
            return f.metadata["decl"]
    return name


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    """Decode ``--arch-kwargs JSON`` (a JSON object); empty when not given.

    Raises:
        UsageError: the text is not JSON, or not a JSON object.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--arch-kwargs is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--arch-kwargs must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return value


_BINARY_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_shard_size(text: str | int) -> int:
    """Bytes from ``2GB``/``500MB``/``1.5GB`` (huggingface_hub's decimal units), ``2GiB`` or a plain byte count.

    Raises:
        UsageError: the size cannot be read or is not positive.
    """
    from huggingface_hub.serialization._base import parse_size_to_int

    raw = str(text).strip()
    upper = raw.upper()
    try:
        if upper.isdigit():
            size = int(upper)
        elif upper[-3:] in _BINARY_UNITS:
            size = int(float(upper[:-3]) * _BINARY_UNITS[upper[-3:]])
        else:
            size = parse_size_to_int(raw)
    except ValueError:
        raise UsageError(f"--max-shard-size {raw!r}: expected a size such as 2GB, 500MB, 4GiB or a byte count") from None
    if size <= 0:
        raise UsageError(f"--max-shard-size {raw!r} must be positive")
    return size


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` (or ``1x3x224x224``) as a tuple of positive ints.

    Raises:
        UsageError: not a list of at least two positive integers.
    """
    parts = [p for p in re.split(r"[,x×\s]+", text.strip().strip("()[]")) if p]
    if len(parts) < 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--input-shape {text!r}: expected positive integers such as 1,3,224,224")
    return tuple(int(p) for p in parts)
