"""Register and find readers and writers.

Built-ins are dotted paths imported on first use (so ``--help`` and ``formats`` never import
torch); third parties add theirs through the entry-point groups ``ckpt_migrate.readers`` and
``ckpt_migrate.writers``. A duplicate name is an error that says where the first one lives.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from ckpt_migrate.errors import CkptMigrateError, NotMyFormat, UnsupportedFormatError, UsageError

BUILTIN_READERS: dict[str, str] = {
    "safetensors": "ckpt_migrate.converters.readers.safetensors_file:SafetensorsReader",
    "torch-bin-sharded": "ckpt_migrate.converters.readers.bin_shards:BinShardsReader",
    "safetensors-sharded": "ckpt_migrate.converters.readers.safetensors_sharded:ShardedSafetensorsReader",
    "torchscript": "ckpt_migrate.converters.readers.torchscript:TorchScriptReader",
    "torch-zip": "ckpt_migrate.converters.readers.torch_zip:TorchZipReader",
    "torch-legacy": "ckpt_migrate.converters.readers.torch_legacy:TorchLegacyReader",
    "torch-tar": "ckpt_migrate.converters.readers.torch_legacy:TorchTarReader",
    "dcp": "ckpt_migrate.converters.readers.dcp:DcpReader",
    "deepspeed": "ckpt_migrate.converters.readers.deepspeed:DeepSpeedReader",
    "pickle": "ckpt_migrate.converters.readers.plain_pickle:PlainPickleReader",
}

BUILTIN_WRITERS: dict[str, str] = {
    "safetensors": "ckpt_migrate.converters.writers.safetensors.writer:SafetensorsWriter",
    "normalized": "ckpt_migrate.converters.writers.normalized:NormalizedWriter",
    "dcp": "ckpt_migrate.converters.writers.dcp:DcpWriter",
    "onnx": "ckpt_migrate.converters.writers.onnx_export:OnnxWriter",
}

READER_GROUP = "ckpt_migrate.readers"
WRITER_GROUP = "ckpt_migrate.writers"


class DuplicateNameError(CkptMigrateError, ValueError):
    """Two readers or two writers claim the same name."""


@dataclass
class Entry:
    """A registered reader or writer: its name, where it lives, and the loaded class once imported."""

    name: str
    target: str
    origin: str
    loaded: Any = None

    def load(self) -> Any:
        if self.loaded is None:
            module_name, _, attr = self.target.partition(":")
            self.loaded = getattr(importlib.import_module(module_name), attr)
        return self.loaded


class Registry:
    """Name → entry for one kind (readers or writers), built-ins first, then entry points."""

    def __init__(self, kind: str, builtins: dict[str, str], group: str) -> None:
        self.kind = kind
        self.builtins = builtins
        self.group = group
        self._entries: dict[str, Entry] | None = None

    def register(self, name: str, target: Any, origin: str = "runtime") -> None:
        """Add ``target`` (a class or a ``module:Class`` string) under ``name``.

        Raises:
            DuplicateNameError: ``name`` is taken; the message says where the first one lives.
        """
        entries = self.entries()
        if name in entries:
            raise DuplicateNameError(f"{self.kind} {name!r} from {origin} is already registered by {entries[name].origin} ({entries[name].target})")
        if isinstance(target, str):
            entries[name] = Entry(name, target, origin)
        else:
            entries[name] = Entry(name, f"{target.__module__}:{target.__qualname__}", origin, target)

    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            from importlib import metadata

            self._entries = {name: Entry(name, target, "ckpt-migrate (built-in)") for name, target in self.builtins.items()}
            for point in metadata.entry_points(group=self.group):
                origin = f"entry point {point.name} of {point.dist.name if point.dist else 'an installed package'}"
                if point.name in self._entries:
                    raise DuplicateNameError(f"{self.kind} {point.name!r} from {origin} is already registered by {self._entries[point.name].origin} ({self._entries[point.name].target})")
                self._entries[point.name] = Entry(point.name, point.value, origin)
        return self._entries

    def names(self) -> list[str]:
        return list(self.entries())

    def get(self, name: str) -> Any:
        """An instance of the reader or writer registered as ``name``.

        Raises:
            UnsupportedFormatError: no such name; the message lists the registered ones.
        """
        entry = self.entries().get(name)
        if entry is None:
            raise UnsupportedFormatError(f"no {self.kind} named {name!r}; registered: {', '.join(self.names())}")
        return entry.load()()


READERS = Registry("reader", BUILTIN_READERS, READER_GROUP)
WRITERS = Registry("writer", BUILTIN_WRITERS, WRITER_GROUP)


def list_readers() -> list[str]:
    return READERS.names()


def list_writers() -> list[str]:
    return WRITERS.names()


def get_reader(name: str) -> Any:
    return READERS.get(name)


def get_writer(name: str) -> Any:
    return WRITERS.get(name)


def writer_for_destination(dst: str) -> str:
    """The writer a destination's suffix implies (``.safetensors`` → safetensors, ``.pt`` → normalized…).

    Raises:
        UnsupportedFormatError: no writer claims the suffix; the message lists what does.
    """
    lowered = dst.lower().rstrip("/")
    for name in WRITERS.names():
        writer_cls = WRITERS.entries()[name].load()
        if any(lowered.endswith(suffix) for suffix in writer_cls.suffixes):
            return name
    raise UsageError(f"cannot tell the output format from {dst!r}; pass --to with one of: {', '.join(WRITERS.names())}")


def sniff(source: Any) -> Any:
    """The reader whose sniff accepts ``source``'s bytes, tried in registration order.

    Raises:
        UnsupportedFormatError: no reader claims the file; says what was tried and what it looks like.
    """
    import ckpt_migrate.converters.foreign as foreign

    if source.is_local and not os.path.lexists(source.local_path):
        raise CkptMigrateError("no such file or folder", path=source.name)
    head = source.head(4096)
    for name in READERS.names():
        reader = READERS.get(name)
        try:
            reader.sniff(head, source)
        except NotMyFormat:
            continue
        return reader
    if source.is_local and os.path.isdir(source.local_path):
        raise UnsupportedFormatError("is a folder, not a checkpoint: no reader recognises it (a DCP checkpoint holds .metadata, "
                                     "a sharded one an index file, a DeepSpeed one a 'latest' file); "
                                     "to convert every checkpoint in it, use `ckpt-migrate migrate`", path=source.name)
    raise UnsupportedFormatError(f"{foreign.describe(head)} (tried readers: {', '.join(READERS.names())})", path=source.name)
