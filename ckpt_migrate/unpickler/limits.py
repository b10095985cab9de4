"""Resource limits of the safe interpreter; each breach is a clear :class:`LimitExceededError` (exit 1)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds on the work one input file may ask for.

    The per-file limits are shared by every pickle of the file (nested ``_load_from_bytes``
    payloads and nested zips included) through one :class:`~.budget.Budget`. The defaults open
    checkpoints of hundreds of thousands of tensors (tensor bytes are byte ranges of the file, not
    allocations) and still stop a hostile file long before it exhausts memory, time or the C stack:

    - ``max_opcodes`` + ``opcodes_per_input_byte`` x the input's size: opcodes executed in the
      whole file, plus elements copied or hashed by constructors (``set``, ``tuple``, dict keys...).
      A pickle has at most one opcode per byte, so only amplification (nested payloads opened
      many times, memoised containers copied or hashed again and again) reaches the limit.
    - ``max_alloc_total`` + ``alloc_per_input_byte`` x the input's size: bytes the file's pickles
      may allocate in all (strings and bytes read, byte strings built, numpy arrays rebuilt,
      nested payloads copied, decompressed pickles).
    - ``max_alloc_bytes``: bytes one allowlisted constructor may allocate (``bytes(n)``).
    - ``max_memo``, ``max_stack``, ``max_marks``: sizes of one pickle machine's own structures.
    - ``max_depth``: containers nested inside containers, in the result and in hashable keys.
    - ``max_nested_pickles``: ``_load_from_bytes`` payloads inside payloads (depth);
      ``max_nested_payloads``: such payloads opened in the whole file (fan-out).
    - ``max_pickle_bytes``: the size of one pickle read into memory (a zip's ``data.pkl``).
    - ``max_tensor_elements``: elements of one tensor (and the largest size or stride).
    - ``max_colliding_keys``: dict keys or set members whose hash equals another key's (integers
      beyond the hash modulus, floats, complex numbers, fractions, decimals, tuples of them).
    - ``max_numeric_keys``: numeric keys whose hashes are tracked for collisions.
    """

    max_opcodes: int = 10_000_000
    opcodes_per_input_byte: int = 4
    max_memo: int = 5_000_000
    max_stack: int = 5_000_000
    max_marks: int = 10_000
    max_depth: int = 200
    max_nested_pickles: int = 4
    max_nested_payloads: int = 100_000
    max_pickle_bytes: int = 1 << 31
    max_tensor_elements: int = 1 << 40
    max_alloc_bytes: int = 1 << 26
    max_alloc_total: int = 1 << 29
    alloc_per_input_byte: int = 4
    max_colliding_keys: int = 4096
    max_numeric_keys: int = 1_000_000


DEFAULT_LIMITS = Limits()
