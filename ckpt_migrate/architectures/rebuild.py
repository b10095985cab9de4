"""Rebuild a model for a state_dict and load the weights strictly.

An architecture SPEC is a torchvision builder name (``vgg16``, ``torchvision:vgg16``), ``auto``
(identify from the tensors), or user code ``package.module:Class`` / ``path/to/file.py:Class``,
imported only because the user named it. torch and torchvision are imported inside functions.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ckpt_migrate.errors import ArchitectureError
from ckpt_migrate.architectures.identify import OPTIONAL_SUFFIX, detect_prefix, identify, builder_info

if TYPE_CHECKING:
    import torch

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LIST_LIMIT = 10


@dataclass(frozen=True)
class ArchSpec:
    """A parsed ``--arch`` value.

    ``kind`` is ``"torchvision"`` (``name`` is the builder), ``"auto"``, or ``"user"`` (``module`` is a
    dotted module or a ``.py`` file path, ``attr`` the class or factory inside it). ``flag`` is the
    option the user typed it in (``--arch`` or ``--target``), so messages name that one.
    """

    kind: str
    name: str
    module: str | None = None
    attr: str | None = None
    flag: str = "--arch"

    def __str__(self) -> str:
        return self.name


def parse_arch_spec(spec: str, flag: str = "--arch") -> ArchSpec:
    """Parse ``vgg16``, ``torchvision:vgg16``, ``auto``, ``package.module:Class`` or ``file.py:Class``.

    Args:
        spec: the text the user gave.
        flag: the option it came from, for messages.

    Returns:
        The parsed spec.

    Raises:
        ArchitectureError: the text is none of these forms.
    """
    text = (spec or "").strip()
    expected = "expected a torchvision builder (vgg16, torchvision:resnet50), auto, or package.module:Class"
    if not text:
        raise ArchitectureError(f"empty architecture spec; {expected}")
    if text == "auto":
        return ArchSpec("auto", "auto", flag=flag)
    head, sep, tail = text.rpartition(":")
    if sep and head == "torchvision":
        if not _IDENT.match(tail):
            raise ArchitectureError(f"bad torchvision builder name {tail!r} in {text!r}; {expected}")
        return ArchSpec("torchvision", tail, flag=flag)
    if sep:
        is_file = head.endswith(".py")
        if not (is_file or _DOTTED.match(head)) or not _DOTTED.match(tail):
            raise ArchitectureError(f"cannot parse architecture spec {text!r}; {expected}")
        return ArchSpec("user", text, head, tail, flag=flag)
    if _IDENT.match(text):
        return ArchSpec("torchvision", text, flag=flag)
    if _DOTTED.match(text):
        module, _, attr = text.rpartition(".")
        return ArchSpec("user", f"{module}:{attr}", module, attr, flag=flag)
    raise ArchitectureError(f"cannot parse architecture spec {text!r}; {expected}")


def build_model(spec: str | ArchSpec, shapes: Mapping[str, Any] | None = None,
                arch_kwargs: dict[str, Any] | None = None) -> tuple["torch.nn.Module", str, dict[str, Any]]:
    """Build the model ``spec`` names, with kwargs inferred from ``shapes`` and overridden by ``arch_kwargs``.

    Returns ``(model, builder_name, kwargs)``: for torchvision, ``get_model(builder_name,
    weights=None, **kwargs)`` rebuilds the same model (no pretrained weights are ever requested);
    for user code, ``builder_name`` is the spec and ``kwargs`` the ``arch_kwargs`` the class got.

    Raises:
        ArchitectureError: unknown builder, nothing fits for ``auto``, user code that cannot be
            imported or called, or a builder that rejects the kwargs.
    """
    parsed = spec if isinstance(spec, ArchSpec) else parse_arch_spec(spec)
    overrides = dict(arch_kwargs or {})
    if parsed.kind == "user":
        return _build_user(parsed, overrides)
    if parsed.kind == "auto":
        if not shapes:
            raise ArchitectureError("--arch auto needs the weights' tensors to identify the architecture")
        found = identify(shapes)
        if not found.exact:
            raise ArchitectureError(
                f"{found.describe()}\nName the architecture with --arch NAME (and --arch-kwargs JSON) "
                "or --arch package.module:Class for your own model")
        return _build_torchvision(found.exact[0].builder, dict(found.exact[0].kwargs), overrides)
    inferred: dict[str, Any] = {}
    if shapes and builder_info(parsed.name) is not None:
        found = identify(shapes, builders=[parsed.name])
        best = found.exact[0] if found.exact else (found.candidates[0] if found.candidates else None)
        inferred = dict(best.kwargs) if best else {}
    return _build_torchvision(parsed.name, inferred, overrides)


def _build_torchvision(name: str, inferred: dict[str, Any], overrides: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `ckpt-migrate inspect SRC` suggests one"
        raise ArchitectureError(f"torchvision {torchvision.__version__} has no model builder {name!r}{hint}")
    if "weights" in overrides or overrides.get("weights_backbone") is not None:
        raise ArchitectureError("--arch-kwargs cannot request pretrained weights: the weights come from the checkpoint")
    info = builder_info(name)
    base = dict(info["build_kwargs"]) if info else _no_download_kwargs(name)
    kwargs = {**base, **inferred, **overrides}
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as error:
        raise ArchitectureError(f"cannot build torchvision {name} with {kwargs}: {type(error).__name__}: {error}") from None
    return model, name, kwargs


def _no_download_kwargs(name: str) -> dict[str, Any]:
    import inspect

    import torchvision

    parameters = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    return {"weights_backbone": None} if "weights_backbone" in parameters else {}


def _import_user(spec: ArchSpec) -> Any:
    module_name = spec.module or ""
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise ArchitectureError(f"{spec.flag} {spec.name}: no such file {path}")
            unique = "ckpt_migrate_user_" + re.sub(r"\W", "_", path.stem)
            loader_spec = importlib.util.spec_from_file_location(unique, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ArchitectureError(f"{spec.flag} {spec.name}: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[unique] = module
            loader_spec.loader.exec_module(module)
        else:
            module = _import_like_python_m(module_name)
    except ArchitectureError:
        raise
    except Exception as error:
        raise ArchitectureError(
            f"{spec.flag} {spec.name}: cannot import {module_name} ({type(error).__name__}: {error}); "
            "run from the folder that holds it, make it importable (pip install -e, or PYTHONPATH), or name a .py file") from None
    target: Any = module
    for part in (spec.attr or "").split("."):
        if not hasattr(target, part):
            raise ArchitectureError(f"{spec.flag} {spec.name}: {module_name} has no attribute {spec.attr!r}")
        target = getattr(target, part)
    return target


def _import_like_python_m(module_name: str) -> Any:
    """Import ``module_name`` the way ``python -m`` finds it: the current folder first, then the usual path.

    Naming the module is the user's explicit act of trust; the current folder is searched only for
    this import and removed from ``sys.path`` afterwards.
    """
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _build_user(spec: ArchSpec, kwargs: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    import torch

    factory = _import_user(spec)
    if not callable(factory):
        raise ArchitectureError(f"{spec.flag} {spec.name}: {spec.attr} is not a class or function")
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise ArchitectureError(
            f"{spec.flag} {spec.name}: calling {spec.attr}(**{kwargs}) failed: {type(error).__name__}: {error}; "
            "pass constructor arguments with --arch-kwargs JSON") from None
    if not isinstance(model, torch.nn.Module):
        raise ArchitectureError(f"{spec.flag} {spec.name}: {spec.attr}(...) returned {type(model).__name__}, not a torch.nn.Module")
    return model, spec.name, kwargs


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def load_weights_strict(model: "torch.nn.Module", state_dict: Mapping[str, Any]) -> None:
    """Load ``state_dict`` into ``model`` only if every key and shape fits; a common wrapper prefix is stripped.

    Missing ``num_batches_tracked`` buffers are tolerated (frozen-BatchNorm checkpoints lack them).
    The raised error carries ``missing``, ``unexpected`` and ``mismatched`` lists as attributes.

    Raises:
        ArchitectureError: keys missing or unexpected, or shapes that differ (each listed with both
            shapes), or ``load_state_dict`` refusing the weights.
    """
    own = model.state_dict()
    prefix = detect_prefix(state_dict, frozenset(own))
    weights: dict[str, Any] = {}
    for key, value in state_dict.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        weights.setdefault(name, value)
    missing = [k for k in own if k not in weights and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in weights if k not in own]
    mismatched = [
        (k, tuple(getattr(weights[k], "shape", ())), tuple(own[k].shape))
        for k in own if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(own[k].shape)
    ]
    target = type(model).__name__
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
        if mismatched:
            shown = [f"{k}: weights {list(a)}, model {list(b)}" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} shape mismatch{'es' if len(mismatched) != 1 else ''} ({_listing(shown)})")
        where = f" after stripping {prefix!r}" if prefix else ""
        error = ArchitectureError(
            f"weights do not fit {target}{where}: " + "; ".join(parts)
            + ". Check --arch / --arch-kwargs (`ckpt-migrate inspect SRC` guesses both) or rename keys with --schema")
        error.missing, error.unexpected, error.mismatched = missing, unexpected, mismatched  # type: ignore[attr-defined]
        raise error
    for key in own:
        if key not in weights:
            weights[key] = own[key]
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ArchitectureError(f"weights do not load into {target}: {error}") from None
