"""Rebuild the model a checkpoint's weights belong to, ready to run (for ONNX export).

Which model is decided, in order, by: ``--arch`` when given; the class names a whole-model pickle
recorded (torchvision classes are rebuilt through their real builder, classes under a
``--trust-module`` through the user's own code); otherwise identification from the tensors.
A whole model of any other class (a ``__main__`` class from a training script) cannot be rebuilt:
its ``forward`` is not in the file, so the error names the ways out. torch is imported on use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ckpt_migrate.errors import ArchitectureError, UsageError
from ckpt_migrate.architectures.identify import builder_info, identify
from ckpt_migrate.architectures.rebuild import ArchSpec, build_model, load_weights_strict

if TYPE_CHECKING:
    import torch

WRAPPER_CLASSES = frozenset({
    "torch.nn.parallel.data_parallel.DataParallel",
    "torch.nn.parallel.distributed.DistributedDataParallel",
    "torch._dynamo.eval_frame.OptimizedModule",
})
TORCHVISION_PREFIXES = ("torchvision.models.", "__torch__.torchvision.models.")
WEIGHTS_ONLY_HINT = "or export the weights only: ckpt-migrate convert SRC weights.safetensors"


@dataclass
class RebuiltModel:
    """A model with the checkpoint's weights loaded, and how it was chosen.

    ``builder`` is a torchvision builder name or the user's ``package.module:Class``; ``family`` is
    the torchvision module kind (classification, detection, segmentation, video, optical_flow,
    quantization) or None for user code; ``how`` is ``arch``, ``auto``, ``full_model`` or ``trusted``.
    """

    model: "torch.nn.Module"
    builder: str
    kwargs: dict[str, Any]
    family: str | None
    how: str
    loaded: int = 0
    notes: list[str] = field(default_factory=list)


def model_class(classes: Sequence[str]) -> str | None:
    """The class of the whole model a pickle held: the first recorded class that is not a wrapper."""
    for name in classes:
        if name not in WRAPPER_CLASSES:
            return name
    return None


def is_torchvision_class(name: str) -> bool:
    """True for a torchvision model class, pickled or scripted (``__torch__.torchvision.models…``)."""
    return name.startswith(TORCHVISION_PREFIXES)


def check_trust_modules(trust_modules: Iterable[str]) -> list[str]:
    """The ``--trust-module`` entries, refusing ``__main__``.

    Raises:
        UsageError: ``__main__`` was named (it is never trusted: a training script cannot be imported).
    """
    trusted = list(trust_modules)
    for name in trusted:
        if name == "__main__" or name.startswith("__main__."):
            raise UsageError("--trust-module __main__ is not allowed: a training script's classes cannot be imported; "
                             "name an importable class with --arch package.module:Class")
    return trusted


def trusted_module_of(class_name: str, trust_modules: Iterable[str]) -> str | None:
    """The ``--trust-module`` entry that covers ``class_name`` (its module or a parent package), if any."""
    module = class_name.rpartition(".")[0]
    for trusted in trust_modules:
        if module == trusted or module.startswith(trusted + "."):
            return trusted
    return None


def cannot_rebuild(class_name: str) -> ArchitectureError:
    """The error for a whole model whose class code is not available, naming the ways out."""
    if class_name.startswith("__torch__."):
        module, _, attr = class_name.removeprefix("__torch__.").rpartition(".")
        spec = f"{module}:{attr}" if module and not module.startswith("__") else "package.module:Class"
        return ArchitectureError(
            f"cannot rebuild the whole model of class {class_name}, a TorchScript class: ONNX export needs its forward(), "
            f"and ckpt-migrate never runs the code/ the file holds (torch.jit.load would). Name the architecture with "
            f"--arch {spec} if that class is importable here (and --arch-kwargs JSON for its constructor), or --arch NAME "
            f"for a torchvision builder, {WEIGHTS_ONLY_HINT}")
    module = class_name.rpartition(".")[0]
    where = ("defined in the training script (__main__)" if module == "__main__"
             else "whose code is not in the file (only its weights are)")
    trust = "" if module == "__main__" or not module else f", or --trust-module {module.split('.')[0]} if that code is importable here"
    return ArchitectureError(
        f"cannot rebuild the whole model of class {class_name}, {where}: its forward() is needed for ONNX export. "
        f"Name the class to rebuild with --arch package.module:Class (and --arch-kwargs JSON for its constructor){trust}, "
        f"{WEIGHTS_ONLY_HINT}")


@functools.lru_cache(maxsize=None)
def _builders_by_module() -> dict[str, tuple[str, ...]]:
    import torchvision

    out: dict[str, list[str]] = {}
    for name in torchvision.models.list_models():
        out.setdefault(torchvision.models.get_model_builder(name).__module__, []).append(name)
    return {module: tuple(names) for module, names in out.items()}


def torchvision_builder_for(class_name: str, shapes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The builder and kwargs of a pickled torchvision model class, from the class's module and the weights.

    Builders defined in the class's module are tried first; a class from an older torchvision
    whose module moved falls back to identification over every builder.

    Raises:
        ArchitectureError: no builder fits the weights exactly (the message lists the nearest).
    """
    module = class_name.removeprefix("__torch__.").rpartition(".")[0]
    candidates = _builders_by_module().get(module, ())
    if candidates:
        found = identify(shapes, builders=candidates)
        if found.exact:
            return found.exact[0].builder, dict(found.exact[0].kwargs)
    found = identify(shapes)
    if found.exact:
        return found.exact[0].builder, dict(found.exact[0].kwargs)
    raise ArchitectureError(f"the whole model of class {class_name} does not fit any torchvision builder: {found.describe()}")


def choose_model(shapes: Mapping[str, Any], classes: Sequence[str], *, arch: str | None = None,
                 arch_kwargs: dict[str, Any] | None = None,
                 trust_modules: Iterable[str] = ()) -> tuple[Any, str, dict[str, Any], str, list[str]]:
    """Build (without weights) the model for these tensors: ``(model, builder, kwargs, how, notes)``.

    Raises:
        ArchitectureError: nothing fits, user code fails, or a whole model's class cannot be rebuilt.
        UsageError: ``--trust-module __main__``.
    """
    trust = check_trust_modules(trust_modules)
    top = model_class(classes)
    overrides = dict(arch_kwargs or {})
    if arch and arch != "auto":
        model, builder, kwargs = build_model(arch, shapes, arch_kwargs)
        return model, builder, kwargs, "arch", []
    if top is not None and not arch:
        if trusted_module_of(top, trust) is not None:
            module, _, attr = top.rpartition(".")
            model, builder, kwargs = build_model(ArchSpec("user", f"{module}:{attr}", module, attr), None, overrides)
            return model, builder, kwargs, "trusted", []
        if not is_torchvision_class(top):
            raise cannot_rebuild(top)
        builder, inferred = torchvision_builder_for(top, shapes)
        model, builder, kwargs = build_model(ArchSpec("torchvision", builder), None, {**inferred, **overrides})
        return model, builder, kwargs, "full_model", []
    found = identify(shapes)
    if not found.exact:
        raise ArchitectureError(
            f"{found.describe()}. Name the architecture with --arch NAME (and --arch-kwargs JSON), "
            f"or --arch package.module:Class for your own model, {WEIGHTS_ONLY_HINT}")
    best = found.exact[0]
    model, builder, kwargs = build_model(ArchSpec("torchvision", best.builder), None, {**best.kwargs, **overrides})
    notes = []
    if len(found.exact) > 1:
        notes.append(f"the weights also fit {', '.join(m.label() for m in found.exact[1:])}; pass --arch NAME to choose")
    return model, builder, kwargs, "auto", notes


def rebuild_checkpoint(checkpoint: Any, *, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                       trust_modules: Iterable[str] = ()) -> RebuiltModel:
    """The model for ``checkpoint`` (a :class:`~ckpt_migrate.model.checkpoint.Checkpoint`) with its weights loaded strictly, in eval mode.

    Weights are loaded into the model as built (float32 for torchvision), whatever their dtype.

    Raises:
        ArchitectureError: no architecture fits, or the weights do not fit it (missing, unexpected
            and mismatched keys listed).
        UsageError: ``--trust-module __main__``.
    """
    shapes = {name: tuple(ref.shape) for name, ref in checkpoint.tensors.items()}
    classes = list(checkpoint.meta.get("classes") or [])
    model, builder, kwargs, how, notes = choose_model(shapes, classes, arch=arch, arch_kwargs=arch_kwargs,
                                                      trust_modules=trust_modules)
    state = checkpoint.materialize()
    load_weights_strict(model, state)
    model.eval()
    info = builder_info(builder) if how != "trusted" and ":" not in builder else None
    return RebuiltModel(model, builder, kwargs, info["module"] if info else None, how, len(state), notes)
