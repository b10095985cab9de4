"""Resource limits of the safe interpreter; each breach is a clear :class:`LimitExceededError`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds on the work one pickle may ask for.

    The defaults open checkpoints of hundreds of thousands of tensors and still stop a hostile
    file long before it exhausts memory or time.
    """

    max_opcodes: int = 50_000_000
    max_memo: int = 5_000_000
    max_stack: int = 5_000_000
    max_marks: int = 10_000
    max_depth: int = 1_000
    max_nested_pickles: int = 4
    max_pickle_bytes: int = 1 << 31
    max_tensor_elements: int = 1 << 40


DEFAULT_LIMITS = Limits()
