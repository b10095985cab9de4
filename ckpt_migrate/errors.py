"""One error hierarchy for ckpt-migrate; every class carries the CLI exit code it maps to.

Messages say what was found, what was expected, and what to do next. The CLI prints
``str(error)`` on one line and exits with ``error.exit_code``.
"""

from __future__ import annotations


class CkptMigrateError(Exception):
    """Base class of every error ckpt-migrate raises on purpose (exit code 1)."""

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)

    def with_path(self, path: str) -> "CkptMigrateError":
        """Return the same error naming ``path`` when it does not name a file yet."""
        if self.path is None:
            self.path = path
            self.args = (f"{path}: {self.message}",)
        return self


class UnsupportedFormatError(CkptMigrateError, ValueError):
    """No reader recognises the file, or the format is known but not supported."""


class CorruptFileError(CkptMigrateError, ValueError):
    """The file claims a format but its bytes are inconsistent or truncated."""


class LimitExceededError(CorruptFileError):
    """A resource limit of the safe interpreter or a header parser was exceeded."""


class UnsafeFileError(CkptMigrateError):
    """The file tries to call something outside the allowlist (exit code 3)."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None, refused: list[str] | None = None) -> None:
        self.refused = list(refused or [])
        super().__init__(message, path=path)


class SelectionError(CkptMigrateError, LookupError):
    """A bundle holds no weights where asked, or several candidates and no ``--select``."""


class SchemaError(CkptMigrateError, ValueError):
    """A schema file is malformed, or applying it would lose or collide keys."""


class UnknownSchemaError(SchemaError):
    """A ``--schema`` names no registered schema and no file: a usage error (exit code 2)."""

    exit_code = 2


class ArchitectureError(CkptMigrateError, LookupError):
    """An architecture cannot be identified or rebuilt from the weights."""


class VerificationError(CkptMigrateError):
    """The written output does not read back equal to the source."""


class OutputExistsError(CkptMigrateError, FileExistsError):
    """The destination exists and ``--force`` was not given."""


class WriteFailedError(CkptMigrateError, OSError):
    """The operating system refused to write an output: no space, read-only, no permission, not a folder."""

    @classmethod
    def from_os_error(cls, error: OSError, path: str) -> "WriteFailedError":
        """One line naming ``path`` and the cause, with what to do about it."""
        return cls(describe_os_error(error), path=path)


def describe_os_error(error: OSError) -> str:
    """The cause of an OS error in words, with a hint for the common ones (no space, read-only, permission)."""
    import errno

    cause = error.strerror or str(error) or type(error).__name__
    hints = {
        errno.ENOSPC: "free some space or choose another destination",
        errno.EDQUOT: "free some space or choose another destination",
        errno.EROFS: "choose a writable destination",
        errno.EACCES: "check the permissions or choose another destination",
        errno.EPERM: "check the permissions or choose another destination",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "give a file name, not a folder",
        errno.ENAMETOOLONG: "choose a shorter name",
    }
    hint = hints.get(error.errno or 0)
    return cause[:1].lower() + cause[1:] + (f"; {hint}" if hint else "")


class UsageError(CkptMigrateError, ValueError):
    """Options that cannot work together, found after click parsed them (exit code 2)."""

    exit_code = 2


class MissingDependencyError(CkptMigrateError, ImportError):
    """An optional extra (onnx, ray, s3) is needed and not installed."""


class NotMyFormat(Exception):
    """Private signal from a reader's sniff: these bytes are not mine. Only the resolver catches it."""
