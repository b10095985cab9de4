"""The reader and writer interfaces every format module implements."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ckpt_migrate.model.checkpoint import Checkpoint
from ckpt_migrate.io.source import Source
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.unpickler.budget import Budget
from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits
from ckpt_migrate.unpickler.policy import Policy
from ckpt_migrate.unpickler.verdicts import GlobalVerdict


@dataclass(frozen=True)
class ReadOptions:
    """How to open a file: calls the user accepted, limits, whether to only collect verdicts (scan).

    ``strict_calls`` refuses unknown calls (``--strict-calls``); ``budget`` is the input file's
    resource budget, shared by everything that reads it (nested payloads included).
    """

    allow_calls: frozenset[str] = frozenset()
    limits: Limits = DEFAULT_LIMITS
    collect_only: bool = False
    strict_calls: bool = False
    budget: Budget | None = None
    weights: str = "master"

    def policy(self, collect_only: bool | None = None) -> Policy:
        """The interpreter policy these options ask for (``collect_only`` overrides the options')."""
        return Policy(self.allow_calls, self.collect_only if collect_only is None else collect_only, self.strict_calls)

    def collecting(self) -> "ReadOptions":
        """The same options, collecting every verdict instead of stopping at a refusal."""
        return replace(self, collect_only=True)


@dataclass
class RawRead:
    """What a reader found before bundle selection: the top object, the globals' verdicts, provenance."""

    root: Any
    format: str
    globals: dict[str, GlobalVerdict] = field(default_factory=dict)
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
class WriteReport:
    """What a writer produced and how it checked it.

    ``source_sha256`` is the source's digest when the writer computed it while writing (the
    safetensors writer hashes as it copies); None when it did not.
    """

    outputs: list[str]
    tensors: int
    bytes: int
    verified: bool
    details: dict[str, Any] = field(default_factory=dict)
    source_sha256: str | None = None


class Writer:
    """A format a checkpoint can be written to. Subclasses set ``name`` and implement :meth:`write`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()

    def write(self, checkpoint: Checkpoint, dst: str, options: ConvertOptions) -> WriteReport:
        """Write ``checkpoint`` to ``dst`` atomically and verify it.

        Raises:
            VerificationError: the output does not read back equal to the source.
            OutputExistsError: ``dst`` exists and ``options.force`` is false.
        """
        raise NotImplementedError
