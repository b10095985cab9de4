"""Reader for torch's zip format (``torch.save`` since 1.6) and TorchScript archives.

Entries are read in memory with bounds checks, never extracted. Storages are not read at all:
each becomes a :class:`ByteSource` range inside the zip file (entries are stored uncompressed).
"""

from __future__ import annotations

import collections
import io
import struct
import zipfile
from typing import Any, BinaryIO

from ckpt_migrate.model.checkpoint import ByteSource, StorageRef
from ckpt_migrate.errors import CorruptFileError, LimitExceededError, NotMyFormat, UnsupportedFormatError
from ckpt_migrate.io.source import Source
from ckpt_migrate.unpickler.vm import Interpreter
import ckpt_migrate.converters.readers.storages as _storages
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader

ZIP_MAGIC = b"PK\x03\x04"
MAX_EXPANSION = 1000
"""A compressed entry may not declare more than this many bytes per stored byte (plus 1 MiB)."""


def _bad_name(name: str) -> bool:
    return name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name.split("/")[0] or "\0" in name


class BufferSource:
    """An in-memory archive (a zip payload nested in a pickle) with the parts of :class:`Source` archives use."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def size(self) -> int:
        return len(self.data)

    def byte_source(self, offset: int, length: int) -> ByteSource:
        return ByteSource(self.name, offset, length, buffer=self.data)


class TorchZipArchive:
    """The entries of a torch zip file, located once, read on demand.

    Entry names that climb out of a folder, duplicate names (two readers could pick different
    ones) and stored entries whose sizes disagree are refused as malformed; nothing is extracted.
    """

    def __init__(self, source: Source | BufferSource) -> None:
        self.source = source
        self.budget: Any = None
        self.handle = source.open()
        try:
            self.zip = zipfile.ZipFile(self.handle)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error, KeyError, IndexError, NotImplementedError) as error:
            self.handle.close()
            raise CorruptFileError(f"not a readable zip archive ({error}); the file may be truncated", path=source.name) from None
        names = self.zip.namelist()
        climbing = [n for n in names if _bad_name(n)]
        if climbing:
            self.close()
            raise CorruptFileError(f"zip entry name climbs out of the archive (zip slip), refused and never written: {climbing[0]!r}", path=source.name)
        if len(set(names)) != len(names):
            duplicate = next(n for n, count in collections.Counter(names).items() if count > 1)
            self.close()
            raise CorruptFileError(f"zip entry {duplicate!r} appears more than once; readers could disagree on which to use", path=source.name)
        lying = [i.filename for i in self.zip.infolist() if i.compress_type == zipfile.ZIP_STORED and i.compress_size != i.file_size]
        if lying:
            self.close()
            raise CorruptFileError(f"zip entry {lying[0]!r} is stored uncompressed but its directory gives two different sizes", path=source.name)
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles and "data.pkl" in names:
            pickles = ["data.pkl"]
        if len(pickles) != 1:
            self.close()
            raise NotMyFormat()
        encrypted = [i.filename for i in self.zip.infolist() if i.flag_bits & 0x1]
        if encrypted:
            self.close()
            raise UnsupportedFormatError(f"zip entry {encrypted[0]!r} is encrypted; torch never writes encrypted entries and "
                                         "its bytes would be ciphertext, so the file is refused", path=source.name)
        self.top = pickles[0][: -len("data.pkl")]
        self.names = set(names)
        self.is_torchscript = f"{self.top}constants.pkl" in self.names or any(n.startswith(f"{self.top}code/") for n in names)

    @classmethod
    def of(cls, source: Source) -> "TorchZipArchive":
        """The archive of ``source``, parsed once however many readers look at it (closed with the source).

        Raises:
            NotMyFormat: a zip file, but not a torch one.
            CorruptFileError: the zip directory is malformed or lies.
            UnsupportedFormatError: an encrypted entry.
        """
        return source.remembered("torch-zip-archive", lambda: cls(source))

    def close(self) -> None:
        self.zip.close()
        self.handle.close()

    def read_entry(self, name: str, limit: int) -> bytes:
        """Read one small entry into memory.

        Raises:
            CorruptFileError: the entry is missing, too large, or fails its CRC.
        """
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise CorruptFileError(f"zip entry {name} is missing", path=self.source.name) from None
        if info.file_size > limit:
            raise LimitExceededError(f"zip entry {name} declares {info.file_size} bytes, over the limit of {limit}", path=self.source.name)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_EXPANSION * info.compress_size + (1 << 20):
            raise LimitExceededError(
                f"zip entry {name} declares {info.file_size} bytes from {info.compress_size} compressed (a decompression bomb)",
                path=self.source.name)
        if self.budget is not None and info.compress_type != zipfile.ZIP_STORED:
            self.budget.charge_alloc(info.file_size, f"decompressing zip entry {name}")
        try:
            data = self.zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, struct.error, zipfile.LargeZipFile) as error:
            raise CorruptFileError(f"zip entry {name} cannot be read: {error}", path=self.source.name) from None
        except Exception as error:  # noqa: BLE001 - decompressors raise their own types on hostile data
            raise CorruptFileError(f"zip entry {name} cannot be read: {type(error).__name__}: {error}", path=self.source.name) from None
        if len(data) != info.file_size:
            raise CorruptFileError(f"zip entry {name} holds {len(data)} bytes but its directory says {info.file_size}", path=self.source.name)
        return data

    def entry_range(self, name: str) -> ByteSource:
        """Where an uncompressed entry's bytes lie in the file (an in-memory copy when compressed).

        Raises:
            CorruptFileError: the entry is missing or its local header disagrees with the directory.
        """
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise CorruptFileError(f"storage entry {name} is missing from the archive", path=self.source.name) from None
        if info.compress_type != zipfile.ZIP_STORED:
            data = self.read_entry(name, 1 << 40)
            return ByteSource(self.source.name, 0, len(data), buffer=data)
        self.handle.seek(info.header_offset)
        header = self.handle.read(30)
        if len(header) != 30 or header[:4] != ZIP_MAGIC:
            raise CorruptFileError(f"zip entry {name} has no local header where the directory says", path=self.source.name)
        (method,) = struct.unpack("<H", header[8:10])
        if method != info.compress_type:
            raise CorruptFileError(f"zip entry {name}: its local header says compression {method}, its directory {info.compress_type}", path=self.source.name)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        local_name = self.handle.read(name_len)
        if local_name.decode("utf-8", "replace") != name and local_name.decode("cp437", "replace") != name:
            raise CorruptFileError(f"zip entry {name} does not match its local header ({local_name[:60]!r})", path=self.source.name)
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > self.source.size():
            raise CorruptFileError(f"zip entry {name} runs past the end of the file", path=self.source.name)
        return self.source.byte_source(start, info.file_size)


class TorchZipReader(Reader):
    """``torch.save`` zip files (torch ≥ 1.6) and TorchScript archives, through the safe interpreter."""

    name = "torch-zip"
    description = "torch.save zip format (torch >= 1.6), incl. TorchScript archives (weights only)"

    def sniff(self, head: bytes, source: Source) -> None:
        if not head.startswith(ZIP_MAGIC):
            raise NotMyFormat()
        TorchZipArchive.of(source)

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        return self._read(TorchZipArchive.of(source), options)

    def _read(self, archive: TorchZipArchive, options: ReadOptions, depth: int = 0,
              entry: str = "data.pkl", storage_folder: str = "data") -> RawRead:
        """Interpret one pickle of the archive (``data.pkl``; TorchScript's ``constants.pkl`` too).

        Raises:
            UnsafeFileError: the pickle names a refused global (unless the options only collect verdicts).
            CorruptFileError: the archive or its pickle is malformed.
        """
        path = archive.source.name
        top = archive.top
        archive.budget = options.budget
        byteorder = "little"
        if f"{top}byteorder" in archive.names:
            byteorder = archive.read_entry(f"{top}byteorder", 16).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CorruptFileError(f"byteorder entry says {byteorder!r}", path=path)
        storages: dict[str, StorageRef] = {}

        def persistent_load(pid: Any) -> StorageRef:
            pid = _storages.check_pid(pid, path, 5)
            if pid[0] != "storage":
                raise CorruptFileError(f"unknown persistent id kind {pid[0]!r}", path=path)
            _, type_ref, key, location, numel = pid[:5]
            key = str(key)
            if key in storages:
                return storages[key]
            dtype = _storages.storage_type(type_ref, path)
            source = archive.entry_range(f"{top}{storage_folder}/{key}")
            storage = _storages.new_storage(key, dtype, numel, location, source, path)
            storage.byteorder = byteorder
            storages[key] = storage
            return storage

        data = archive.read_entry(f"{top}{entry}", options.limits.max_pickle_bytes)
        from ckpt_migrate.converters.readers.torch_legacy import nested_loader

        interpreter = Interpreter(
            data,
            path=path,
            persistent_load=persistent_load,
            load_nested=nested_loader(path, options, depth=depth + 1),
            policy=options.policy(),
            limits=options.limits,
            budget=options.budget,
            where=f"{top}{entry}" if depth == 0 else f"{top}{entry} of a nested zip payload",
        )
        result = interpreter.run()
        fmt = "torchscript" if archive.is_torchscript else "torch-zip"
        version = archive.read_entry(f"{top}version", 64).decode("ascii", "replace").strip() if f"{top}version" in archive.names else None
        if version is None and f"{top}.data/version" in archive.names:
            version = archive.read_entry(f"{top}.data/version", 64).decode("ascii", "replace").strip()
        meta = {"archive_root": top.rstrip("/"), "byteorder": byteorder, "zip_version": version, "storages": len(storages)}
        return RawRead(result.value, fmt, result.globals, meta)


def read_nested_zip(payload: bytes, name: str, options: ReadOptions, depth: int) -> RawRead:
    """Read a torch zip archive held in memory (a ``_load_from_bytes`` payload) through the same rules.

    Raises:
        UnsafeFileError: its pickle names a refused global (unless the options only collect verdicts).
        CorruptFileError: the archive or its pickle is malformed.
    """
    try:
        archive = TorchZipArchive(BufferSource(payload, name))
    except NotMyFormat:
        raise CorruptFileError("nested zip payload holds no torch data.pkl", path=name) from None
    try:
        return TorchZipReader()._read(archive, options, depth)
    finally:
        archive.close()
