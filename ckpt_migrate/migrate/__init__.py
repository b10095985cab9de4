"""Batch migration of model folders: plan, convert in parallel (local processes or Ray), resume.

``from ckpt_migrate.migrate import migrate`` is the Python API of ``ckpt-migrate migrate``.
Importing this package does not import torch.

This package and the function share the name ``migrate``: once the package is imported,
``ckpt_migrate.migrate`` is the package (Python binds submodules on their parent), so the
package itself is made callable and behaves as :func:`migrate`. ``ckpt_migrate.migrate(src, dst)``
then works however the names were imported.
"""

import inspect as _inspect
import sys as _sys
import types as _types
from typing import Any as _Any

from .report import FileResult, MigrateReport
from .runner import migrate

__all__ = ["FileResult", "MigrateReport", "migrate"]
__signature__ = _inspect.signature(migrate)


class _CallablePackage(_types.ModuleType):
    """The ``ckpt_migrate.migrate`` package, callable as the ``migrate`` function."""

    def __call__(self, *args: _Any, **kwargs: _Any) -> MigrateReport:
        return migrate(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
