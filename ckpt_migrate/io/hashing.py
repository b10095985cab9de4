"""The one definition of the digests ckpt-migrate records: of a file, and of a folder source.

A folder (DCP, sharded safetensors, a DeepSpeed checkpoint) is digested as the sha256 of its
members' lines ``relative/posix/name\\0<sha256 of the member>\\n`` in sorted name order, so the
provenance recorded by ``convert`` and the manifest kept by ``migrate`` agree for the same folder.

A file being converted is hashed from the copy's own buffers (:class:`SequentialSha256` fed by a
:class:`HashThread`), so recording its sha256 costs no second read of the source.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Any, BinaryIO, Callable, Iterable

CHUNK = 1 << 22
THREAD_MIN_BYTES = 8 << 20


def stream_sha256(handle: BinaryIO) -> str:
    """The sha256 of everything ``handle`` yields from where it stands, read in bounded chunks."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """The sha256 of a local file, read in bounded chunks.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def folder_sha256(members: Iterable[str], member_sha256: Callable[[str], str]) -> str:
    """The digest of a folder from its members' relative names (``/``-separated) and their digests.

    Args:
        members: relative names of the folder's regular files, in any order.
        member_sha256: returns the sha256 of one member, given its relative name.

    Returns:
        The hex digest; equal for equal folders wherever they are read from.
    """
    digest = hashlib.sha256()
    for name in sorted(members):
        digest.update(f"{name}\0{member_sha256(name)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class SequentialSha256:
    """The sha256 of one local file, fed with pieces of it as they pass through someone else's buffers.

    A piece that reaches past what is hashed so far extends the digest; bytes nobody fed (zip
    headers, the pickle, gaps between storages) are read from the file when a later piece needs
    them, and :meth:`hexdigest` reads whatever is left. Fed in file order, every byte of the file
    is read once by the whole program; fed in any other order, the digest is still exact and only
    the out-of-order bytes are read twice. ``gap_bytes`` counts what the digest read itself.

    Raises:
        OSError: the file cannot be opened (from the constructor).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        status = os.fstat(self.fd)
        self.identity = (status.st_dev, status.st_ino)
        self.size = status.st_size
        self.upto = 0
        self.gap_bytes = 0
        self.fed_bytes = 0
        self._digest = hashlib.sha256()
        self._value: str | None = None

    def holds(self, fd: int) -> bool:
        """True when the open descriptor ``fd`` is this very file (same device and inode)."""
        status = os.fstat(fd)
        return (status.st_dev, status.st_ino) == self.identity

    def update(self, offset: int, data: "bytes | bytearray | memoryview") -> None:
        """Account for ``data``, the file's bytes from ``offset``.

        Raises:
            OSError: a gap before ``offset`` cannot be read.
            ValueError: the digest is already finished.
        """
        if self._value is not None:
            raise ValueError("digest already finished")
        end = offset + len(data)
        if end <= self.upto:
            return
        if offset > self.upto:
            self._read_to(offset)
        skip = self.upto - offset
        self._digest.update(memoryview(data)[skip:] if skip else data)
        self.fed_bytes += end - self.upto
        self.upto = end

    def _read_to(self, stop: int) -> None:
        while self.upto < stop:
            chunk = os.pread(self.fd, min(CHUNK, stop - self.upto), self.upto)
            if not chunk:
                raise OSError(f"{self.path} ended at byte {self.upto} while being hashed")
            self._digest.update(chunk)
            self.gap_bytes += len(chunk)
            self.upto += len(chunk)

    def hexdigest(self) -> str:
        """Read what was not fed, close the file and return the hex digest (the same on every later call).

        Raises:
            OSError: the rest of the file cannot be read.
        """
        if self._value is None:
            try:
                while chunk := os.pread(self.fd, CHUNK, self.upto):
                    self._digest.update(chunk)
                    self.gap_bytes += len(chunk)
                    self.upto += len(chunk)
                self._value = self._digest.hexdigest()
            finally:
                self.close()
        return self._value

    def close(self) -> None:
        """Release the file descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HashThread:
    """A :class:`SequentialSha256` fed on a thread of its own, so hashing runs beside the copy on another core.

    ``hashlib`` releases the GIL while it hashes a large buffer. :meth:`submit` hands over a piece
    and a ``release`` callback that runs once the piece is hashed (the buffer may then be reused);
    at most ``depth`` pieces wait at a time, so memory stays bounded. A file smaller than
    :data:`THREAD_MIN_BYTES` is hashed on the caller's thread instead (``threaded=False``): for a
    small file, handing pieces between threads costs more than the hash.
    """

    def __init__(self, digest: SequentialSha256, depth: int = 16, threaded: bool | None = None) -> None:
        self.digest = digest
        self.failure: BaseException | None = None
        self._queue: "queue.Queue[tuple[int, Any, Callable[[], None] | None] | None]" = queue.Queue(depth)
        self._thread: threading.Thread | None = None
        self._open = True
        if threaded if threaded is not None else digest.size >= THREAD_MIN_BYTES:
            self._thread = threading.Thread(target=self._run, name="ckpt-migrate-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._update(*item)

    def _update(self, offset: int, data: Any, release: "Callable[[], None] | None") -> None:
        try:
            if self.failure is None:
                self.digest.update(offset, data)
        except BaseException as error:  # noqa: BLE001 - re-raised by result()
            self.failure = error
        finally:
            if release is not None:
                release()

    def holds(self, fd: int) -> bool:
        """True when ``fd`` is the file being hashed."""
        return self.digest.holds(fd)

    def submit(self, offset: int, data: Any, release: "Callable[[], None] | None" = None) -> None:
        """Queue ``data`` (the file's bytes from ``offset``) for hashing; ``release`` runs once it is hashed."""
        if not self._open or self.failure is not None:
            if release is not None:
                release()
        elif self._thread is None:
            self._update(offset, data, release)
        else:
            self._queue.put((offset, data, release))

    def _stop(self) -> None:
        self._open = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def result(self) -> str:
        """Wait for the queued pieces, hash what was not fed and return the hex digest.

        Raises:
            OSError: the file could not be read.
        """
        self._stop()
        if self.failure is not None:
            self.digest.close()
            raise self.failure
        return self.digest.hexdigest()

    def close(self) -> None:
        """Stop the thread and release the file without finishing the digest (after a failed write)."""
        self._stop()
        self.digest.close()
