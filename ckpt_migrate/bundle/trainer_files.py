"""Trainer checkpoint files rewritten safely: state as weights-only torch files, arguments as JSON.

A Hugging Face Trainer folder holds ``optimizer.pt`` (``optimizer.state_dict()``), ``scheduler.pt``,
``scaler.pt``, ``rng_state*.pth`` (Python, numpy, torch and CUDA generator states) and
``training_args.bin`` (a pickled ``TrainingArguments`` with enums). Each is read by the safe
interpreter and never turned into weights: the state files become plain torch files under the same
name that ``torch.load(weights_only=True)`` opens (numpy arrays become tensors, numpy scalars
numbers), checked by reloading them that way; ``training_args.bin`` becomes ``training_args.json``,
its inert content as JSON (an enum becomes its value). A value that cannot be kept fails the file
instead of being dropped.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.io.durability import fsync_path
from ckpt_migrate.bundle.training_state import TrainingState, optimizer_state, plain_data, scaler_state, scheduler_state
from ckpt_migrate.errors import CkptMigrateError
from ckpt_migrate.io.atomic import atomic_path
from ckpt_migrate.unpickler import AllowedCall, StubObject


def state_kind(name: str) -> str:
    """``optimizer``, ``scheduler``, ``scaler``, ``rng`` or ``args`` for a Trainer file name."""
    if name.startswith("optimizer"):
        return "optimizer"
    if name.startswith("scheduler"):
        return "scheduler"
    if name.startswith("scaler"):
        return "scaler"
    if name.startswith("training_args"):
        return "args"
    return "rng"


def plain_state(root: Any, kind: str) -> tuple[Any, TrainingState]:
    """The file's object as data ``torch.load(weights_only=True)`` holds, and the conversion record."""
    report = TrainingState()
    if kind == "optimizer":
        value = optimizer_state(root, "optimizer", report)
    elif kind == "scheduler":
        value = scheduler_state(root, "scheduler", report)
    elif kind == "scaler":
        value = scaler_state(root, "scaler", report)
    else:
        value = plain_data(root, kind, report)
    return value, report


def inert_json(value: Any) -> Any:
    """JSON for inert data: an object's attributes as a dict, an enum-like call as its argument.

    A structure shared in the file is rendered once; its repeats become ``{"ref": path}`` (a memo
    DAG must not expand into an exponential tree), and depth is capped.
    """
    seen: dict[int, str] = {}

    def render(item: Any, path: str, depth: int) -> Any:
        if depth > 50:
            return "…"
        shared = isinstance(item, (StubObject, AllowedCall, dict, list, tuple))
        if shared and not (isinstance(item, tuple) and not item):
            if id(item) in seen:
                return {"ref": seen[id(item)]}
            seen[id(item)] = path or "$"
        if isinstance(item, StubObject) and item.attributes and not item.items and not item.listitems:
            return {str(k): render(v, f"{path}.{k}", depth + 1) for k, v in item.attributes.items()}
        if isinstance(item, AllowedCall):
            if len(item.args) == 1 and (item.args[0] is None or isinstance(item.args[0], (bool, int, float, str))):
                return item.args[0]
            return {"call": item.func.dotted, "args": [render(v, f"{path}.{i}", depth + 1) for i, v in enumerate(item.args)]}
        if isinstance(item, dict):
            return {str(k): render(v, f"{path}.{k}", depth + 1) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [render(v, f"{path}.{i}", depth + 1) for i, v in enumerate(item)]
        return to_plain(item, max_items=1_000_000)

    return render(value, "", 0)


def rewrite(src: str, dst: str, *, allow_calls: tuple[str, ...] = (), force: bool = False, verify: bool = True,
            fsync: bool = True) -> dict[str, Any]:
    """Rewrite Trainer file ``src`` as ``dst`` (a weights-only torch file, or JSON for ``training_args``).

    Returns:
        Result fields for the manifest: reader, format, kind, tensors, conversions made.

    Raises:
        UnsafeFileError: the file names a refused global.
        CkptMigrateError: a value cannot be represented, or the output does not reload equal.
    """
    from ckpt_migrate.api import read_raw

    raw, reader = read_raw(src, allow_calls=allow_calls)
    kind = state_kind(os.path.basename(src))
    if kind == "args":
        text = json.dumps(inert_json(raw.root), indent=2, sort_keys=True, default=str) + "\n"
        with atomic_path(dst, force) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                if fsync:
                    os.fsync(handle.fileno())
            if verify and json.loads(open(tmp, encoding="utf-8").read()) != json.loads(text):
                raise CkptMigrateError("training_args.json does not read back as written", path=src)
        return {"reader": reader, "format": raw.format, "kind": "training-args", "tensors": 0}
    import torch

    from ckpt_migrate.converters.writers.normalized import tensorize, verify_normalized, walk_tensors

    value, report = plain_state(raw.root, kind)
    if report.unrepresentable:
        path, what = next(iter(report.unrepresentable.items()))
        raise CkptMigrateError(f"{kind} state holds {what} at {path}, which a weights-only torch file cannot hold; "
                               "nothing was written", path=src)
    data = tensorize(value)
    with atomic_path(dst, force) as tmp:
        torch.save(data, tmp)
        if verify:
            verify_normalized(tmp, data, src)
        if fsync:
            fsync_path(tmp)
    return {"reader": reader, "format": raw.format, "kind": f"{kind}-state", "tensors": len(list(walk_tensors(data))),
            "converted": dict(report.converted)}
