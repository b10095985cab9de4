"""Resource limits of the safe interpreter; each breach is a clear :class:`LimitExceededError`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds on the work one pickle may ask for.

    The defaults open checkpoints of hundreds of thousands of tensors and still stop a hostile
    file long before it exhausts memory, time or the C stack:

    - ``max_opcodes``: opcodes executed, plus the elements hashed when tuples become dict keys
      or set members (so a big tuple used as a key a million times costs what it really costs).
    - ``max_memo``, ``max_stack``, ``max_marks``: sizes of the pickle machine's own structures.
    - ``max_depth``: containers nested inside containers, in the result and in hashable keys
      (deeper tuples crash CPython's hash; deeper lists break every recursive reader).
    - ``max_nested_pickles``: ``_load_from_bytes`` payloads inside payloads.
    - ``max_pickle_bytes``: the size of one pickle read into memory (a zip's ``data.pkl``).
    - ``max_tensor_elements``: elements of one tensor (and the largest size or stride).
    - ``max_alloc_bytes``: bytes one allowlisted constructor may allocate (``bytes(n)``).
    - ``max_colliding_keys``: dict keys or set members whose hash an attacker controls
      (integers beyond the hash modulus), which could otherwise make insertion quadratic.
    """

    max_opcodes: int = 50_000_000
    max_memo: int = 5_000_000
    max_stack: int = 5_000_000
    max_marks: int = 10_000
    max_depth: int = 200
    max_nested_pickles: int = 4
    max_pickle_bytes: int = 1 << 31
    max_tensor_elements: int = 1 << 40
    max_alloc_bytes: int = 1 << 26
    max_colliding_keys: int = 4096


DEFAULT_LIMITS = Limits()
