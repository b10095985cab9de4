"""The safe pickle interpreter (DESIGN §2): policy, allowlisted constructors, inert stubs, one budget per file.

Modules: :mod:`.policy` (what a name may do: gadgets, curated benign calls, classification),
:mod:`.allowlist` (the tables), :mod:`.rebuilders` and :mod:`.constructors` (what allowlisted names
build), :mod:`.vm` and :mod:`.opcodes` (the machine), :mod:`.verdicts` (one record per global and the
file's verdict), :mod:`.stubs` (inert stand-ins), :mod:`.limits` and :mod:`.budget`, :mod:`.static`
(an opcode walk that builds nothing). Names below are imported on first use, so importing a
submodule does not load the machine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Budget": "budget",
    "DEFAULT_LIMITS": "limits", "Limits": "limits",
    "Policy": "policy",
    "AllowedCall": "stubs", "CallRecord": "stubs", "Device": "stubs", "GlobalRef": "stubs",
    "PickledOrderedDict": "stubs", "RefusedCall": "stubs", "StubObject": "stubs", "TorchMarker": "stubs",
    "GlobalVerdict": "verdicts",
    "Interpreter": "vm", "Result": "vm", "interpret": "vm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
