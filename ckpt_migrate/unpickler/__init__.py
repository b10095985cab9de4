"""The safe pickle interpreter (DESIGN §2): allowlisted constructors, inert stubs, hard limits."""

from .limits import DEFAULT_LIMITS, Limits
from .stubs import AllowedCall, Device, GlobalRef, PickledOrderedDict, RefusedCall, StubObject, TorchMarker
from .vm import GlobalUse, Interpreter, Policy, Result, interpret

__all__ = [
    "AllowedCall", "DEFAULT_LIMITS", "Device", "GlobalRef", "GlobalUse", "Interpreter", "Limits",
    "PickledOrderedDict", "Policy", "RefusedCall", "Result", "StubObject", "TorchMarker", "interpret",
]
