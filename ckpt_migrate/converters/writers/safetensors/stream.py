"""The streaming safetensors path: copy byte ranges of a :mod:`.plan`, cast and gather them, verify by comparison.

Torch-free. It applies when every tensor of a checkpoint is a :class:`TensorRef` whose bytes lie in a
local file or an in-memory buffer (or several such ranges in order: a
parameter stitched from partitions), or a dtype cast of one. A contiguous little-endian tensor is one
byte range: copied through a few cache-sized buffers, or by the kernel (``os.copy_file_range``,
else ``os.sendfile``) when source and destination share their offset within a page and nothing
needs the bytes in user space. A strided view is gathered, a big-endian storage byte-swapped and a
cast computed chunk by chunk with numpy. Memory stays constant whatever the file size.
One pass: every source byte is read once, into a buffer that is written, read back and compared
(verification, on a second thread, overlapping the copy) and fed to the source's sha256 (a third
thread, :class:`~ckpt_migrate.io.hashing.HashThread`) in file order; the header is parsed again with
the strict safetensors reader at the end. :func:`verify_stream` is the same check as a separate full
pass. Without verification or hashing, aligned ranges are copied by the kernel.

Anything it cannot reproduce bit for bit (derived tensors other than casts, remote sources, types
safetensors lacks, a cast meeting NaNs whose bit patterns torch chooses per kernel) raises
:class:`CannotStream`, and the writer falls back to the general torch path.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import queue
import struct
import threading
from typing import Any, Callable, Iterator, Mapping

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.model.checkpoint import ByteSource, PiecedSource, TensorRef
from ckpt_migrate.errors import CorruptFileError, VerificationError
from ckpt_migrate.io.durability import start_writeback
from ckpt_migrate.io.hashing import HashThread
from ckpt_migrate.converters.writers.safetensors.plan import (
    CannotStream, Entry, StreamPlan, needs_swap, planned_header,
)

CHUNK_BYTES = 8 << 20
WINDOW_BYTES = 32 << 20
COPY_BUFFER_BYTES = 1 << 20
PIPELINE_BUFFERS = 8
THREAD_MIN_BYTES = 8 << 20
IMAGE_MAX_BYTES = 4 << 20
WRITEBACK_BYTES = 64 << 20
"""After every this many bytes written, the kernel is asked to start writing the output to disk (see
:func:`~ckpt_migrate.io.durability.start_writeback`): the disk writes then overlap the copy and the hash."""
FEED_WINDOWS = 2
KERNEL_COPY_MAX = 1 << 30
PAGE = mmap.PAGESIZE

_COPY_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM, errno.EBADF, errno.ETXTBSY}
_kernel_copy_ok: dict[str, bool] = {"copy_file_range": hasattr(os, "copy_file_range"), "sendfile": hasattr(os, "sendfile")}


class _Files:
    """Read-only descriptors of the source files, opened once each, and which of them is the file being hashed."""

    def __init__(self, hasher: HashThread | None = None) -> None:
        self.fds: dict[str, int] = {}
        self.hasher = hasher
        self.sink: Callable[[Any, int], None] | None = None
        self._hashed: dict[str, bool] = {}

    def __enter__(self) -> "_Files":
        return self

    def __exit__(self, *exc: Any) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def fd(self, source: ByteSource) -> int:
        if source.name not in self.fds:
            self.fds[source.name] = os.open(source.name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self.fds[source.name]

    def hashed(self, source: ByteSource) -> bool:
        """True when ``source``'s bytes lie in the file being hashed (so they are fed to the hash as they pass)."""
        if self.hasher is None or source.buffer is not None or isinstance(source, PiecedSource):
            return False
        if source.name not in self._hashed:
            self._hashed[source.name] = self.hasher.holds(self.fd(source))
        return self._hashed[source.name]

    def tap(self, source: ByteSource, offset: int, data: Any) -> None:
        """Feed bytes just read from ``source`` at file ``offset`` to the hash (through ``sink``), when that file is the one hashed."""
        if self.sink is not None and self.hashed(source):
            self.sink(data, offset)


def _pread_into(fd: int, view: memoryview, offset: int, name: str, tensor: str | None = None) -> None:
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            needed = f"{len(view) - done} bytes before the end of tensor {tensor!r}" if tensor else f"before the {len(view)} bytes a tensor needs"
            raise CorruptFileError(f"file ends at byte {offset + done}, {needed} (truncated)", path=name)
        done += count


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _kernel_copy(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int) -> int:
    """Bytes copied in the kernel (``copy_file_range``, else ``sendfile``); -1 when neither works here."""
    if _kernel_copy_ok["copy_file_range"]:
        try:
            return os.copy_file_range(src_fd, dst_fd, length, src_offset, dst_offset)
        except OSError as error:
            if error.errno not in _COPY_ERRNOS:
                raise
            _kernel_copy_ok["copy_file_range"] = False
    if _kernel_copy_ok["sendfile"]:
        try:
            os.lseek(dst_fd, dst_offset, os.SEEK_SET)
            return os.sendfile(dst_fd, src_fd, src_offset, length)
        except OSError as error:
            if error.errno not in _COPY_ERRNOS:
                raise
            _kernel_copy_ok["sendfile"] = False
    return -1


def _uint(width: int) -> Any:
    import numpy

    return numpy.dtype(f"<u{width}")


def _rows_per_piece(shape: tuple[int, ...], stride: tuple[int, ...], out_limit: int, window_limit: float) -> tuple[int, int, int | None]:
    """How :func:`_blocks` cuts a view: ``(numel, span, rows)``.

    ``rows`` is ``None`` when the whole view is one piece, else how many leading rows fit a piece
    (0 when one row must itself be cut). ``span`` is the storage elements the view reaches over.
    """
    numel = 1
    for size in shape:
        numel *= size
    span = 1 + sum((size - 1) * step for size, step in zip(shape, stride)) if numel else 0
    if not shape or (numel <= out_limit and span <= window_limit):
        return numel, span, None
    row_numel = numel // shape[0]
    row_span = 1 + sum((size - 1) * s for size, s in zip(shape[1:], stride[1:]))
    rows = out_limit // row_numel if row_numel else shape[0]
    if stride[0]:
        rows = min(rows, int((window_limit - row_span) // stride[0]) + 1 if window_limit >= row_span else 0)
    return numel, span, rows


def _blocks(shape: tuple[int, ...], stride: tuple[int, ...], base: int, out_limit: int, window_limit: float) -> Iterator[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    """Row-major pieces of a strided view, in element units: ``(window_start, window_len, shape, stride)``.

    Each piece's output fits ``out_limit`` elements and the storage window it reads fits
    ``window_limit`` elements, except a single element (always one piece).
    """
    numel, span, rows = _rows_per_piece(shape, stride, out_limit, window_limit)
    if numel == 0:
        return
    if rows is None:
        yield base, span, shape, stride
        return
    row_span = 1 + sum((size - 1) * s for size, s in zip(shape[1:], stride[1:]))
    if rows >= 1:
        for first in range(0, shape[0], rows):
            count = min(rows, shape[0] - first)
            yield base + first * stride[0], (count - 1) * stride[0] + row_span, (count,) + shape[1:], stride
        return
    for index in range(shape[0]):
        yield from _blocks(shape[1:], stride[1:], base + index * stride[0], out_limit, window_limit)


def _read_cost(shape: tuple[int, ...], stride: tuple[int, ...], out_limit: int, window_limit: int) -> int:
    """Storage elements :func:`_blocks` would read for a view (an upper bound, computed without iterating)."""
    numel, span, rows = _rows_per_piece(shape, stride, out_limit, window_limit)
    if numel == 0 or rows is None:
        return span
    row_span = 1 + sum((size - 1) * s for size, s in zip(shape[1:], stride[1:]))
    if rows >= 1:
        return -(-shape[0] // rows) * ((rows - 1) * stride[0] + row_span)
    return shape[0] * _read_cost(shape[1:], stride[1:], out_limit, window_limit)


def _gathered(ref: TensorRef, files: _Files, feed: bool = False) -> Iterator[Any]:
    """The elements of ``ref`` in row-major order, as contiguous unsigned-integer numpy arrays of bounded size.

    A view whose rows cannot be read in bounded windows without rereading its storage many times
    is served from a read-only memory map of its whole span instead. With ``feed``, every window
    read from the hashed file is handed to its hash as it passes.

    Raises:
        CorruptFileError: the file ends before the tensor's bytes.
    """
    import numpy

    width = ref.dtype.itemsize
    dtype = _uint(width)
    source = ref.storage.source
    out_limit = max(1, CHUNK_BYTES // width)
    window_limit = max(1, WINDOW_BYTES // width)
    numel, span, _ = _rows_per_piece(ref.shape, ref.stride, out_limit, window_limit)
    mapped: Any = None
    if numel and _read_cost(ref.shape, ref.stride, out_limit, window_limit) > 2 * max(span, numel):
        window_limit = span
        if source.buffer is None:
            start = source.offset + ref.offset * width
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(files.fd(source), start - aligned + span * width, access=mmap.ACCESS_READ, offset=aligned)
            mapped_base = start - aligned - ref.offset * width

    def window(first: int, count: int) -> Any:
        if source.buffer is not None:
            return numpy.frombuffer(source.buffer, dtype, count, source.offset + first * width)
        if mapped is not None:
            return numpy.frombuffer(mapped, dtype, count, mapped_base + first * width)
        array = numpy.empty(count, dtype)
        _pread_into(files.fd(source), memoryview(array).cast("B"), source.offset + first * width, source.name)
        if feed:
            files.tap(source, source.offset + first * width, memoryview(array).cast("B"))
        return array

    for first, count, shape, stride in _blocks(ref.shape, ref.stride, ref.offset, out_limit, window_limit):
        data = window(first, count)
        view = numpy.lib.stride_tricks.as_strided(data, shape, tuple(s * width for s in stride), writeable=False)
        yield numpy.ascontiguousarray(view).reshape(-1)
        del data, view


def _swapped(block: Any, dtype: _dtypes.DType) -> Any:
    parts = 2 if dtype.kind == "complex" else 1
    return block.view(_uint(dtype.itemsize // parts)).byteswap().view(block.dtype)


def _to_float32(block: Any, dtype: _dtypes.DType) -> Any:
    import numpy

    if dtype.name == "bfloat16":
        return (block.astype(numpy.uint32) << 16).view(numpy.float32)
    native = {"float64": numpy.float64, "float32": numpy.float32, "float16": numpy.float16}[dtype.name]
    values = block.view(native)
    return values if native is numpy.float32 else values.astype(numpy.float32)


def _cast(block: Any, source: _dtypes.DType, target: _dtypes.DType, name: str) -> Any:
    """Cast raw element bits as torch's ``Tensor.to`` does on CPU (round to nearest even, through float32).

    Raises:
        CannotStream: the block holds NaNs, whose output bit patterns torch picks per kernel.
    """
    import numpy

    with numpy.errstate(all="ignore"):
        values = _to_float32(block, source)
        if numpy.isnan(values).any():
            raise CannotStream(f"tensor {name!r} holds NaNs, whose bits after a cast only torch decides")
        if target.name == "float32":
            return values.view(numpy.uint32)
        if target.name == "float16":
            return values.astype(numpy.float16).view(numpy.uint16)
        bits = values.view(numpy.uint32).astype(numpy.uint64)
        return ((bits + ((bits >> 16) & 1) + 0x7FFF) >> 16).astype(numpy.uint16)


def entry_chunks(entry: Entry, files: _Files, feed: bool = False) -> Iterator[Any]:
    """The output bytes of a gathered, byte-swapped or cast tensor, as bounded uint8 numpy arrays.

    With ``feed``, the source bytes read are fed to the hash of ``files`` as they pass.

    Raises:
        CannotStream: a cast meets NaNs.
        CorruptFileError: the source ends early.
    """
    ref = entry.ref
    for block in _gathered(ref, files, feed):
        if needs_swap(ref):
            block = _swapped(block, ref.dtype)
        if entry.dtype != ref.dtype:
            block = _cast(block, ref.dtype, entry.dtype, entry.name)
        yield block.view("u1")


def _source_start(entry: Entry) -> int:
    return entry.ref.storage.source.offset + entry.ref.offset * entry.ref.dtype.itemsize


class _Output:
    """The file being written, through a few cache-sized buffers that rotate through a pipeline.

    The writing thread reads a piece of the source into a free buffer and writes it. When
    verifying, a second thread reads the written piece back and compares it with that buffer;
    when hashing, the buffer then goes to the hash thread (:class:`HashThread`) if its bytes come
    from the hashed file; only then is it free again. Every stage runs beside the copy of the
    next pieces, and every source byte is read once, into user space, for all three uses. An
    output under :data:`THREAD_MIN_BYTES` is checked on the writing thread instead, and buffers
    are allocated as needed and no larger than the output, so small files pay for no threads.
    """

    def __init__(self, fd: int, path: str, verify: bool, label: str, hasher: HashThread | None = None,
                 size_hint: int = COPY_BUFFER_BYTES) -> None:
        self.fd, self.path, self.label, self.hasher, self.verify = fd, path, label, hasher, verify
        self.free: "queue.SimpleQueue[bytearray]" = queue.SimpleQueue()
        self.buffer_bytes = min(COPY_BUFFER_BYTES, max(PAGE, -(-size_hint // PAGE) * PAGE))
        self.limit = PIPELINE_BUFFERS if verify or hasher is not None else 1
        self.made = 0
        self.unflushed = 0
        self.windows = threading.Semaphore(FEED_WINDOWS)
        self.failure: BaseException | None = None
        self.check: bytearray | None = None
        self.pending: "queue.SimpleQueue[tuple[Any, int, int | None, str, int | None, Any] | None] | None" = None
        self.checker: threading.Thread | None = None
        if verify and size_hint >= THREAD_MIN_BYTES:
            self.pending = queue.SimpleQueue()
            self.checker = threading.Thread(target=self._check_pieces, args=(self.pending,), name="ckpt-migrate-verify", daemon=True)
            self.checker.start()

    def _check_pieces(self, pending: "queue.SimpleQueue[tuple[Any, int, int | None, str, int | None, Any] | None]") -> None:
        check = bytearray(self.buffer_bytes)
        while (item := pending.get()) is not None:
            self._process(item, check)

    def _process(self, item: "tuple[Any, int, int | None, str, int | None, Any]", check: bytearray) -> None:
        """Compare one written piece with its buffer (when it was written), then pass the buffer on to the hash."""
        buffer, count, position, name, hash_offset, release = item
        try:
            if self.failure is None and position is not None:
                _pread_into(self.fd, memoryview(check)[:count], position, self.path)
                if count < len(buffer):
                    memoryview(check)[count:] = memoryview(buffer)[count:]
                if check != buffer:
                    self.failure = VerificationError(f"tensor {name!r} read back from the output differs from the source", path=self.label)
        except BaseException as error:  # noqa: BLE001 - handed to the writing thread
            self.failure = error
        self._hash(buffer, count, hash_offset, release)

    def _hash(self, buffer: Any, count: int, hash_offset: int | None, release: Any) -> None:
        if hash_offset is not None and self.hasher is not None:
            self.hasher.submit(hash_offset, memoryview(buffer)[:count], release)
        elif release is not None:
            release()

    def _take(self) -> bytearray:
        try:
            buffer = self.free.get_nowait()
        except queue.Empty:
            if self.made < self.limit:
                self.made += 1
                buffer = bytearray(self.buffer_bytes)
            else:
                buffer = self.free.get()
        if self.failure is not None:
            self.free.put(buffer)
            raise self.failure
        return buffer

    def _dispatch(self, item: "tuple[Any, int, int | None, str, int | None, Any]") -> None:
        if self.pending is not None:
            self.pending.put(item)
        elif self.verify:
            if self.check is None:
                self.check = bytearray(self.buffer_bytes)
            self._process(item, self.check)
            if self.failure is not None:
                raise self.failure
        else:
            buffer, count, _, _, hash_offset, release = item
            self._hash(buffer, count, hash_offset, release)

    def _written(self, count: int) -> None:
        self.unflushed += count
        if self.unflushed >= WRITEBACK_BYTES:
            self.unflushed = 0
            start_writeback(self.fd)

    def _send(self, buffer: bytearray, count: int, position: int, name: str, hash_offset: int | None = None) -> None:
        _pwrite_all(self.fd, memoryview(buffer)[:count], position)
        self._written(count)
        self._dispatch((buffer, count, position, name, hash_offset, functools.partial(self.free.put, buffer)))

    def feed(self, data: Any, offset: int) -> None:
        """Hand source bytes read elsewhere (a cast's window) to the hash, in order with the pieces before them.

        At most :data:`FEED_WINDOWS` such windows wait at a time, so memory stays bounded.
        """
        self.windows.acquire()
        self._dispatch((data, len(data), None, "", offset, self.windows.release))

    def put(self, data: memoryview, position: int, name: str) -> None:
        """Write bytes held in memory at ``position`` (through the buffers when verifying).

        Raises:
            VerificationError: an earlier piece read back differently.
        """
        if not self.verify:
            _pwrite_all(self.fd, data, position)
            self._written(len(data))
            return
        for done in range(0, len(data), self.buffer_bytes):
            count = min(len(data) - done, self.buffer_bytes)
            buffer = self._take()
            memoryview(buffer)[:count] = data[done: done + count]
            self._send(buffer, count, position + done, name)

    def copy(self, src_fd: int, src_offset: int, position: int, length: int, source_name: str, name: str, hashed: bool = False) -> None:
        """Copy a source range to ``position``; with ``hashed``, the range is fed to the hash as it passes.

        Without verification or hashing, ranges at the same offset within a page are copied by the
        kernel; the rest (and everything when the bytes are needed in user space) goes through the
        cache-sized buffers, which measured faster than the kernel's copy of misaligned ranges and
        lets each piece be read back and hashed while it is still in cache.

        Raises:
            CorruptFileError: the source ends early.
            VerificationError: an earlier piece read back differently.
        """
        user_space = self.verify or (hashed and self.hasher is not None)
        while length > 0:
            count = -1
            if not user_space and (src_offset - position) % PAGE == 0:
                count = _kernel_copy(src_fd, src_offset, self.fd, position, min(length, KERNEL_COPY_MAX))
                if count > 0:
                    self._written(count)
            if count < 0:
                buffer = self._take()
                count = os.preadv(src_fd, [memoryview(buffer)[: min(length, len(buffer))]], src_offset)
                if count:
                    self._send(buffer, count, position, name, src_offset if hashed else None)
                else:
                    self.free.put(buffer)
            if count == 0:
                raise CorruptFileError(f"file ends at byte {src_offset}, {length} bytes before the end of tensor {name!r} (truncated)", path=source_name)
            src_offset += count
            position += count
            length -= count

    def close(self) -> None:
        """Wait for the pieces still being checked; raise the first failure.

        Raises:
            VerificationError: a piece read back differently.
        """
        if self.checker is not None and self.pending is not None:
            self.pending.put(None)
            self.checker.join()
            self.checker = None
        if self.failure is not None:
            raise self.failure


class _Image:
    """A small output assembled in memory: one write, one read back, one comparison for the whole file.

    For a file of a few kilobytes, a write, a read back and a hash step per tensor cost more than
    the bytes they move. Here each source range is read once, straight into its place in the
    image, and fed to the hash from there; :meth:`close` writes the image with one call and, when
    verifying, reads the file back whole and compares it with the image (a difference names the
    tensor it falls in). Used for outputs up to :data:`IMAGE_MAX_BYTES`.
    """

    def __init__(self, fd: int, path: str, verify: bool, label: str, hasher: HashThread | None, plan: StreamPlan) -> None:
        self.fd, self.path, self.verify, self.label, self.hasher, self.plan = fd, path, verify, label, hasher, plan
        self.image = bytearray(plan.size)
        self.view = memoryview(self.image)
        self.view[: len(plan.header)] = plan.header
        self.closed = False

    def copy(self, src_fd: int, src_offset: int, position: int, length: int, source_name: str, name: str, hashed: bool = False) -> None:
        """Read a source range into its place; with ``hashed``, feed it to the hash from there.

        Raises:
            CorruptFileError: the source ends early.
        """
        target = self.view[position: position + length]
        _pread_into(src_fd, target, src_offset, source_name, tensor=name)
        if hashed and self.hasher is not None:
            self.hasher.submit(src_offset, target)

    def put(self, data: memoryview, position: int, name: str) -> None:
        """Place bytes held in memory."""
        self.view[position: position + len(data)] = data

    def feed(self, data: Any, offset: int) -> None:
        """Hand source bytes read elsewhere (a cast's window) to the hash."""
        if self.hasher is not None:
            self.hasher.submit(offset, data)

    def close(self) -> None:
        """Write the image; when verifying, read the file back and compare (once, however often called).

        Raises:
            VerificationError: the file reads back differently (the message names the tensor).
        """
        if self.closed:
            return
        self.closed = True
        _pwrite_all(self.fd, self.view, 0)
        if not self.verify:
            return
        found = bytearray(len(self.image))
        _pread_into(self.fd, memoryview(found), 0, self.path)
        if found != self.image:
            first = next(index for index in range(len(found)) if found[index] != self.image[index])
            raise VerificationError(f"{self._what(first)} read back from the output differs from the source", path=self.label)

    def discard(self) -> None:
        """Give up an image that will not be written (a failure before :meth:`close`)."""
        self.closed = True

    def _what(self, offset: int) -> str:
        for entry in self.plan.entries:
            if self.plan.data_start + entry.begin <= offset < self.plan.data_start + entry.end:
                return f"tensor {entry.name!r}"
        return "the header"


def _write_entry(entry: Entry, position: int, out: "_Output | _Image", files: _Files) -> None:
    source = entry.ref.storage.source
    length = entry.end - entry.begin
    if entry.raw and isinstance(source, PiecedSource):
        for piece, within, count in source.spans(entry.ref.offset * entry.ref.dtype.itemsize, length):
            if piece.buffer is None:
                out.copy(files.fd(piece), piece.offset + within, position, count, piece.name, entry.name)
            else:
                out.put(memoryview(piece.buffer)[piece.offset + within: piece.offset + within + count], position, entry.name)
            position += count
    elif entry.raw and source.buffer is None:
        out.copy(files.fd(source), _source_start(entry), position, length, source.name, entry.name, files.hashed(source))
    elif entry.raw:
        start = _source_start(entry)
        out.put(memoryview(source.buffer)[start: start + length], position, entry.name)
    else:
        for chunk in entry_chunks(entry, files, feed=True):
            out.put(memoryview(chunk), position, entry.name)
            position += chunk.nbytes


def _entry_matches(entry: Entry, position: int, out: int, files: _Files, buffers: tuple[bytearray, bytearray], path: str) -> bool:
    """True when the output bytes of ``entry`` equal its source range (or its recomputed gather, swap or cast)."""
    if not entry.raw:
        for chunk in entry_chunks(entry, files):
            got = bytearray(chunk.nbytes)
            _pread_into(out, memoryview(got), position, path)
            if got != chunk.tobytes():
                return False
            position += chunk.nbytes
        return True
    source = entry.ref.storage.source
    if isinstance(source, PiecedSource):
        for piece, within, count in source.spans(entry.ref.offset * entry.ref.dtype.itemsize, entry.end - entry.begin):
            if not _range_matches(piece, piece.offset + within, count, position, out, files, buffers, path):
                return False
            position += count
        return True
    return _range_matches(source, _source_start(entry), entry.end - entry.begin, position, out, files, buffers, path)


def _range_matches(source: ByteSource, start: int, remaining: int, position: int, out: int, files: _Files,
                   buffers: tuple[bytearray, bytearray], path: str) -> bool:
    """True when ``remaining`` output bytes at ``position`` equal the source's bytes from ``start``."""
    expected, found = buffers
    while remaining > 0:
        count = min(remaining, len(expected))
        if source.buffer is not None:
            want = memoryview(source.buffer)[start: start + count]
        else:
            want = memoryview(expected)[:count]
            _pread_into(files.fd(source), want, start, source.name)
        got = memoryview(found)[:count]
        _pread_into(out, got, position, path)
        if not ((expected == found) if count == len(expected) and source.buffer is None else want.tobytes() == got.tobytes()):
            return False
        start += count
        position += count
        remaining -= count
    return True


def source_order(plan: StreamPlan, files: _Files) -> list[Entry]:
    """The plan's entries in the order their bytes lie in the hashed file (others first), so the hash reads it once, front to back."""
    def key(entry: Entry) -> tuple[int, int]:
        source = entry.ref.storage.source
        return (1, _source_start(entry)) if files.hashed(source) else (0, 0)

    return sorted(plan.entries, key=key) if files.hasher is not None else list(plan.entries)


def write_stream(plan: StreamPlan, path: str, verify_source: str | None = None, hasher: HashThread | None = None,
                 on_piece: Callable[[int], None] | None = None) -> None:
    """Write the planned file at ``path`` (created or truncated), in one pass over the sources.

    Each piece is read once into a buffer and written at its planned place. With
    ``verify_source`` (the name errors give), it is read back right after it is written and
    compared with that buffer (on a second thread, overlapping the copy), and the size and
    header are checked at the end; :func:`verify_stream` is the same check as a separate full
    pass. With ``hasher``, the pieces that come from the file it hashes are fed to it as they
    pass, in the file's order, so no separate hashing pass reads the source again; the caller
    finishes the digest (:meth:`HashThread.result`). ``on_piece`` is told the output bytes of each
    tensor once they are written (progress).

    Raises:
        CannotStream: a cast meets NaNs (the caller removes ``path`` and falls back).
        CorruptFileError: a source file ends early.
        VerificationError: the output differs from the plan or the sources.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    out: _Output | _Image
    if plan.size <= IMAGE_MAX_BYTES:
        out = _Image(fd, path, verify_source is not None, verify_source or path, hasher, plan)
    else:
        out = _Output(fd, path, verify_source is not None, verify_source or path, hasher, plan.size)
    try:
        with _Files(hasher) as files:
            files.sink = out.feed
            if isinstance(out, _Output):
                _pwrite_all(fd, memoryview(plan.header), 0)
            for entry in source_order(plan, files):
                if entry.end > entry.begin:
                    _write_entry(entry, plan.data_start + entry.begin, out, files)
                    if on_piece is not None:
                        on_piece(entry.end - entry.begin)
        out.close()
    finally:
        try:
            out.close() if isinstance(out, _Output) else out.discard()
        except BaseException:  # noqa: BLE001 - the error already propagating wins
            pass
        os.close(fd)
    if verify_source is not None:
        _check_file(plan, path, verify_source)


def _check_file(plan: StreamPlan, path: str, source: str) -> None:
    if os.path.getsize(path) != plan.size:
        raise VerificationError(f"written file holds {os.path.getsize(path)} bytes, {plan.size} were planned", path=source)
    with open(path, "rb") as handle:
        head = handle.read(len(plan.header))
    if head != plan.header:
        raise VerificationError("written header differs from the planned one", path=source)
    check_header(path, planned_header(plan), plan.metadata, source)


def check_header(path: str, expected: Mapping[str, tuple[str, list[int], list[int]]], metadata: Mapping[str, str], source: str) -> None:
    """Parse ``path``'s header with the strict reader and compare it with what was meant to be written.

    ``expected`` maps each name to ``(dtype code, shape, data_offsets)``.

    Raises:
        VerificationError: the header does not parse, or names, types, shapes, offsets or metadata differ.
    """
    from ckpt_migrate.errors import CorruptFileError as Corrupt
    from ckpt_migrate.converters.readers.safetensors_file import MAX_HEADER_BYTES, parse_header

    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        raw = prefix + handle.read(min(length, MAX_HEADER_BYTES + 1))
    try:
        header, found_metadata, _ = parse_header(raw, size, path)
    except Corrupt as error:
        raise VerificationError(f"written file does not parse as safetensors: {error.message}", path=source) from None
    found = {name: (entry["dtype"], list(entry["shape"]), list(entry["data_offsets"])) for name, entry in header.items()}
    if found != {name: (code, list(shape), list(offsets)) for name, (code, shape, offsets) in expected.items()}:
        differ = sorted(set(found) ^ set(expected)) or sorted(n for n in expected if found.get(n) != expected[n])
        raise VerificationError(f"written header differs from the plan (first: {differ[0]!r})", path=source)
    if found_metadata != dict(metadata):
        raise VerificationError("written metadata differs from the plan", path=source)


def verify_stream(plan: StreamPlan, path: str, source: str) -> None:
    """Read ``path`` back and compare it with the plan and the sources, tensor by tensor, in bounded chunks.

    Checks the size, the header bytes and what the strict header parser reads from them, and
    every tensor's bytes against its source range (or its recomputed gather, swap or cast).

    Raises:
        VerificationError: any difference, naming the first tensor that differs.
    """
    _check_file(plan, path, source)
    buffers = (bytearray(COPY_BUFFER_BYTES), bytearray(COPY_BUFFER_BYTES))
    out = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        with _Files() as files:
            for entry in plan.entries:
                if not _entry_matches(entry, plan.data_start + entry.begin, out, files, buffers, path):
                    raise VerificationError(f"tensor {entry.name!r} read back from the output differs from the source", path=source)
    finally:
        os.close(out)
