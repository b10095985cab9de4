"""One view over a folder tree, local or behind an fsspec URL (``s3://``, ``file://``, ``memory://``).

Migration reads SRC and writes DST through this class only, so planning, the manifest and the
workers never care where the bytes live. Local paths use :mod:`os` directly (symlink checks,
appends, atomic renames); anything else goes through fsspec without downloading whole trees.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from stat import S_ISREG
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

from ckpt_migrate.io.atomic import is_temp, temp_name
from ckpt_migrate.errors import CkptMigrateError, MissingDependencyError
from ckpt_migrate.converters.filenames import is_dcp_listing
from ckpt_migrate.io.hashing import folder_sha256, stream_sha256

CHUNK = 1 << 22


def is_local_url(url: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return "://" not in url or url.startswith("file://")


@dataclass(frozen=True)
class Entry:
    """A file found under a tree: its ``/``-separated path relative to the root, size and mtime.

    ``skip_reason`` is set when the entry must not be read (a symlink out of the tree, a symlinked folder).
    ``folder`` marks a checkpoint that is a folder (a ``torch.distributed.checkpoint`` with ``.metadata``,
    a DeepSpeed checkpoint with ``latest``).
    """

    rel: str
    size: int
    mtime: float
    skip_reason: str | None = None
    folder: bool = False


VCS_FOLDERS = frozenset({".git", ".hg", ".svn"})
TEMP_REASON = "a temporary file of an interrupted ckpt-migrate run"


def is_deepspeed_listing(folder: str, files: list[str], dirs: list[str]) -> bool:
    """True for a DeepSpeed checkpoint folder: a ``latest`` file naming a tag folder beside it."""
    if "latest" not in files:
        return False
    try:
        with open(os.path.join(folder, "latest"), "rb") as handle:
            tag = handle.read(4097).decode("utf-8", "replace").strip()
    except OSError:
        return False
    return bool(tag) and tag in dirs


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class Tree:
    """A folder tree at ``url``: walk it, stat, hash, read and write files by relative path.

    ``Tree(url)`` gives a :class:`LocalTree` for a plain path or ``file://`` URL and a
    :class:`RemoteTree` (fsspec) for anything else; the two implement the same methods.

    Raises:
        MissingDependencyError: the URL's protocol needs a package that is not installed (s3fs…).
    """

    local: bool = False
    root: str
    url: str

    def __new__(cls, url: str = "") -> "Tree":
        if cls is Tree:
            cls = LocalTree if is_local_url(url) else RemoteTree
        return super().__new__(cls)

    def __repr__(self) -> str:
        return f"Tree({self.url!r})"

    @property
    def in_process_only(self) -> bool:
        """True when other processes cannot see this tree (fsspec's ``memory://``)."""
        return False

    def walk(self, exclude: str | None = None) -> list[Entry]:
        """Every file under the root, sorted by relative path; ``exclude`` prunes one sub-folder.

        Symlinks are never followed out of the tree: a file link that resolves outside, a broken
        link and a symlinked folder come back with ``skip_reason`` set, as do temporaries of an
        interrupted run. A DCP or DeepSpeed folder below the root is one entry (``folder=True``), not its
        files. Version-control folders (``.git``, ``.hg``, ``.svn``) are not walked.

        Raises:
            CkptMigrateError: the root is not a readable folder.
        """
        if not self.is_dir():
            raise CkptMigrateError("is not a folder", path=self.url)
        return sorted(self._walk(exclude), key=lambda entry: entry.rel)

    def sha256(self, rel: str) -> str:
        """sha256 of a file; of a folder, :func:`~ckpt_migrate.io.hashing.folder_sha256` of its files.

        Raises:
            OSError: the file cannot be read.
        """
        if not self._is_folder(rel):
            return self._hash_file(rel)
        return folder_sha256([member[len(rel) + 1:] for member in self._files_under(rel)],
                             lambda name: self._hash_file(f"{rel}/{name}"))

    def _hash_file(self, rel: str) -> str:
        with self.open(rel) as handle:
            return stream_sha256(handle)

    def read_text(self, rel: str) -> str | None:
        """A text file's content, or None when it does not exist."""
        try:
            with self.open(rel, "rb") as handle:
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def path(self, rel: str) -> str:
        """The path of ``rel`` as this tree's file system names it."""
        raise NotImplementedError

    def url_of(self, rel: str) -> str:
        """A URL (or local path) that :class:`~ckpt_migrate.io.source.Source` and fsspec can open."""
        raise NotImplementedError

    def relative(self, other: "Tree") -> str | None:
        """``other``'s root relative to this root when it lies inside this tree, else None."""
        raise NotImplementedError

    def is_dir(self) -> bool:
        """True when the root is a folder."""
        raise NotImplementedError

    def stat(self, rel: str) -> tuple[int, float] | None:
        """(size, mtime) of a file, or (total size, newest mtime) of a folder; None when absent."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        """True when ``rel`` exists (a broken symlink counts)."""
        raise NotImplementedError

    def open(self, rel: str, mode: str = "rb") -> Any:
        """Open ``rel`` as a file object."""
        raise NotImplementedError

    def makedirs(self) -> None:
        """Create the root folder (a no-op on object stores)."""
        raise NotImplementedError

    def replace_text(self, rel: str, text: str) -> None:
        """Write a small text file so that readers see the old or the new content, never a mix."""
        raise NotImplementedError

    def append_text(self, rel: str, text: str, sync: bool = True) -> None:
        """Append to a text file (fsync'ed when ``sync`` on local disks)."""
        raise NotImplementedError

    def sync(self, rel: str) -> None:
        """Make a written file durable (fsync on local disks)."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Remove a file or folder, ignoring one that is already gone."""
        raise NotImplementedError

    def temporaries(self) -> Iterator[str]:
        """Relative paths of temporaries left by interrupted runs (names carrying the temp marker)."""
        raise NotImplementedError

    def _walk(self, exclude: str | None) -> list[Entry]:
        raise NotImplementedError

    def _is_folder(self, rel: str) -> bool:
        raise NotImplementedError

    def _files_under(self, rel: str) -> list[str]:
        raise NotImplementedError


class LocalTree(Tree):
    """A tree on a local disk, through :mod:`os` (symlink checks, appends, atomic renames, fsync)."""

    local = True

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") or url
        path = url[len("file://"):] if url.startswith("file://") else url
        self.root = os.path.abspath(os.path.expanduser(path))
        self.fs: Any = None

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel else self.root

    def url_of(self, rel: str) -> str:
        return self.path(rel)

    def relative(self, other: Tree) -> str | None:
        if not isinstance(other, LocalTree):
            return None
        mine, theirs = os.path.realpath(self.root), os.path.realpath(other.root)
        if theirs == mine:
            return ""
        if theirs.startswith(mine.rstrip(os.sep) + os.sep):
            return os.path.relpath(theirs, mine).replace(os.sep, "/")
        return None

    def is_dir(self) -> bool:
        return os.path.isdir(self.root)

    def _walk(self, exclude: str | None) -> list[Entry]:
        real_root = os.path.realpath(self.root)
        found: list[Entry] = []

        def fail(error: OSError) -> None:
            raise CkptMigrateError(f"cannot list a folder: {error.strerror}", path=error.filename)

        for folder, dirs, files in os.walk(self.root, followlinks=False, onerror=fail):
            rel_folder = os.path.relpath(folder, self.root).replace(os.sep, "/")
            rel_folder = "" if rel_folder == "." else rel_folder
            if rel_folder and (is_dcp_listing(files) or is_deepspeed_listing(folder, files, dirs)):
                size, mtime = self.stat(rel_folder) or (0, 0.0)
                found.append(Entry(rel_folder, size, mtime, folder=True))
                dirs[:] = []
                continue
            kept = []
            for name in sorted(dirs):
                rel = f"{rel_folder}/{name}" if rel_folder else name
                if (exclude is not None and rel == exclude) or name in VCS_FOLDERS:
                    continue
                if os.path.islink(os.path.join(folder, name)):
                    found.append(Entry(rel, 0, 0.0, "a symlinked folder (not followed)"))
                    continue
                kept.append(name)
            dirs[:] = kept
            for name in files:
                full = os.path.join(folder, name)
                rel = f"{rel_folder}/{name}" if rel_folder else name
                if is_temp(name):
                    found.append(Entry(rel, 0, 0.0, TEMP_REASON))
                    continue
                if os.path.islink(full):
                    target = os.path.realpath(full)
                    if not (target + os.sep).startswith(real_root.rstrip(os.sep) + os.sep) or target == real_root:
                        found.append(Entry(rel, 0, 0.0, "a symlink that points out of the source folder (not followed)"))
                        continue
                    if not os.path.isfile(target):
                        found.append(Entry(rel, 0, 0.0, "a broken symlink, or one to something that is not a file"))
                        continue
                try:
                    stat = os.stat(full)
                except OSError as error:
                    found.append(Entry(rel, 0, 0.0, f"cannot be read: {error.strerror}"))
                    continue
                if not S_ISREG(stat.st_mode):
                    found.append(Entry(rel, 0, 0.0, "not a regular file (a FIFO, device or socket; not read)"))
                    continue
                found.append(Entry(rel, stat.st_size, stat.st_mtime))
        return found

    def stat(self, rel: str) -> tuple[int, float] | None:
        path = self.path(rel)
        if not os.path.lexists(path):
            return None
        if os.path.isdir(path) and not os.path.islink(path):
            sizes, mtimes = [0], [os.stat(path).st_mtime]
            for folder, _, files in os.walk(path):
                for name in files:
                    stat = os.stat(os.path.join(folder, name))
                    sizes.append(stat.st_size)
                    mtimes.append(stat.st_mtime)
            return sum(sizes), max(mtimes)
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def open(self, rel: str, mode: str = "rb") -> Any:
        return open(self.path(rel), mode)

    def _is_folder(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def _files_under(self, rel: str) -> list[str]:
        names = []
        for folder, _, files in os.walk(self.path(rel)):
            for name in files:
                names.append(os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/"))
        return sorted(names)

    def makedirs(self) -> None:
        """Create the root folder.

        Raises:
            CkptMigrateError: the folder cannot be created.
        """
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as error:
            raise CkptMigrateError(f"cannot create the destination folder: {error.strerror}", path=self.root) from None

    def replace_text(self, rel: str, text: str) -> None:
        """Write through a temporary name and :func:`os.replace` after an fsync."""
        path = self.path(rel)
        tmp = temp_name(path)
        with open(tmp, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def append_text(self, rel: str, text: str, sync: bool = True) -> None:
        with open(self.path(rel), "ab") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            if sync:
                os.fsync(handle.fileno())

    def sync(self, rel: str) -> None:
        with open(self.path(rel), "rb") as handle:
            os.fsync(handle.fileno())

    def remove(self, rel: str) -> None:
        from ckpt_migrate.io.atomic import remove_quietly

        remove_quietly(self.path(rel))

    def temporaries(self) -> Iterator[str]:
        if not os.path.isdir(self.root):
            return
        for folder, dirs, files in os.walk(self.root):
            for name in list(dirs) + files:
                if is_temp(name):
                    yield os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
            dirs[:] = [d for d in dirs if not is_temp(d)]


class RemoteTree(Tree):
    """A tree behind an fsspec URL (``s3://``, ``memory://``…), read without downloading whole trees."""

    local = False

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/") or url
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except ImportError as error:
            package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(url.split("://")[0], "")
            hint = "pip install ckpt-migrate[s3]" if package == "s3fs" else f"pip install {package or 'the fsspec implementation for this protocol'}"
            raise MissingDependencyError(f"cannot open {url}: {error}; {hint}") from None
        self.root = root.rstrip("/")

    @property
    def in_process_only(self) -> bool:
        return self.url.startswith("memory://")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        return self.fs.unstrip_protocol(self.path(rel))

    def relative(self, other: Tree) -> str | None:
        if not isinstance(other, RemoteTree) or type(self.fs) is not type(other.fs):
            return None
        if other.root == self.root:
            return ""
        if other.root.startswith(self.root + "/"):
            return other.root[len(self.root) + 1:]
        return None

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.root))

    def _walk(self, exclude: str | None) -> list[Entry]:
        found = []
        listing = self.fs.find(self.root, detail=True, withdirs=False)
        by_folder: dict[str, list[str]] = {}
        for path in listing:
            folder, name = posixpath.split(path.rstrip("/"))
            by_folder.setdefault(folder, []).append(name)
        dcp = sorted(folder for folder, names in by_folder.items() if folder.startswith(self.root + "/") and is_dcp_listing(names)
                     and not (exclude is not None and (folder[len(self.root) + 1:] + "/").startswith(exclude + "/")))
        for folder in dcp:
            found.append(Entry(folder[len(self.root) + 1:], 0, 0.0, "a DCP folder on remote storage (copy it to a local disk to convert it)"))
        for path, info in listing.items():
            if any(path.startswith(folder + "/") for folder in dcp):
                continue
            path = path.rstrip("/")
            if not path.startswith(self.root + "/"):
                continue
            rel = path[len(self.root) + 1:]
            if exclude is not None and (rel == exclude or rel.startswith(exclude + "/")):
                continue
            if info.get("type", "file") != "file":
                continue
            parts = rel.split("/")
            if VCS_FOLDERS.intersection(parts[:-1]):
                continue
            if is_temp(parts[-1]):
                found.append(Entry(rel, 0, 0.0, TEMP_REASON))
                continue
            if any(part in ("", ".", "..") for part in parts) or "\\" in rel:
                found.append(Entry(rel, 0, 0.0, "a name with empty, '.' or '..' parts, which could climb out of the destination"))
                continue
            found.append(Entry(rel, int(info.get("size") or 0), self._mtime_of(path, info)))
        return found

    def _mtime_of(self, path: str, info: dict[str, Any]) -> float:
        for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
            if info.get(key) is not None:
                return _timestamp(info[key])
        with contextlib.suppress(Exception):
            return _timestamp(self.fs.modified(path))
        return 0.0

    def stat(self, rel: str) -> tuple[int, float] | None:
        path = self.path(rel)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            files = self.fs.find(path, detail=True, withdirs=False)
            if not files:
                return None
            return sum(int(i.get("size") or 0) for i in files.values()), max(self._mtime_of(p, i) for p, i in files.items())
        return int(info.get("size") or 0), self._mtime_of(path, info)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def open(self, rel: str, mode: str = "rb") -> Any:
        return self.fs.open(self.path(rel), mode)

    def _is_folder(self, rel: str) -> bool:
        return bool(self.fs.isdir(self.path(rel)))

    def _files_under(self, rel: str) -> list[str]:
        return sorted(p[len(self.root) + 1:] for p in self.fs.find(self.path(rel), withdirs=False))

    def makedirs(self) -> None:
        with contextlib.suppress(Exception):
            self.fs.makedirs(self.root, exist_ok=True)

    def replace_text(self, rel: str, text: str) -> None:
        """Object stores replace a whole object in one PUT."""
        self.fs.pipe_file(self.path(rel), text.encode("utf-8"))

    def append_text(self, rel: str, text: str, sync: bool = True) -> None:
        """Object stores cannot append: read, extend, replace."""
        self.replace_text(rel, (self.read_text(rel) or "") + text)

    def sync(self, rel: str) -> None:
        """A no-op: object-store writes are durable when they return."""

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel), recursive=True)

    def temporaries(self) -> Iterator[str]:
        if not self.fs.exists(self.root):
            return
        for path in self.fs.find(self.root, withdirs=True):
            if is_temp(posixpath.basename(path.rstrip("/"))):
                yield path.rstrip("/")[len(self.root) + 1:]
