"""Inert stand-ins for whatever a pickle names but we will not import.

A :class:`GlobalRef` is what the interpreter pushes for ``GLOBAL``/``STACK_GLOBAL``: a name, never
an imported object. Instantiating one (``NEWOBJ``, ``copyreg._reconstructor``) yields a
:class:`StubObject` that records its class name, constructor arguments, state and items.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GlobalRef:
    """A global named by the pickle: ``module`` and ``name`` after Python 2 name mapping."""

    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.dotted}>"


@dataclass(eq=False)
class StubObject:
    """An instance of a class we did not import: its state is kept as plain data.

    ``state`` is what ``BUILD`` set (usually the instance ``__dict__``); ``items``/``listitems``
    collect ``SETITEM(S)``/``APPEND(S)`` on dict- or list-like classes.
    """

    cls: GlobalRef
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    state: Any = None
    items: dict = field(default_factory=dict)
    listitems: list = field(default_factory=list)

    @property
    def class_name(self) -> str:
        return self.cls.dotted

    @property
    def attributes(self) -> dict:
        """The instance attributes, from a dict state or the dict half of a ``(dict, slots)`` state."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            merged = dict(state[0]) if isinstance(state[0], dict) else {}
            merged.update(state[1])
            return merged
        if isinstance(state, dict):
            return state
        return {}

    def __repr__(self) -> str:
        return f"<stub {self.class_name}>"


@dataclass(eq=False)
class CallRecord:
    """A call kept as inert data, never executed: the callable's name, its arguments and any ``BUILD`` state.

    Made for unknown calls (an enum of a training library, ``functools.partial`` of a non-gadget
    target), curated benign calls, and calls accepted with ``--allow-call``.
    """

    func: GlobalRef
    args: tuple
    state: Any = None

    def __repr__(self) -> str:
        return f"<call {self.func.dotted}{self.args!r:.200}>"


AllowedCall = CallRecord
"""The name :class:`CallRecord` had when only ``--allow-call`` made such records."""


@dataclass(eq=False)
class RefusedCall:
    """Placeholder pushed for a refused call so the rest of the file can still be scanned."""

    func: GlobalRef
    reason: str

    def __repr__(self) -> str:
        return f"<refused {self.func.dotted}>"


@dataclass(frozen=True)
class TorchMarker:
    """A torch constant named by the pickle: a dtype, layout, memory format or qscheme."""

    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Device:
    """A ``torch.device`` as a label; CUDA devices open on CPU machines."""

    spec: str

    def __str__(self) -> str:
        return self.spec


class PickledOrderedDict(OrderedDict):
    """An OrderedDict from the pickle; ``BUILD`` state (such as ``_metadata``) is kept aside."""

    pickle_state: Any = None



def describe_value(value: Any) -> str:
    """A short phrase naming what a pickled value is, for messages (``an object of class x.Y``)."""
    if isinstance(value, StubObject):
        return f"an object of class {value.class_name}"
    if isinstance(value, CallRecord):
        return f"the result of {value.func.dotted}"
    return f"a {type(value).__name__}"
