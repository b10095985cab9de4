"""Resolve ``--target SPEC`` to the key → shape mapping a checkpoint should fit.

SPEC is a checkpoint file (its tensors are the reference key set, read safely) or an architecture:
a torchvision builder (``vgg16``, ``torchvision:resnet50``) or user code (``package.module:Class``,
``path/to/file.py:Class``, imported because the user named it). Architectures are built on torch's
meta device, so even a large model costs no memory and no initialization time.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ckpt_migrate.converters.filenames import CHECKPOINT_SUFFIXES, is_dcp_folder
from ckpt_migrate.errors import ArchitectureError, CkptMigrateError, UsageError

Shape = tuple[int, ...]


@dataclass
class Target:
    """A resolved target: its keys and shapes in state_dict order, a label, and where it came from.

    ``kind`` is ``"checkpoint"`` or ``"architecture"``; ``kwargs`` are the builder's keyword
    arguments for an architecture.
    """

    label: str
    kind: str
    shapes: "OrderedDict[str, Shape]"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (without the shapes)."""
        return {"target": self.label, "kind": self.kind, "keys": len(self.shapes), "kwargs": self.kwargs}


def is_checkpoint_path(spec: str) -> bool:
    """True when ``spec`` names an existing file or DCP folder rather than an architecture."""
    return os.path.isfile(spec) or is_dcp_folder(spec)


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` reads as a file path (a separator or a checkpoint suffix, and no ``:Class``)."""
    if ":" in spec and not spec.endswith(CHECKPOINT_SUFFIXES):
        return False
    return os.sep in spec or "/" in spec or spec.lower().endswith(CHECKPOINT_SUFFIXES)


def resolve_target(spec: Any, *, arch_kwargs: Mapping[str, Any] | None = None, select: str | None = None,
                   allow_calls: Iterable[str] = ()) -> Target:
    """Return the keys and shapes ``spec`` stands for.

    A checkpoint is opened with :func:`ckpt_migrate.api.load` (never executed; ``select`` and
    ``allow_calls`` apply to it). An architecture is built with ``weights=None`` on the meta device.

    Raises:
        UsageError: ``arch_kwargs`` given with a checkpoint target, or ``auto`` as a target.
        ArchitectureError: the architecture is unknown or cannot be built.
        CkptMigrateError: the checkpoint cannot be read (any subclass, naming the file).
    """
    if not isinstance(spec, str):
        return module_target(spec, dict(arch_kwargs or {}))
    if is_checkpoint_path(spec):
        if arch_kwargs:
            raise UsageError(f"--arch-kwargs applies to an architecture target, but {spec!r} is a checkpoint file")
        from ckpt_migrate.api import load

        checkpoint = load(spec, select=select, allow_calls=allow_calls, hash_source=False)
        shapes = OrderedDict((name, tuple(ref.shape)) for name, ref in checkpoint.tensors.items())
        return Target(spec, "checkpoint", shapes)
    return architecture_target(spec, dict(arch_kwargs or {}))


def module_target(target: Any, arch_kwargs: dict[str, Any]) -> Target:
    """The state_dict shapes of an ``nn.Module`` instance, or of an ``nn.Module`` class built on the meta device.

    Raises:
        TypeError: ``target`` is neither a module, a module class, nor a string.
        ArchitectureError: the class cannot be built with ``arch_kwargs``.
    """
    import torch

    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        label = f"{target.__module__}:{target.__qualname__}"
        try:
            with torch.device("meta"):
                target = target(**arch_kwargs)
        except Exception as error:
            raise ArchitectureError(f"--target {label}: calling it with {arch_kwargs} failed: {type(error).__name__}: {error}") from None
    elif isinstance(target, torch.nn.Module):
        label = f"{type(target).__module__}:{type(target).__qualname__}"
    else:
        raise TypeError(f"target must be an nn.Module, an nn.Module class, an architecture spec or a checkpoint path, "
                        f"not {type(target).__name__}")
    shapes = OrderedDict((name, tuple(int(s) for s in value.shape)) for name, value in target.state_dict().items())
    return Target(label, "architecture", shapes, dict(arch_kwargs))


def architecture_target(spec: str, arch_kwargs: dict[str, Any]) -> Target:
    """Build the architecture ``spec`` on the meta device and return its state_dict shapes.

    Raises:
        UsageError: ``spec`` is ``auto`` (a target must be named).
        ArchitectureError: the spec cannot be parsed, imported or built (the message says so, and
            when ``spec`` looks like a path, that no such file exists).
    """
    from ckpt_migrate.architectures.rebuild import build_model, parse_arch_spec

    if spec.strip() == "auto":
        raise UsageError("--target auto cannot work: name an architecture (vgg16, package.module:Class) or a checkpoint file")
    if looks_like_path(spec):
        raise CkptMigrateError("no such checkpoint file; --target takes an existing checkpoint or an architecture "
                               "(vgg16, torchvision:resnet50, package.module:Class)", path=spec)
    model, label, kwargs = _build_on_meta(build_model, parse_arch_spec(spec, flag="--target"), arch_kwargs)
    shapes = OrderedDict((name, tuple(int(s) for s in value.shape)) for name, value in model.state_dict().items())
    return Target(label, "architecture", shapes, dict(kwargs))


def _build_on_meta(build_model: Any, parsed: Any, arch_kwargs: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    import torch

    try:
        with torch.device("meta"):
            return build_model(parsed, None, arch_kwargs)
    except ArchitectureError as error:
        if "meta" not in str(error).lower():
            raise
    return build_model(parsed, None, arch_kwargs)
