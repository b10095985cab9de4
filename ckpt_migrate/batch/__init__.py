"""Batch migration of model folders: plan, convert in parallel (local processes or Ray), resume.

``from ckpt_migrate.batch import migrate`` is the Python API of ``ckpt-migrate migrate``.
Importing this package does not import torch.
"""

from ckpt_migrate.batch.report import FileResult, MigrateReport
from ckpt_migrate.batch.runner import migrate

__all__ = ["FileResult", "MigrateReport", "migrate"]
