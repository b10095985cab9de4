"""Memory-layout arithmetic for tensor references: row-major strides and dimension permutations.

Pure integer logic (no torch), shared by the readers, the interpreter's rebuilders, the schema
engine and the transforms, so each question has one answer.
"""

from __future__ import annotations

from typing import Sequence


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major element strides of ``shape`` (a zero-sized dimension counts as one, as torch does)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def is_row_major(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """True when elements of ``shape`` with ``stride`` lie in row-major order with no gaps (size-1 dims ignored)."""
    expected = 1
    for size, step in reversed(list(zip(shape, stride))):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def resolve_permutation(ndim: int, dims: Sequence[int]) -> tuple[int, ...] | None:
    """The full permutation ``dims`` asks for: two dims to swap, or all ``ndim`` dims in a new order.

    Negative dims count from the end. Two dims are read as a swap (so ``[0, 1]`` on a matrix is a
    transpose, as ``torch.transpose`` reads it).

    Returns:
        The permutation, or None when ``dims`` is neither form or a dim is out of range.
    """
    if ndim == 0 or any(not -ndim <= int(d) < ndim for d in dims):
        return None
    normalized = [int(d) % ndim for d in dims]
    if len(normalized) == 2:
        perm = list(range(ndim))
        a, b = normalized
        perm[a], perm[b] = perm[b], perm[a]
        return tuple(perm)
    if sorted(normalized) == list(range(ndim)):
        return tuple(normalized)
    return None
