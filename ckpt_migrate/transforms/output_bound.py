"""The output of a conversion is bounded by a stated multiple of the tensor bytes its source holds.

A view with zero strides over one float asks for terabytes; 30,000 names tied to one 1 MB storage
ask for 30 GB. Writers write every name in full, so the bytes written are the sum of each
tensor's logical size, while the source holds only its distinct storages. A conversion may write
at most :data:`OUTPUT_RATIO` times the source's storage bytes plus :data:`OUTPUT_SLACK` (casts to
a wider dtype and a few tied tensors fit; amplification does not); ``--no-output-limit`` lifts
the bound. Torch-free.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from ckpt_migrate.errors import LimitExceededError
from ckpt_migrate.model.checkpoint import ByteSource, Checkpoint, DerivedTensor, TensorRef
from ckpt_migrate.reports.units import human_size
from ckpt_migrate.unpickler import StubObject

OUTPUT_RATIO = 4
OUTPUT_SLACK = 1 << 30


def _tensors_in(value: Any, seen: set[int]) -> Iterator[Any]:
    """Every tensor reference in nested extras, each container visited once."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (TensorRef, DerivedTensor)):
            yield item
            continue
        if not isinstance(item, (dict, list, tuple, set, frozenset, StubObject)) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, StubObject):
            stack.extend((item.state, item.items, item.listitems))
        else:
            stack.extend(item)


def _storages_of(tensor: Any, found: dict[int, Any]) -> None:
    stack = [tensor]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef):
            found.setdefault(id(item.storage), item.storage)
        elif isinstance(item, DerivedTensor):
            stack.extend(item.inputs)


def _ranges(source: ByteSource) -> Iterator[tuple[Any, int, int]]:
    """(what holds the bytes, start, end) of a storage's bytes: a file by name, or an in-memory buffer."""
    pieces = getattr(source, "pieces", None)
    if pieces:
        for piece in pieces:
            yield from _ranges(piece)
        return
    holder = ("buffer", id(source.buffer)) if source.buffer is not None else ("file", source.name)
    yield holder, source.offset, source.offset + source.length


def held_bytes(storages: Iterable[Any]) -> int:
    """The source bytes ``storages`` occupy, each byte counted once however many storages alias it.

    Storages that share a byte range (64 DCP items pointing at one region, views of one buffer)
    hold it once: the bound is relative to what the source really holds.
    """
    by_holder: dict[Any, list[tuple[int, int]]] = {}
    for storage in storages:
        for holder, start, end in _ranges(storage.source):
            by_holder.setdefault(holder, []).append((start, end))
    total = 0
    for spans in by_holder.values():
        reach = None
        for start, end in sorted(spans):
            if reach is None or start > reach:
                total += end - start
                reach = end
            elif end > reach:
                total += end - reach
                reach = end
    return total


def output_estimate(tensors: Iterable[Any], *, shares_storage: bool = False) -> tuple[int, int]:
    """(bytes the source holds for these tensors, bytes a writer would write for them).

    Args:
        tensors: one entry per name written (the same tensor under two names appears twice).
        shares_storage: the writer writes each storage once however many names view it (torch.save).

    Returns:
        The distinct storages' bytes, and what is written: each name's logical bytes, or with
        ``shares_storage`` the storages' bytes plus each derived (cast) tensor's bytes.
    """
    storages: dict[int, Any] = {}
    derived: dict[int, int] = {}
    written = 0
    for tensor in tensors:
        _storages_of(tensor, storages)
        if not shares_storage:
            written += tensor.nbytes
        elif isinstance(tensor, DerivedTensor):
            derived.setdefault(id(tensor), tensor.nbytes)
    held = held_bytes(storages.values())
    return held, (held + sum(derived.values())) if shares_storage else written


def allowed_output(source_bytes: int) -> int:
    """The most a conversion may write for a source holding ``source_bytes`` of tensor storage."""
    return OUTPUT_RATIO * source_bytes + OUTPUT_SLACK


def check_output_size(checkpoint: Checkpoint, *, with_extras: bool, shares_storage: bool = False, limit: bool = True) -> None:
    """Refuse a conversion whose output would exceed :func:`allowed_output` of what the source holds.

    Args:
        checkpoint: what is about to be written.
        with_extras: the writer also writes tensors found in the extras (optimizer state…).
        shares_storage: the writer writes a storage once for all its views (see :func:`output_estimate`).
        limit: ``False`` (``--no-output-limit``) skips the check.

    Raises:
        LimitExceededError: the output would be larger than the bound.
    """
    if not limit:
        return
    tensors: list[Any] = list(checkpoint.tensors.values())
    if with_extras:
        tensors.extend(_tensors_in(checkpoint.extras, set()))
    held, written = output_estimate(tensors, shares_storage=shares_storage)
    bound = allowed_output(held)
    if written > bound:
        raise LimitExceededError(
            f"the output would be {human_size(written)} from {human_size(held)} of tensor storage in the source "
            f"(views and tied names expand it), over the limit of {OUTPUT_RATIO}x + {human_size(OUTPUT_SLACK)}; "
            "pass --no-output-limit if that is really wanted",
            path=checkpoint.meta.get("source"))
