"""Classes and functions a training library might pickle, for the call-policy tests.

Importing this module, or calling anything in it, leaves a marker file in ``$CKPT_CALLS_MARKER_DIR``
when that variable is set: the tests set it only for the child process that runs ckpt-migrate,
so a marker proves that ckpt-migrate imported or ran something a file named.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path


def _mark(what: str) -> None:
    folder = os.environ.get("CKPT_CALLS_MARKER_DIR")
    if folder:
        Path(folder, f"ran-{what}").write_text(what)


_mark("import")


class InterpolationMode(enum.Enum):
    """Like torchvision's InterpolationMode, under a module that is not on the curated list."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"

    @classmethod
    def _missing_(cls, value: object) -> None:
        _mark("enum-missing")
        return None


class IntervalStrategy(str, enum.Enum):
    """Like transformers' IntervalStrategy (a str enum)."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SchedulerType(str, enum.Enum):
    """Like transformers' SchedulerType."""

    LINEAR = "linear"
    COSINE = "cosine"


@dataclasses.dataclass
class TrainingArguments:
    """Like transformers' TrainingArguments: a dataclass holding enums."""

    output_dir: str = "out"
    learning_rate: float = 5e-5
    eval_strategy: IntervalStrategy = IntervalStrategy.STEPS
    lr_scheduler_type: SchedulerType = SchedulerType.COSINE

    def __setstate__(self, state: dict) -> None:
        _mark("setstate")
        self.__dict__.update(state)


def make_optimizer(*args: object, **kwargs: object) -> tuple:
    """Like ``torch.optim.Adam`` in a lightning-hydra-template ``functools.partial``: leaves a marker when called."""
    _mark("make_optimizer")
    return args
