"""A stand-in worker function for executor tests; torch-free so worker processes start fast."""

from __future__ import annotations

import os
import signal
from typing import Any


def crash_or_echo(task: dict[str, Any]) -> dict[str, Any]:
    """Die by SIGKILL on the task named ``boom``, block forever on ``hang``; echo the others as done, with the worker's pid."""
    if task["rel"] == "boom":
        os.kill(os.getpid(), signal.SIGKILL)
    if task["rel"] == "hang":
        signal.pause()
    return {"source": task["rel"], "status": "done", "pid": os.getpid()}
