"""What an allowlisted constructor may use: the file name, the limits and budget, nested pickles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ckpt_migrate.unpickler.budget import Budget
from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits

Handler = Callable[["CallContext", tuple], Any]
"""An allowlisted constructor: gets the context and the call's arguments, returns an inert value."""


class CallContext:
    """What a handler may use: the file name for errors, the limits and budget, and a way to open nested pickles.

    ``budget`` is the input file's :class:`~.budget.Budget` (work and bytes a handler is about to
    spend are charged to it); ``merge`` records the verdicts of a nested pickle in the enclosing
    one; ``hashing`` charges the hashing of keys a handler is about to insert into a dict or set.
    """

    def __init__(
        self,
        path: str,
        load_nested: Callable[[bytes], Any] | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        budget: Budget | None = None,
        merge: Callable[[Iterable[Any]], None] | None = None,
        hashing: Callable[[Any], None] | None = None,
    ) -> None:
        self.path = path
        self.load_nested = load_nested
        self.limits = limits
        self.budget = budget if budget is not None else Budget(limits)
        self.merge = merge
        self.hashing = hashing

    def hash(self, items: Any) -> None:
        """Charge the hashing of ``items`` about to become dict keys or set members."""
        if self.hashing is not None:
            self.hashing(items)
        elif hasattr(items, "__len__"):
            self.budget.charge_ops(len(items))


@dataclass
class NestedResult:
    """What a nested loader found: the payload's top object and its globals' verdicts (by name)."""

    value: Any
    globals: dict[str, Any] = field(default_factory=dict)


def arg(args: tuple, index: int, default: Any = None) -> Any:
    """``args[index]`` when present, else ``default``."""
    return args[index] if len(args) > index else default
