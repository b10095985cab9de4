"""Where a checkpoint's bytes come from: a local file or any fsspec URL.

Readers get a :class:`Source`; they read the head for sniffing, map or read ranges, and hand out
:class:`~ckpt_migrate.model.checkpoint.ByteSource` ranges for tensors without reading them.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

from ckpt_migrate.model.checkpoint import ByteSource
from ckpt_migrate.errors import CkptMigrateError
from ckpt_migrate.io.hashing import folder_sha256, stream_sha256


@dataclass
class Source:
    """A checkpoint input: ``name`` for messages, ``url`` to open (a local path or an fsspec URL).

    What readers work out about the bytes once (a zip file's directory) is kept with the source
    (:meth:`remembered`), so sniffing and reading the same source do not parse it again;
    :meth:`close` releases it.
    """

    url: str
    _remembered: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def remembered(self, key: str, make: Callable[[], Any]) -> Any:
        """What ``make()`` returned the first time ``key`` was asked for on this source.

        A value with a ``close`` method is closed by :meth:`close`.

        Args:
            key: names what is remembered (one reader's parse of the bytes).
            make: builds it, called at most once per key while it succeeds.

        Returns:
            The remembered value.

        Raises:
            Exception: whatever ``make`` raises; nothing is remembered then.
        """
        if key not in self._remembered:
            self._remembered[key] = make()
        return self._remembered[key]

    def close(self) -> None:
        """Close what :meth:`remembered` holds (open files), and forget it."""
        held, self._remembered = self._remembered, {}
        for value in held.values():
            closer = getattr(value, "close", None)
            if closer is not None:
                closer()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str:
        return self.url[len("file://"):] if self.url.startswith("file://") else self.url

    def open(self) -> BinaryIO:
        """Open the input for binary reading.

        Raises:
            CkptMigrateError: the file does not exist or cannot be read.
        """
        try:
            if self.is_local:
                return open(self.local_path, "rb")
            import fsspec

            return fsspec.open(self.url, "rb").open()
        except FileNotFoundError:
            raise CkptMigrateError("no such file", path=self.name) from None
        except IsADirectoryError:
            raise CkptMigrateError("is a directory, not a checkpoint file", path=self.name) from None
        except OSError as error:
            raise CkptMigrateError(f"cannot read: {error.strerror or error}", path=self.name) from None

    def size(self) -> int:
        if self.is_local:
            return os.path.getsize(self.local_path)
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url)
        return int(fs.size(path))

    def head(self, size: int = 4096) -> bytes:
        if self.is_local and os.path.isdir(self.local_path):
            return b""
        with self.open() as handle:
            return handle.read(size)

    def map(self) -> memoryview:
        """The whole input as a read-only buffer: an mmap for local files, bytes otherwise."""
        if self.is_local:
            with open(self.local_path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    return memoryview(b"")
                return memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
        with self.open() as handle:
            return memoryview(handle.read())

    def byte_source(self, offset: int, length: int) -> ByteSource:
        """A range of this input that a tensor's storage occupies."""
        if self.is_local:
            return ByteSource(self.local_path, offset, length)
        return ByteSource(self.url, offset, length, opener=self.open)

    def sha256(self) -> str:
        """The SHA-256 of the file; of a local folder (DCP, shards), :func:`~ckpt_migrate.io.hashing.folder_sha256`."""
        if self.is_local and os.path.isdir(self.local_path):
            base = self.local_path
            members = [os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/")
                       for root, _, files in os.walk(base) for name in files]

            def member_sha256(rel: str) -> str:
                with open(os.path.join(base, rel), "rb") as handle:
                    return stream_sha256(handle)

            return folder_sha256(members, member_sha256)
        with self.open() as handle:
            return stream_sha256(handle)
