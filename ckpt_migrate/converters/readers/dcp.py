"""Reader of torch.distributed.checkpoint (DCP) folders: ``.metadata`` plus ``__<rank>_<n>.distcp`` files.

Reading does not use torch's ``FileSystemReader``: it calls ``pickle.load`` on ``.metadata`` and
``torch.load(weights_only=False)`` on every non-tensor item. We parse ``.metadata`` with our own
interpreter (its dataclasses become inert stubs) and open every item, tensor or not, as the
``torch.save`` zip it is, through the same interpreter, at its byte range inside the ``.distcp`` file.
Nothing from the folder is trusted or executed; only file names inside the folder are opened.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.converters.filenames import DCP_METADATA
from ckpt_migrate.model.layout import contiguous_strides
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef
from ckpt_migrate.errors import CorruptFileError, NotMyFormat, UnsupportedFormatError
from ckpt_migrate.io.members import member_path
from ckpt_migrate.io.source import Source
from ckpt_migrate.unpickler.stubs import StubObject, TorchMarker
from ckpt_migrate.unpickler.verdicts import GlobalVerdict, merge_uses
from ckpt_migrate.unpickler.vm import Interpreter
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader
from ckpt_migrate.converters.readers.torch_zip import ZIP_MAGIC, TorchZipArchive, TorchZipReader

METADATA_NAME = DCP_METADATA


def dcp_folder(source: Source) -> str | None:
    """The DCP folder ``source`` names (the folder itself or its ``.metadata`` file), or ``None``."""
    if not source.is_local:
        return None
    path = source.local_path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA_NAME)):
        return path
    if os.path.basename(path) == METADATA_NAME and os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        if any(name.endswith(".distcp") for name in os.listdir(folder)):
            return folder
    return None


class _SliceFile(io.RawIOBase):
    """A read-only, seekable window ``[offset, offset + length)`` of a file."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        super().__init__()
        self._handle = open(path, "rb")
        self._offset = offset
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._length - self._pos)
        if count <= 0:
            return 0
        self._handle.seek(self._offset + self._pos)
        data = self._handle.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._handle.close()
        super().close()


@dataclass
class _SliceSource(Source):
    """One item of a ``.distcp`` file seen as a file of its own (what ``TorchZipArchive`` reads)."""

    base: str = ""
    offset: int = 0
    length: int = 0

    def open(self) -> BinaryIO:
        return io.BufferedReader(_SliceFile(self.base, self.offset, self.length))

    def size(self) -> int:
        return self.length

    def head(self, size: int = 4096) -> bytes:
        with self.open() as handle:
            return handle.read(size)

    def byte_source(self, offset: int, length: int) -> ByteSource:
        return ByteSource(self.base, self.offset + offset, length)


@dataclass
class _Item:
    """Where one saved item lies: its file, byte range and any stream transforms."""

    path: str
    offset: int
    length: int
    transforms: tuple


class _ItemRefused(Exception):
    """An item's pickle names a refused global while verdicts are only collected: stop, the verdict is made."""


def _fqn(value: Any, what: str, path: str) -> str:
    if not isinstance(value, str):
        raise CorruptFileError(f"{what} in .metadata has a fully qualified name of type {type(value).__name__}, not a string", path=path)
    return value


def _ints(value: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CorruptFileError(f"{what} in .metadata is {type(value).__name__}, not a list of integers", path=path)
    return tuple(value)


class DcpFolder:
    """A parsed DCP folder: the metadata's globals and every item as lazy tensors or inert values."""

    def __init__(self, folder: str, options: ReadOptions) -> None:
        self.folder = folder
        self.options = options
        self.name = folder
        self.globals: dict[str, GlobalVerdict] = {}
        self.refused = False
        self.sizes: dict[str, int] = {}
        self.metadata = self._read_metadata()
        self.storage = self._index_storage() if not self.refused else {}

    def _read_metadata(self) -> StubObject | None:
        path = os.path.join(self.folder, METADATA_NAME)
        limit = self.options.limits.max_pickle_bytes
        if os.path.getsize(path) > limit:
            raise CorruptFileError(f"{METADATA_NAME} is larger than the {limit}-byte pickle limit", path=self.name)
        with open(path, "rb") as handle:
            data = handle.read()
        result = Interpreter(data, path=path, policy=self.options.policy(), limits=self.options.limits,
                             budget=self.options.budget).run()
        self._merge(result.globals)
        if result.refused:
            self.refused = True
            return None
        value = result.value
        if not (isinstance(value, StubObject) and value.class_name.endswith(".Metadata")
                and isinstance(value.attributes.get("state_dict_metadata"), dict)):
            raise CorruptFileError(f"{METADATA_NAME} does not hold torch.distributed.checkpoint Metadata", path=self.name)
        return value

    def _merge(self, uses: dict[str, GlobalVerdict]) -> None:
        merge_uses(self.globals, uses.values())

    def _index_storage(self) -> dict[tuple, _Item]:
        table = self.metadata.attributes.get("storage_data") or {}
        if not isinstance(table, dict):
            raise CorruptFileError("storage_data in .metadata is not a mapping", path=self.name)
        index: dict[tuple, _Item] = {}
        for key, info in table.items():
            if not (isinstance(key, StubObject) and isinstance(info, StubObject)):
                raise CorruptFileError("storage_data in .metadata holds something other than index/storage records", path=self.name)
            fqn = _fqn(key.attributes.get("fqn"), "a storage record", self.name)
            offset = key.attributes.get("offset")
            offset = _ints(offset, f"the offset of item {fqn!r}", self.name) if offset is not None else None
            index[(fqn, offset)] = self._item(fqn, info.attributes)
        return index

    def _item(self, fqn: Any, info: dict) -> _Item:
        relative, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
        if not isinstance(relative, str) or not relative or os.path.basename(relative) != relative or relative in (".", ".."):
            raise CorruptFileError(f"item {fqn!r} names file {relative!r}, which is not a file inside the folder", path=self.name)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)):
            raise CorruptFileError(f"item {fqn!r} has byte range {offset!r}+{length!r}", path=self.name)
        path = member_path(self.folder, relative, f"item {fqn!r}: file", self.name)
        size = self.sizes.setdefault(path, os.path.getsize(path))
        if offset + length > size:
            raise CorruptFileError(f"item {fqn!r} at bytes {offset}..{offset + length} runs past the end of {relative} ({size} bytes)", path=self.name)
        transforms = tuple(info.get("transform_descriptors") or ())
        return _Item(path, offset, length, transforms)

    def planner_paths(self) -> dict[str, tuple]:
        """fqn → the original nested path (``planner_data``), for every item."""
        entries = self.metadata.attributes["state_dict_metadata"]
        for fqn in entries:
            _fqn(fqn, "an entry of state_dict_metadata", self.name)
        planner = self.metadata.attributes.get("planner_data")
        planner = planner if isinstance(planner, dict) else {}
        order = [k for k in planner if k in entries] + [k for k in entries if k not in planner]
        paths: dict[str, tuple] = {}
        for fqn in order:
            path = planner.get(fqn)
            ok = isinstance(path, (tuple, list)) and path and all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in path)
            paths[str(fqn)] = tuple(path) if ok else (str(fqn),)
        return paths

    def flat(self) -> "OrderedDict[str, Any]":
        """fqn → tensor reference or inert value; a tensor saved in several chunks is assembled in memory.

        Raises:
            CorruptFileError: an entry is malformed, missing, or disagrees with its bytes.
            UnsupportedFormatError: items were written with stream transforms (compression).
            UnsafeFileError: an item's pickle calls something outside the allowlist.
        """
        entries = self.metadata.attributes["state_dict_metadata"]
        out: "OrderedDict[str, Any]" = OrderedDict()
        for fqn in self.planner_paths():
            entry = entries[fqn]
            kind = entry.class_name.rsplit(".", 1)[-1] if isinstance(entry, StubObject) else type(entry).__name__
            if kind == "TensorStorageMetadata":
                out[fqn] = self._tensor(fqn, entry.attributes)
            elif kind == "BytesStorageMetadata":
                out[fqn] = self._bytes(fqn)
            else:
                raise UnsupportedFormatError(f"DCP entry {fqn!r} is a {kind}, which this reader does not open", path=self.name)
        return out

    def _lookup(self, fqn: str, offset: tuple | None) -> _Item:
        item = self.storage.get((fqn, offset))
        if item is None and offset is not None:
            item = self.storage.get((fqn, None))
        if item is None:
            raise CorruptFileError(f"no storage record for item {fqn!r} at offset {offset}", path=self.name)
        if item.transforms:
            raise UnsupportedFormatError(f"item {fqn!r} was written through stream transforms {list(item.transforms)}; "
                                         "rewrite the checkpoint without them", path=self.name)
        return item

    def _open_zip(self, fqn: str, item: _Item) -> Any:
        source = _SliceSource(f"{item.path}[{fqn}]", base=item.path, offset=item.offset, length=item.length)
        try:
            archive = TorchZipArchive(source)
        except NotMyFormat:
            raise CorruptFileError(f"item {fqn!r} is not a torch.save archive", path=self.name) from None
        try:
            raw = TorchZipReader()._read(archive, self.options)
        finally:
            archive.close()
        self._merge(raw.globals)
        if any(use.verdict == "refused" for use in raw.globals.values()):
            raise _ItemRefused(fqn)
        return raw.root

    def _is_zip(self, item: _Item) -> bool:
        with open(item.path, "rb") as handle:
            handle.seek(item.offset)
            return handle.read(4) == ZIP_MAGIC

    def _bytes(self, fqn: str) -> Any:
        item = self._lookup(fqn, None)
        if not self._is_zip(item):
            return ByteSource(item.path, item.offset, item.length).read()
        return self._open_zip(fqn, item)

    def _tensor(self, fqn: str, attrs: dict) -> Any:
        dtype = _properties_dtype(attrs.get("properties"))
        if dtype is None:
            raise CorruptFileError(f"tensor {fqn!r} has no readable dtype in .metadata", path=self.name)
        size = attrs.get("size")
        if not isinstance(size, (tuple, list)) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size):
            raise CorruptFileError(f"tensor {fqn!r} has size {size!r}", path=self.name)
        size = tuple(size)
        chunks = []
        for chunk in attrs.get("chunks") or ():
            if not isinstance(chunk, StubObject):
                raise CorruptFileError(f"tensor {fqn!r} has a chunk record of type {type(chunk).__name__}", path=self.name)
            offsets = _ints(chunk.attributes.get("offsets") or (), f"a chunk offset of {fqn!r}", self.name)
            sizes = _ints(chunk.attributes.get("sizes") or (), f"a chunk size of {fqn!r}", self.name)
            if len(offsets) != len(size) or len(sizes) != len(size) or any(
                    o < 0 or s < 0 or o + s > d for o, s, d in zip(offsets, sizes, size)):
                raise CorruptFileError(f"tensor {fqn!r} has a chunk outside its size {list(size)}", path=self.name)
            chunks.append((offsets, sizes, self._chunk(fqn, offsets, sizes, dtype)))
        total = 1
        for dim in size:
            total *= dim
        covered = 0
        for _, sizes, _ in chunks:
            count = 1
            for dim in sizes:
                count *= dim
            covered += count
        if covered != total:
            raise CorruptFileError(f"chunks of tensor {fqn!r} cover {covered} of its {total} elements", path=self.name)
        if len(chunks) == 1 and chunks[0][1] == size:
            return chunks[0][2]
        if not chunks:
            storage = StorageRef(fqn, dtype, 0, "cpu", ByteSource(self.name, 0, 0, buffer=b""))
            return TensorRef(storage, dtype, size, contiguous_strides(size), 0)
        return _assembled(fqn, dtype, size, chunks)

    def _chunk(self, fqn: str, offsets: tuple, sizes: tuple, dtype: _dtypes.DType) -> TensorRef:
        item = self._lookup(fqn, offsets)
        if self._is_zip(item):
            value = self._open_zip(fqn, item)
        else:
            numel = 1
            for dim in sizes:
                numel *= dim
            if numel * dtype.itemsize != item.length:
                raise CorruptFileError(f"raw chunk of {fqn!r} holds {item.length} bytes, expected {numel * dtype.itemsize}", path=self.name)
            storage = StorageRef(fqn, dtype, numel, "cpu", ByteSource(item.path, item.offset, item.length))
            value = TensorRef(storage, dtype, sizes, contiguous_strides(sizes), 0)
        if not isinstance(value, TensorRef) or value.shape != tuple(sizes) or value.dtype != dtype:
            raise CorruptFileError(f"chunk of {fqn!r} does not hold a {dtype.name} tensor of shape {list(sizes)}", path=self.name)
        return value


def _properties_dtype(properties: Any) -> _dtypes.DType | None:
    if not isinstance(properties, StubObject):
        return None
    state = properties.state
    marker = state[0] if isinstance(state, tuple) and state else properties.attributes.get("dtype")
    return _dtypes.from_torch_name(marker.name) if isinstance(marker, TorchMarker) else None


def _assembled(fqn: str, dtype: _dtypes.DType, size: tuple[int, ...], chunks: list[tuple[tuple, tuple, TensorRef]]) -> TensorRef:
    """One tensor from the chunks it was saved in, assembled in memory as raw elements (no torch needed)."""
    import numpy

    element = numpy.dtype(f"V{dtype.itemsize}")
    out = numpy.zeros(size, dtype=element)
    for offsets, sizes, ref in chunks:
        base = numpy.frombuffer(ref.storage.source.read(0, ref.storage.nbytes), dtype=element)
        view = numpy.lib.stride_tricks.as_strided(base[ref.offset:], shape=sizes,
                                                  strides=tuple(st * dtype.itemsize for st in ref.stride), writeable=False)
        out[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))] = view
    data = out.tobytes()
    numel = len(data) // dtype.itemsize
    storage = StorageRef(fqn, dtype, numel, "cpu", ByteSource(fqn, 0, len(data), buffer=data), chunks[0][2].byteorder)
    return TensorRef(storage, dtype, size, contiguous_strides(size), 0)


def unflatten(flat: "OrderedDict[str, Any]", paths: dict[str, tuple]) -> dict[str, Any]:
    """Nested dicts and lists from fqn → value and fqn → path, as DCP's ``unflatten_state_dict`` builds them.

    Raises:
        CorruptFileError: two paths disagree about a container (a value where a dict is expected).
    """
    root: dict = {}
    for fqn, value in flat.items():
        path = paths.get(fqn, (fqn,))
        node: Any = root
        for part, following in zip(path[:-1], path[1:]):
            if not isinstance(node, dict):
                raise CorruptFileError(f"DCP paths disagree at {fqn!r}")
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CorruptFileError(f"DCP paths disagree at {fqn!r}")
            node = child
        if not isinstance(node, dict):
            raise CorruptFileError(f"DCP paths disagree at {fqn!r}")
        node[path[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _lists(value) for key, value in node.items()}
    keys = list(converted)
    if keys and all(isinstance(k, int) for k in keys) and sorted(keys) == list(range(len(keys))):
        return [converted[i] for i in range(len(keys))]
    return converted


class DcpReader(Reader):
    """torch.distributed.checkpoint folders, without torch's unsafe ``pickle.load`` of ``.metadata``."""

    name = "dcp"
    description = "torch.distributed.checkpoint folder (.metadata + .distcp), opened by the safe interpreter"

    def sniff(self, head: bytes, source: Source) -> None:
        if dcp_folder(source) is None:
            raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        folder = dcp_folder(source)
        if folder is None:
            raise CorruptFileError("not a torch.distributed.checkpoint folder (no .metadata)", path=source.name)
        parsed = DcpFolder(folder, options)
        if parsed.refused:
            return RawRead({}, "dcp", parsed.globals, {"dcp_folder": folder})
        try:
            flat = parsed.flat()
        except _ItemRefused:
            return RawRead({}, "dcp", parsed.globals, {"dcp_folder": folder})
        root = unflatten(flat, parsed.planner_paths())
        files = sorted({os.path.basename(item.path) for item in parsed.storage.values()})
        version = parsed.metadata.attributes.get("version")
        return RawRead(root, "dcp", parsed.globals, {"dcp_folder": folder, "dcp_files": files, "dcp_version": version})


