"""Reader for torch's pre-1.6 format: stacked pickles followed by raw storages.

Layout: magic number, protocol version, sys_info, the object (persistent ids for storages and,
for whole models, module source records), the list of storage keys; then for each key an 8-byte
element count and the raw bytes. Each pickle goes through the safe interpreter; storages are
located, never read. The file is memory-mapped, so an 8 GiB file costs no memory to open.
"""

from __future__ import annotations

import struct
import tarfile
from typing import Any, Callable

from ..checkpoint import ByteSource, StorageRef
from ..errors import CorruptFileError, LimitExceededError, NotMyFormat, UnsupportedFormatError
from ..source import Source
from ..unpickler import Interpreter, Policy
from . import _storages
from .base import RawRead, ReadOptions, Reader

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
MAGIC_BYTES = MAGIC_NUMBER.to_bytes(10, "little")
PROTOCOL_VERSION = 1001

RangeMaker = Callable[[int, int], ByteSource]


def looks_legacy(head: bytes) -> bool:
    """True when ``head`` starts with a pickled torch magic number."""
    return head[:1] == b"\x80" and MAGIC_BYTES in head[:32]


class LegacyParse:
    """One pass over a legacy-format buffer; :meth:`run` returns the top object and verdicts."""

    def __init__(self, data: memoryview, name: str, make_range: RangeMaker, options: ReadOptions, depth: int) -> None:
        self.data = data
        self.name = name
        self.make_range = make_range
        self.options = options
        self.depth = depth
        self.storages: dict[str, StorageRef] = {}
        self.views: list[tuple[StorageRef, StorageRef, int]] = []
        self.module_sources: list[str] = []
        self.uses: dict = {}
        self.byteorder = "little"

    def _pickle(self, pos: int, persistent_load: Any = None) -> tuple[Any, int]:
        interpreter = Interpreter(
            self.data,
            path=self.name,
            start=pos,
            persistent_load=persistent_load,
            load_nested=nested_loader(self.name, self.options, self.depth + 1),
            policy=Policy(self.options.allow_calls, self.options.collect_only),
            limits=self.options.limits,
        )
        result = interpreter.run()
        for name, use in result.globals.items():
            known = self.uses.get(name)
            if known is None:
                self.uses[name] = use
            else:
                known.escalate(use.verdict, use.reason)
        return result.value, interpreter.pos

    def _persistent_load(self, pid: Any) -> Any:
        pid = _storages.check_pid(pid, self.name, 2)
        if pid[0] == "module":
            if len(pid) > 2 and isinstance(pid[2], str):
                self.module_sources.append(pid[2])
            return pid[1]
        if pid[0] != "storage" or len(pid) < 6:
            raise CorruptFileError(f"unknown persistent id {pid!r:.80}", path=self.name)
        _, type_ref, root_key, location, numel, view_metadata = pid[:6]
        root_key = str(root_key)
        dtype = _storages.storage_type(type_ref, self.name)
        if root_key not in self.storages:
            placeholder = ByteSource(self.name, 0, 0)
            if not isinstance(numel, int) or numel < 0:
                raise CorruptFileError(f"storage {root_key} declares {numel!r} elements", path=self.name)
            if numel * dtype.itemsize > len(self.data):
                raise CorruptFileError(f"storage {root_key} declares {numel * dtype.itemsize} bytes, more than the file holds", path=self.name)
            self.storages[root_key] = StorageRef(root_key, dtype, numel, _storages.location_label(location), placeholder)
        root = self.storages[root_key]
        if view_metadata is None:
            return root
        view_key, offset, view_size = view_metadata
        view = StorageRef(str(view_key), dtype, int(view_size), root.location, ByteSource(self.name, 0, 0))
        if offset < 0 or offset + view_size > root.numel:
            raise CorruptFileError(f"storage view {view_key} exceeds its root storage", path=self.name)
        self.views.append((view, root, int(offset)))
        return view

    def run(self) -> tuple[Any, dict]:
        magic, pos = self._pickle(0)
        if magic != MAGIC_NUMBER:
            raise NotMyFormat()
        version, pos = self._pickle(pos)
        if version != PROTOCOL_VERSION:
            raise CorruptFileError(f"legacy protocol version {version!r}, expected {PROTOCOL_VERSION}", path=self.name)
        sys_info, pos = self._pickle(pos)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            self.byteorder = "big"
        root, pos = self._pickle(pos, self._persistent_load)
        keys, pos = self._pickle(pos)
        if not isinstance(keys, list):
            raise CorruptFileError("legacy storage key list is missing", path=self.name)
        self._locate(keys, pos)
        meta = {"legacy_protocol": version, "sys_info": sys_info if isinstance(sys_info, dict) else None,
                "module_sources": self.module_sources, "storages": len(self.storages)}
        return root, meta

    def _locate(self, keys: list, pos: int) -> None:
        unpack = "<q" if self.byteorder == "little" else ">q"
        for key in keys:
            storage = self.storages.get(str(key))
            if storage is None:
                raise CorruptFileError(f"storage key {key!r} was never referenced", path=self.name)
            if pos + 8 > len(self.data):
                raise CorruptFileError(f"file ends before storage {key} (truncated)", path=self.name)
            (count,) = struct.unpack(unpack, self.data[pos: pos + 8])
            if count != storage.numel:
                raise CorruptFileError(f"storage {key} holds {count} elements but the pickle declared {storage.numel}", path=self.name)
            length = count * storage.dtype.itemsize
            if pos + 8 + length > len(self.data):
                raise CorruptFileError(f"storage {key} runs past the end of the file (truncated)", path=self.name)
            storage.source = self.make_range(pos + 8, length)
            storage.byteorder = self.byteorder
            pos += 8 + length
        for view, root, offset in self.views:
            size = root.dtype.itemsize
            base = root.source
            view.source = ByteSource(base.name, base.offset + offset * size, view.numel * size, base.opener, base.buffer)
            view.byteorder = root.byteorder
        missing = [k for k, s in self.storages.items() if s.source.length == 0 and s.numel > 0]
        if missing:
            raise CorruptFileError(f"storage {missing[0]} has no data in the file", path=self.name)


def nested_loader(name: str, options: ReadOptions, depth: int) -> Callable[[bytes], Any]:
    """A loader for ``torch.storage._load_from_bytes`` payloads, through the same interpreter and rules."""

    def load(payload: bytes) -> Any:
        if depth > options.limits.max_nested_pickles:
            raise LimitExceededError(f"pickles nested more than {options.limits.max_nested_pickles} deep", path=name)
        if not looks_legacy(payload[:32]):
            raise CorruptFileError("nested _load_from_bytes payload is not a torch legacy stream", path=name)
        view = memoryview(payload)

        def make_range(offset: int, length: int) -> ByteSource:
            return ByteSource(name, offset, length, buffer=payload)

        parse = LegacyParse(view, name, make_range, options, depth)
        root, _ = parse.run()
        return root

    return load


class TorchLegacyReader(Reader):
    """``torch.save`` files from before torch 1.6 (and ``_use_new_zipfile_serialization=False``)."""

    name = "torch-legacy"
    description = "torch.save legacy stacked-pickle format (torch < 1.6)"

    def sniff(self, head: bytes, source: Source) -> None:
        if not looks_legacy(head):
            raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        data = source.map()
        parse = LegacyParse(data, source.name, source.byte_source, options, depth=0)
        root, meta = parse.run()
        return RawRead(root, "torch-legacy", parse.uses, meta)


class TorchTarReader(Reader):
    """The oldest ``torch.save`` layout: a tar archive with ``storages``, ``tensors`` and ``pickle`` members."""

    name = "torch-tar"
    description = "torch.save tar format (torch <= 0.1.9): recognised and refused with a clear message"

    def sniff(self, head: bytes, source: Source) -> None:
        if len(head) < 262 or head[257:262] != b"ustar":
            raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        with source.open() as handle:
            try:
                with tarfile.open(fileobj=handle, mode="r:") as archive:
                    names = {m.name for m in archive.getmembers()}
            except tarfile.TarError as error:
                raise CorruptFileError(f"unreadable tar archive: {error}", path=source.name) from None
        if {"storages", "tensors", "pickle"} <= names:
            raise UnsupportedFormatError(
                "this is the torch <= 0.1.9 tar layout (storages/tensors/pickle members), which ckpt-migrate does not "
                "open; load it once with torch 0.3 and re-save it, then convert the result",
                path=source.name,
            )
        raise UnsupportedFormatError(f"a tar archive of {len(names)} members, not a torch checkpoint", path=source.name)
