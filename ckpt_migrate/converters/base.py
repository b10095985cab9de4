"""The reader and writer interfaces every format module implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ckpt_migrate.model.checkpoint import Checkpoint
from ckpt_migrate.io.source import Source
from ckpt_migrate.unpickler import DEFAULT_LIMITS, GlobalUse, Limits


@dataclass(frozen=True)
class ReadOptions:
    """How to open a file: calls the user accepted, limits, and whether to only collect verdicts (scan)."""

    allow_calls: frozenset[str] = frozenset()
    limits: Limits = DEFAULT_LIMITS
    collect_only: bool = False


@dataclass
class RawRead:
    """What a reader found before bundle selection: the top object, the globals' verdicts, provenance."""

    root: Any
    format: str
    globals: dict[str, GlobalUse] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tensors_only: bool = False


class Reader:
    """A format a checkpoint can be read from. Subclasses set ``name`` and implement both methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def sniff(self, head: bytes, source: Source) -> None:
        """Return quietly when the bytes are this format; raise :class:`~ckpt_migrate.errors.NotMyFormat` otherwise."""
        raise NotImplementedError

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        """Open ``source`` without executing anything from it.

        Raises:
            UnsafeFileError: the file calls something outside the allowlist.
            CorruptFileError: the file is malformed or truncated.
        """
        raise NotImplementedError


@dataclass
class WriteOptions:
    """Options writers share; format-specific ones travel in ``extra``."""

    verify: bool = True
    force: bool = False
    max_shard_size: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class WriteReport:
    """What a writer produced and how it checked it."""

    outputs: list[str]
    tensors: int
    bytes: int
    verified: bool
    details: dict[str, Any] = field(default_factory=dict)


class Writer:
    """A format a checkpoint can be written to. Subclasses set ``name`` and implement :meth:`write`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()

    def write(self, checkpoint: Checkpoint, dst: str, options: WriteOptions) -> WriteReport:
        """Write ``checkpoint`` to ``dst`` atomically and verify it.

        Raises:
            VerificationError: the output does not read back equal to the source.
            OutputExistsError: ``dst`` exists and ``options.force`` is false.
        """
        raise NotImplementedError
