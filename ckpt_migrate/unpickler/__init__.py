"""The safe pickle interpreter (DESIGN §2): allowlisted constructors, inert stubs, hard limits."""

from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits
from ckpt_migrate.unpickler.stubs import AllowedCall, Device, GlobalRef, PickledOrderedDict, RefusedCall, StubObject, TorchMarker
from ckpt_migrate.unpickler.vm import GlobalUse, Interpreter, Policy, Result, interpret

__all__ = [
    "AllowedCall", "DEFAULT_LIMITS", "Device", "GlobalRef", "GlobalUse", "Interpreter", "Limits",
    "PickledOrderedDict", "Policy", "RefusedCall", "Result", "StubObject", "TorchMarker", "interpret",
]
