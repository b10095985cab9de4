"""ckpt-migrate: open old PyTorch checkpoints without executing them, and migrate them.

Python API (mirrors the CLI): :func:`load`, :func:`convert`, :func:`inspect`, :func:`scan`,
:func:`diff`, :func:`check`, :func:`migrate`. Importing this package does not import torch.

The folders follow the data (DESIGN §2)::

    io/           source bytes (file, fsspec), folder trees, atomic outputs, digests
    converters/   the registry; readers/ (one per format) and writers/ (one per format)
    unpickler/    the safe interpreter: policy.py (what a name may do), opcodes, rebuilders, budget
    model/        Checkpoint and lazy tensor references, dtypes, layout arithmetic, equality
    bundle/       what a bundle holds: weight selection, training state, classification, inert values
    transforms/   between reading and writing: schemas applied, casts, optimizer stripping
    schemas/      the torch-free schema engine, loader, alignment and built-in TOML files
    architectures/ torchvision signature index, identification, rebuild, --target resolution
    reports/      inspect, scan, check, diff
    batch/        migrate: walk, plan, executors, worker, manifest, report
    options.py    ConvertOptions: every convert/migrate flag, typed and validated once
    api.py, cli.py, commands/   the public functions and the click commands
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "load": ("ckpt_migrate.api", "load"),
    "convert": ("ckpt_migrate.api", "convert"),
    "inspect": ("ckpt_migrate.api", "inspect"),
    "scan": ("ckpt_migrate.reports.scan", "scan"),
    "diff": ("ckpt_migrate.reports.diff", "diff"),
    "check": ("ckpt_migrate.reports.check", "check"),
    "migrate": ("ckpt_migrate.batch.runner", "migrate"),
    "Checkpoint": ("ckpt_migrate.model.checkpoint", "Checkpoint"),
    "TensorRef": ("ckpt_migrate.model.checkpoint", "TensorRef"),
    "ConvertOptions": ("ckpt_migrate.options", "ConvertOptions"),
    "errors": ("ckpt_migrate.errors", None),
    "__version__": ("ckpt_migrate.model.provenance", "TOOL_VERSION"),
}
"""Public names, imported on first use so that ``import ckpt_migrate`` and ``ckpt-migrate --help`` stay light."""

__all__ = ["Checkpoint", "ConvertOptions", "TensorRef", "__version__", "check", "convert", "diff", "errors", "inspect", "load",
           "migrate", "scan"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckpt_migrate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
