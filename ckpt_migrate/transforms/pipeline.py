"""Transforms between reading and writing: dtype casts and optimizer stripping (schemas live in :mod:`.schemas`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor
from ckpt_migrate.errors import UsageError
from ckpt_migrate.bundle.keys import TRAINING_STATE_KEYS

DTYPE_CHOICES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cast_floating(checkpoint: Checkpoint, choice: str) -> Checkpoint:
    """Cast floating tensors to ``choice`` (fp32, fp16, bf16); integer, bool and complex tensors stay as they are.

    Raises:
        UsageError: ``choice`` is not one of fp32, fp16, bf16.
    """
    if choice not in DTYPE_CHOICES:
        raise UsageError(f"--dtype {choice!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    target = _dtypes.get(DTYPE_CHOICES[choice])
    out: "OrderedDict[str, Any]" = OrderedDict()
    for name, ref in checkpoint.tensors.items():
        if ref.dtype.is_floating and ref.dtype != target:
            out[name] = DerivedTensor(target, tuple(ref.shape), (ref,), _caster(target.name), f"cast to {target.name}",
                                      is_cast=True)
        else:
            out[name] = ref
    return replace(checkpoint, tensors=out)


def _caster(dtype_name: str) -> Any:
    def cast(tensor: Any) -> Any:
        import torch

        return tensor.to(getattr(torch, dtype_name))

    return cast


def strip_optimizer(checkpoint: Checkpoint) -> Checkpoint:
    """Drop optimizer, scheduler and scaler state from the extras (for inference artifacts)."""
    extras = {k: v for k, v in checkpoint.extras.items() if k not in TRAINING_STATE_KEYS}
    meta = dict(checkpoint.meta, stripped=sorted(set(checkpoint.extras) - set(extras)))
    return replace(checkpoint, extras=extras, meta=meta)
