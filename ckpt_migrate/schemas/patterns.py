"""Schema regexes run under a time bound: a shared schema is input too, and ``^(a+)+$`` backtracks forever.

Patterns are validated with Python's ``re`` (the documented syntax) and run with the ``regex``
package, whose matching functions take a ``timeout``. Every match of one rule over all keys
shares one deadline of :data:`RULE_SECONDS`. Torch-free.
"""

from __future__ import annotations

import time
from typing import Any

import regex

RULE_SECONDS = 2.0


class PatternTimeout(Exception):
    """A pattern ran past its deadline on ``key``."""

    def __init__(self, pattern: str, key: str, seconds: float) -> None:
        self.pattern = pattern
        self.key = key
        self.seconds = seconds
        shown = key if len(key) <= 60 else key[:60] + "…"
        super().__init__(f"regex {pattern!r} ran longer than {seconds:g} s on key {shown!r} "
                         "(catastrophic backtracking); rewrite it without nested repetition such as (a+)+")


class BoundedPattern:
    """A compiled pattern whose ``search``/``sub`` calls share one deadline.

    Args:
        pattern: the regular expression (already validated with ``re``).
        seconds: time allowed for every call together.
    """

    def __init__(self, pattern: str, seconds: float = RULE_SECONDS) -> None:
        self.pattern = pattern
        self.seconds = seconds
        self.compiled = regex.compile(pattern, flags=regex.VERSION0)
        self.deadline = time.monotonic() + seconds

    def _left(self, key: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PatternTimeout(self.pattern, key, self.seconds)
        return left

    def search(self, key: str) -> Any:
        """``re.search`` semantics under the deadline.

        Raises:
            PatternTimeout: the deadline passed.
        """
        try:
            return self.compiled.search(key, timeout=self._left(key))
        except TimeoutError:
            raise PatternTimeout(self.pattern, key, self.seconds) from None

    def sub(self, replace: str, key: str) -> str:
        """``re.sub`` semantics under the deadline.

        Raises:
            PatternTimeout: the deadline passed.
            regex.error: ``replace`` is not a valid template.
        """
        try:
            return self.compiled.sub(replace, key, timeout=self._left(key))
        except TimeoutError:
            raise PatternTimeout(self.pattern, key, self.seconds) from None
