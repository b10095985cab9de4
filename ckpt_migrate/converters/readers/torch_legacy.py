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

from ckpt_migrate.model.checkpoint import ByteSource, StorageRef
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, LimitExceededError, NotMyFormat, UnsupportedFormatError
from ckpt_migrate.io.source import Source
from ckpt_migrate.unpickler.vm import Interpreter
from ckpt_migrate.unpickler.context import NestedResult
from ckpt_migrate.unpickler.verdicts import merge_uses, refusal_error, settle
import ckpt_migrate.converters.readers.storages as _storages
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
MAGIC_BYTES = MAGIC_NUMBER.to_bytes(10, "little")
PROTOCOL_VERSION = 1001

RangeMaker = Callable[[int, int], ByteSource]


def looks_legacy(head: bytes) -> bool:
    """True when ``head`` starts with a pickled torch magic number."""
    return head[:1] == b"\x80" and MAGIC_BYTES in head[:32]


_PICKLE_NAMES = ("magic number", "protocol version", "sys_info", "object", "storage keys")


class LegacyParse:
    """One pass over a legacy-format buffer; :meth:`run` returns the top object and verdicts.

    Every pickle is interpreted in collect mode, so all five are walked and their verdicts
    merged before the file is refused; a refusal wins over a malformed file.
    """

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
        self.pickles = 0

    def _pickle(self, pos: int, persistent_load: Any = None) -> tuple[Any, int]:
        label = _PICKLE_NAMES[min(self.pickles, len(_PICKLE_NAMES) - 1)]
        where = f"legacy {label} pickle" if self.depth == 0 else f"legacy {label} pickle of a nested payload"
        self.pickles += 1
        interpreter = Interpreter(
            self.data,
            path=self.name,
            start=pos,
            persistent_load=persistent_load,
            load_nested=nested_loader(self.name, self.options, self.depth + 1),
            policy=self.options.policy(collect_only=True),
            limits=self.options.limits,
            budget=self.options.budget,
            where=where,
        )
        try:
            result = interpreter.run()
        except CkptMigrateError as error:
            merge_uses(self.uses, getattr(error, "globals", {}).values())
            raise
        merge_uses(self.uses, result.globals.values())
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
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise CorruptFileError(f"storage view metadata {view_metadata!r:.80} is not (key, offset, size)", path=self.name)
        view_key, offset, view_size = view_metadata
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, view_size)):
            raise CorruptFileError(f"storage view {view_key} has a non-integer offset or size", path=self.name)
        if offset < 0 or view_size < 0 or offset + view_size > root.numel:
            raise CorruptFileError(f"storage view {view_key} exceeds its root storage", path=self.name)
        view = StorageRef(str(view_key), dtype, view_size, root.location, ByteSource(self.name, 0, 0))
        self.views.append((view, root, int(offset)))
        return view

    def run(self) -> tuple[Any, dict]:
        """Interpret the five pickles and locate the storages.

        Raises:
            UnsafeFileError: a pickle names a refused global (unless the options only collect verdicts).
            CorruptFileError: the layout or a pickle is malformed; carries the verdicts as ``globals``.
        """
        try:
            root, meta = self._run()
        except CkptMigrateError as error:
            raise settle(error, self.uses, self.name) from None
        except Exception as error:  # noqa: BLE001 - hostile values reach our own checks; any failure is a malformed file
            corrupt = CorruptFileError(f"malformed legacy layout: {type(error).__name__}: {error}"[:500], path=self.name)
            raise settle(corrupt, self.uses, self.name) from None
        if any(u.verdict == "refused" for u in self.uses.values()) and not self.options.collect_only:
            raise refusal_error(self.uses, self.name)
        return root, meta

    def _run(self) -> tuple[Any, dict]:
        magic, pos = self._pickle(0)
        if type(magic) is not int or magic != MAGIC_NUMBER:
            raise CorruptFileError("the file starts like a torch legacy file but its first pickle is not torch's magic number", path=self.name)
        version, pos = self._pickle(pos)
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise CorruptFileError(f"legacy protocol version {version!r:.80}, expected {PROTOCOL_VERSION}", path=self.name)
        sys_info, pos = self._pickle(pos)
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
        for located in [*self.storages.values(), *(view for view, _, _ in self.views)]:
            for retyped in located.__dict__.get("_retyped", {}).values():
                retyped.source, retyped.byteorder = located.source, located.byteorder
        missing = [k for k, s in self.storages.items() if s.source.length == 0 and s.numel > 0]
        if missing:
            raise CorruptFileError(f"storage {missing[0]} has no data in the file", path=self.name)


def nested_loader(name: str, options: ReadOptions, depth: int) -> Callable[[bytes], Any]:
    """A loader for ``torch.storage._load_from_bytes`` payloads, through the same interpreter and rules.

    torch opens such a payload with ``torch.load``, so it may be a legacy stream, a zip archive,
    or (in a hostile file) a plain pickle; each goes through our interpreter and its verdicts
    join the enclosing pickle's. The loader returns a :class:`NestedResult` and never raises for
    a refusal: the enclosing pickle decides.
    """

    def load(payload: bytes) -> NestedResult:
        if depth > options.limits.max_nested_pickles:
            raise LimitExceededError(f"pickles nested more than {options.limits.max_nested_pickles} deep", path=name)
        collect = options.collecting()
        if payload[:4] == b"PK\x03\x04":
            from ckpt_migrate.converters.readers.torch_zip import read_nested_zip

            raw = read_nested_zip(payload, name, collect, depth)
            return NestedResult(raw.root, raw.globals)
        if not looks_legacy(payload[:32]):
            interpreter = Interpreter(payload, path=name, policy=options.policy(collect_only=True), limits=options.limits, budget=options.budget,
                                      load_nested=nested_loader(name, options, depth + 1), where="nested payload")
            result = interpreter.run()
            if result.refused:
                return NestedResult(result.value, result.globals)
            error = CorruptFileError("nested _load_from_bytes payload is not a torch legacy stream or zip archive", path=name)
            raise settle(error, result.globals, name)

        def make_range(offset: int, length: int) -> ByteSource:
            return ByteSource(name, offset, length, buffer=payload)

        parse = LegacyParse(memoryview(payload), name, make_range, collect, depth)
        root, _ = parse.run()
        return NestedResult(root, parse.uses)

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
            except (tarfile.TarError, OSError, ValueError, EOFError) as error:
                raise CorruptFileError(f"unreadable tar archive: {error}", path=source.name) from None
        if {"storages", "tensors", "pickle"} <= names:
            raise UnsupportedFormatError(
                "this is the torch <= 0.1.9 tar layout (storages/tensors/pickle members), which ckpt-migrate does not "
                "open; load it once with torch 0.3 and re-save it, then convert the result",
                path=source.name,
            )
        raise UnsupportedFormatError(f"a tar archive of {len(names)} members, not a torch checkpoint", path=source.name)
