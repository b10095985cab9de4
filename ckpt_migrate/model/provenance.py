"""What an output says about where it came from: the tool's version and the source's published name.

The version has one home, :data:`TOOL_VERSION` here (``setup.cfg`` reads it). An
output names its source by file name only: a full path such as ``/home/alice/projects/...`` stays
in the local manifest and never travels with the weights.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

TOOL_VERSION = "0.1.0"
"""The one home of the version: ``setup.cfg`` reads it from here (``version = attr: …``)."""

TOOL_LABEL = f"ckpt-migrate {TOOL_VERSION}"


def source_label(meta: Mapping[str, Any]) -> str | None:
    """The source's name as outputs publish it: its path relative to a migrated tree when known, else its file name.

    Args:
        meta: a checkpoint's ``meta`` (``source``, and ``source_relative`` when ``migrate`` set it).

    Returns:
        The label, or None when the checkpoint has no source.
    """
    relative = meta.get("source_relative")
    if relative:
        return str(relative)
    source = meta.get("source")
    if not source:
        return None
    text = str(source).rstrip("/\\")
    return os.path.basename(text) or text
