"""Writer of torch.distributed.checkpoint (DCP) folders holding the normalized layout.

Writing uses ``torch.distributed.checkpoint.save`` with a ``FileSystemWriter`` and no process
group; the folder holds ``model_state_dict``, ``optimizer_state_dict`` (keyed by parameter name,
as ``get_state_dict`` lays it out), … and is read back with our own DCP reader and compared bit
for bit before it is renamed into place.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any

from ckpt_migrate.converters.base import ReadOptions, WriteReport, Writer
from ckpt_migrate.converters.readers.dcp import DcpFolder
from ckpt_migrate.errors import MissingDependencyError, UnsupportedFormatError, VerificationError
from ckpt_migrate.io.atomic import atomic_path
from ckpt_migrate.model.checkpoint import Checkpoint
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.converters.filenames import WRITER_SUFFIXES


def _contiguous_copies(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().contiguous().clone()
    if isinstance(value, dict):
        return type(value)((k, _contiguous_copies(v)) for k, v in value.items()) if isinstance(value, OrderedDict) else {k: _contiguous_copies(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_contiguous_copies(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_contiguous_copies(v) for v in value)
    return value


def verify_dcp(folder: str, expected: dict[str, Any], source: str) -> None:
    """Read ``folder`` back with :class:`DcpReader` and compare every item with ``expected`` (tensors bit for bit).

    Raises:
        VerificationError: an item is missing, extra, or differs.
    """
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    from ckpt_migrate.converters.writers.normalized import compare_structures, tensorize

    want, _ = flatten_state_dict(expected)
    got = DcpFolder(folder, ReadOptions()).flat()
    if set(want) != set(got):
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        raise VerificationError(f"DCP folder read back with different items (missing {missing}, extra {extra})", path=source)
    for fqn, value in want.items():
        problem = compare_structures(value, tensorize(got[fqn]), fqn)
        if problem:
            raise VerificationError(f"read back from the DCP folder: {problem}", path=source)


class DcpWriter(Writer):
    """A torch.distributed.checkpoint folder holding the normalized layout (model and training state)."""

    name = "dcp"
    description = "torch.distributed.checkpoint folder: model and training state"
    suffixes = WRITER_SUFFIXES["dcp"]
    requires = ("torch",)

    def write(self, checkpoint: Checkpoint, dst: str, options: ConvertOptions) -> WriteReport:
        try:
            import torch.distributed.checkpoint as dcp
        except ImportError as error:
            raise MissingDependencyError(f"torch.distributed.checkpoint is not available in this torch build: {error}") from None
        from ckpt_migrate.converters.writers.normalized import build_payload, materialize_payload, walk_tensors

        from ckpt_migrate.bundle.optimizer_names import name_payload_optimizer

        payload, state = build_payload(checkpoint)
        from ckpt_migrate.reports.progress import phase

        label = os.path.basename(os.path.normpath(dst))
        payload, optimizer_note = name_payload_optimizer(payload, state.optimizer_params)
        with phase(f"materializing {len(checkpoint.tensors)} tensors", None):
            data = _contiguous_copies(materialize_payload(payload, checkpoint))
        if any(t.is_quantized for _, t in walk_tensors(data)):
            raise UnsupportedFormatError("DCP cannot store quantized tensors; use --to normalized or --to safetensors")
        source = checkpoint.meta.get("source", dst)
        with atomic_path(dst, options.force) as tmp:
            with warnings.catch_warnings(), phase(f"saving {label}", None):
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp.save(data, storage_writer=dcp.FileSystemWriter(tmp), no_dist=True)
            if options.verify:
                with phase(f"verifying {label}", None):
                    verify_dcp(tmp, data, source)
        files = sorted(os.listdir(dst))
        size = sum(os.path.getsize(os.path.join(dst, name)) for name in files)
        details = {"files": files, "keys": list(data), **({"optimizer": optimizer_note} if optimizer_note else {})}
        return WriteReport([dst], len(list(walk_tensors(data))), size, options.verify, details)
