"""Batch migration of model folders: plan, convert in parallel (local processes or Ray), resume.

``from ckpt_migrate.batch import migrate`` is the Python API of ``ckpt-migrate migrate``.
Importing this package does not import torch, nor the runner: a worker process imports only the
modules that convert a file.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "FileResult": "ckpt_migrate.batch.report",
    "MigrateReport": "ckpt_migrate.batch.report",
    "migrate": "ckpt_migrate.batch.runner",
}

__all__ = ["FileResult", "MigrateReport", "migrate"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ckpt_migrate.batch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
