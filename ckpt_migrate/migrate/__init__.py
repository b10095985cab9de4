"""Batch migration of model folders: plan, convert in parallel (local processes or Ray), resume.

``from ckpt_migrate.migrate import migrate`` is the Python API of ``ckpt-migrate migrate``.
Importing this package does not import torch.
"""

from .report import FileResult, MigrateReport
from .runner import migrate

__all__ = ["FileResult", "MigrateReport", "migrate"]
