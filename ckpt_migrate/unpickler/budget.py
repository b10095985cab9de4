"""One resource budget per input file, shared by every pickle, nested payload and constructor that reads it.

A fresh interpreter for a nested ``_load_from_bytes`` payload gets the enclosing file's budget, so
fanning payloads out multiplies nothing: opcodes, bytes allocated, nested payloads opened and hash
collisions are counted once for the whole file.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ckpt_migrate.errors import LimitExceededError
from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits

_NUMERIC = (float, complex, Fraction, Decimal)


def _human(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)


class Budget:
    """What one input file may still spend.

    Args:
        limits: the bounds (see :class:`~.limits.Limits`).
        input_bytes: the input's size; the allocation budget grows with it.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, input_bytes: int = 0) -> None:
        self.limits = limits
        self.max_ops = limits.max_opcodes + limits.opcodes_per_input_byte * max(input_bytes, 0)
        self.max_alloc = limits.max_alloc_total + limits.alloc_per_input_byte * max(input_bytes, 0)
        self.ops = 0
        self.allocated = 0
        self.nested = 0
        self.colliding = 0
        self._hashes: dict[int, Any] = {}

    def charge_ops(self, count: int) -> None:
        """Charge ``count`` units of work (opcodes, elements copied or hashed).

        Raises:
            LimitExceededError: the file's work budget is spent.
        """
        self.ops += count
        if self.ops > self.max_ops:
            raise LimitExceededError(f"pickle exceeds {self.max_ops} opcodes and hashed elements "
                                     "(work limit per file, copies included)")

    def charge_alloc(self, nbytes: int, what: str) -> None:
        """Charge ``nbytes`` bytes about to be allocated for ``what``.

        Raises:
            LimitExceededError: the file's allocation budget would be exceeded.
        """
        self.allocated += max(int(nbytes), 0)
        if self.allocated > self.max_alloc:
            raise LimitExceededError(f"pickle would allocate more than {_human(self.max_alloc)} in all "
                                     f"(resource limit per file, reached by {what})")

    def open_nested(self) -> None:
        """Count one nested payload opened.

        Raises:
            LimitExceededError: the file opens too many nested payloads.
        """
        self.nested += 1
        self.charge_ops(1000)
        if self.nested > self.limits.max_nested_payloads:
            raise LimitExceededError(f"file opens more than {self.limits.max_nested_payloads} nested pickle payloads")

    def hash_key(self, key: Any, big: bool = False) -> None:
        """Record the hashing of a dict key or set member whose hash an attacker could choose.

        ``big`` says the key is (or holds) an integer beyond the hash modulus; every such key
        counts as a collision. Floats, complex numbers, fractions, decimals and tuples holding
        them count when their hash equals a different key's.

        Raises:
            LimitExceededError: too many colliding keys, or too many numeric keys tracked.
        """
        if big:
            self._collision()
            return
        try:
            value = hash(key)
        except TypeError:
            return
        seen = self._hashes.get(value, _MISSING)
        if seen is _MISSING:
            if len(self._hashes) >= self.limits.max_numeric_keys:
                raise LimitExceededError(f"more than {self.limits.max_numeric_keys} distinct numeric dict keys or set members")
            self._hashes[value] = key
            return
        if not _same(seen, key):
            self._collision()

    def _collision(self) -> None:
        self.colliding += 1
        if self.colliding > self.limits.max_colliding_keys:
            raise LimitExceededError(
                f"more than {self.limits.max_colliding_keys} dict keys or set members share a hash with another key "
                "(a hash-collision attack)")


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - comparing two of our own plain values; a failure means "different"
        return False


_NEVER_NUMERIC = frozenset({str, int, bool, bytes, type(None)})


def numeric_key(key: Any) -> bool:
    """True when ``key``'s hash is worth tracking: a float, complex, Fraction or Decimal.

    The common types are decided by their exact type first: ``isinstance`` against ``Fraction``
    and ``Decimal`` goes through the ABC machinery, and this runs for every item of every tuple.
    """
    kind = type(key)
    if kind in _NEVER_NUMERIC:
        return False
    if kind is float or kind is complex:
        return True
    return isinstance(key, _NUMERIC)
