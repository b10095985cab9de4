"""Writer for safetensors files: contiguous copies, provenance metadata, bit-for-bit verification."""

from __future__ import annotations

import json
import os
from typing import Any

from ..atomic import atomic_path
from ..checkpoint import Checkpoint
from ..errors import UnsupportedFormatError, VerificationError
from ..plain import scalar, to_plain
from .base import WriteOptions, WriteReport, Writer

SCALAR_EXTRAS = ("epoch", "loss", "step", "global_step", "best_acc", "acc", "best_prec1", "best_loss")


def safetensors_metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """str → str metadata: provenance, the bundle's scalar extras as JSON, quantization parameters."""
    meta = checkpoint.meta
    out = {"format": "pt"}
    for key in ("source", "source_sha256", "reader", "tool", "kind"):
        if meta.get(key) is not None:
            out[key] = str(meta[key])
    if meta.get("schemas"):
        out["schemas"] = json.dumps(meta["schemas"])
    for key, value in checkpoint.extras.items():
        number = scalar(value)
        if number is not None and (key in SCALAR_EXTRAS or isinstance(number, (int, float))) and not isinstance(number, str):
            out[str(key)] = json.dumps(number)
    quantized = {name: ref.quantization for name, ref in checkpoint.tensors.items() if getattr(ref, "quantization", None)}
    if quantized:
        out["quantization"] = json.dumps(to_plain(quantized))
    for key, value in (meta.get("safetensors_metadata") or {}).items():
        out.setdefault(key, value)
    return out


def check_representable(checkpoint: Checkpoint) -> None:
    """Refuse element types safetensors cannot store.

    Raises:
        UnsupportedFormatError: a tensor's dtype has no safetensors code.
    """
    for name, ref in checkpoint.tensors.items():
        if ref.dtype.safetensors is None and ref.dtype.kind != "quantized":
            raise UnsupportedFormatError(
                f"tensor {name!r} is {ref.dtype.name}, which safetensors cannot store; use --to normalized, or --dtype to cast",
                path=checkpoint.meta.get("source"),
            )


def bytes_equal(a: Any, b: Any) -> bool:
    """True when two tensors have the same dtype, shape and bytes (NaNs compare by bit pattern)."""
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def verify_file(path: str, expected: dict[str, Any], source: str) -> None:
    """Read ``path`` back and compare every tensor with ``expected``.

    Raises:
        VerificationError: a key is missing or extra, or any tensor differs in dtype, shape or bits.
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        keys = set(handle.keys())
        if keys != set(expected):
            missing = sorted(set(expected) - keys)[:5]
            extra = sorted(keys - set(expected))[:5]
            raise VerificationError(f"written file has different keys (missing {missing}, extra {extra})", path=source)
        for name, tensor in expected.items():
            if not bytes_equal(handle.get_tensor(name), tensor):
                raise VerificationError(f"tensor {name!r} read back from the output differs from the source", path=source)


class SafetensorsWriter(Writer):
    """One ``.safetensors`` file; tied tensors are written under every name."""

    name = "safetensors"
    description = "safetensors file (or sharded folder with --max-shard-size)"
    suffixes = (".safetensors",)
    requires = ("safetensors", "torch")

    def write(self, checkpoint: Checkpoint, dst: str, options: WriteOptions) -> WriteReport:
        from safetensors.torch import save_file

        check_representable(checkpoint)
        tensors = {name: tensor.contiguous().clone() for name, tensor in checkpoint.materialize().items()}
        metadata = safetensors_metadata(checkpoint)
        source = checkpoint.meta.get("source", dst)
        with atomic_path(dst, options.force) as tmp:
            save_file(tensors, tmp, metadata=metadata)
            if options.verify:
                verify_file(tmp, tensors, source)
        size = os.path.getsize(dst)
        return WriteReport([dst], len(tensors), size, options.verify, {"metadata": metadata})
