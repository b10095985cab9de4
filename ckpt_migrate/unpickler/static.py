"""A static walk over pickle opcodes: which globals a pickle names and calls, without building anything.

The walk decodes opcodes and their arguments and keeps a symbolic stack and memo that track only
strings and globals, so ``STACK_GLOBAL`` names assembled from memo entries are still resolved. It
never builds values and never resolves a name. :func:`looks_like_pickle` uses it to recognise
pickles of every protocol (protocol 0 and 1 have no header); ``scan`` uses it to list globals the
interpreter did not reach (after a malformed byte, in archive entries no reader interprets).
"""

from __future__ import annotations

import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any

_OPS: dict[int, pickletools.OpcodeInfo] = {ord(op.code): op for op in pickletools.opcodes}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MAX_LINE = 65536


@dataclass
class StaticGlobal:
    """One global named by a pickle: where, how it was spelled, and whether the pickle calls it."""

    module: str
    name: str
    offset: int
    opcode: str
    called: bool = False

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class StaticWalk:
    """The result of walking one pickle: its globals, where it stopped, and why when it is malformed."""

    start: int
    end: int = 0
    opcodes: int = 0
    protocol: int = 0
    stopped: bool = False
    error: str = ""
    globals: list[StaticGlobal] = field(default_factory=list)
    unresolved: list[int] = field(default_factory=list)


class _Global:
    __slots__ = ("ref",)

    def __init__(self, ref: StaticGlobal) -> None:
        self.ref = ref


class _Malformed(Exception):
    pass


def _read_arg(data: memoryview, pos: int, op: pickletools.OpcodeInfo) -> tuple[Any, int]:
    """Decode the argument of ``op`` at ``pos``; return it and the position after it."""
    if op.arg is None:
        return None, pos
    size = op.arg.n
    if op.name in ("GLOBAL", "INST"):
        module, pos = _line(data, pos)
        name, pos = _line(data, pos)
        return (module.decode("utf-8", "replace"), name.decode("utf-8", "replace")), pos
    if size == pickletools.UP_TO_NEWLINE:
        line, pos = _line(data, pos)
        return line, pos
    if size == pickletools.TAKEN_FROM_ARGUMENT1:
        size, pos = _need(data, pos, 1)[0], pos + 1
    elif size == pickletools.TAKEN_FROM_ARGUMENT4:
        size, pos = struct.unpack("<i", _need(data, pos, 4))[0], pos + 4
    elif size == pickletools.TAKEN_FROM_ARGUMENT4U:
        size, pos = struct.unpack("<I", _need(data, pos, 4))[0], pos + 4
    elif size == pickletools.TAKEN_FROM_ARGUMENT8U:
        size, pos = struct.unpack("<Q", _need(data, pos, 8))[0], pos + 8
    if size < 0:
        raise _Malformed(f"{op.name} declares a negative length")
    return bytes(_need(data, pos, size)), pos + size


def _need(data: memoryview, pos: int, size: int) -> memoryview:
    if pos + size > len(data):
        raise _Malformed(f"argument of {size} bytes at byte {pos} runs past the end")
    return data[pos: pos + size]


def _line(data: memoryview, pos: int) -> tuple[bytes, int]:
    size = 64
    while True:
        end = bytes(data[pos: pos + size]).find(b"\n")
        if end >= 0:
            return bytes(data[pos: pos + end]), pos + end + 1
        if size >= _MAX_LINE or pos + size >= len(data):
            raise _Malformed(f"unterminated text argument at byte {pos}")
        size = min(size * 8, _MAX_LINE)


def _text(op_name: str, raw: Any) -> str | None:
    if not isinstance(raw, bytes):
        return None
    if op_name == "UNICODE":
        return raw.decode("raw-unicode-escape", "replace")
    if op_name == "STRING":
        if len(raw) >= 2 and raw[:1] == raw[-1:] and raw[:1] in (b"'", b'"'):
            return raw[1:-1].decode("latin1")
        return None
    if op_name in ("BINSTRING", "SHORT_BINSTRING"):
        return raw.decode("latin1")
    return raw.decode("utf-8", "replace")


def walk(data: bytes | memoryview, start: int = 0, *, max_opcodes: int = 50_000_000) -> StaticWalk:
    """Walk one pickle from ``start`` to its ``STOP`` (or to the first malformed byte).

    Never raises for malformed input: ``error`` says what was wrong and ``end`` where.
    """
    view = memoryview(data)
    result = StaticWalk(start)
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}
    pos = start
    try:
        while True:
            if pos >= len(view):
                raise _Malformed(f"pickle ends at byte {pos} without STOP")
            offset = pos
            op = _OPS.get(view[pos])
            if op is None:
                raise _Malformed(f"unknown opcode {bytes(view[pos:pos + 1])!r} at byte {pos}")
            arg, pos = _read_arg(view, pos + 1, op)
            result.opcodes += 1
            if result.opcodes > max_opcodes:
                raise _Malformed(f"more than {max_opcodes} opcodes")
            stack, done = _step(op, arg, offset, stack, marks, memo, result)
            if done:
                result.stopped = True
                result.end = pos
                return result
    except _Malformed as error:
        result.error = str(error)
        result.end = pos
        return result


def _step(op: pickletools.OpcodeInfo, arg: Any, offset: int, stack: list, marks: list, memo: dict, result: StaticWalk) -> tuple[list, bool]:
    name = op.name
    if name == "PROTO":
        result.protocol = arg if isinstance(arg, int) else _byte(arg)
        return stack, False
    if name == "STOP":
        if not stack:
            raise _Malformed(f"STOP with an empty stack at byte {offset}")
        return stack, True
    if name == "MARK":
        marks.append(stack)
        return [], False
    if name == "POP":
        if stack:
            stack.pop()
            return stack, False
        return _pop_mark(marks, offset), False
    if name in _PUT_OPS or name == "MEMOIZE":
        if not stack:
            raise _Malformed(f"{name} with an empty stack at byte {offset}")
        index = len(memo) if name == "MEMOIZE" else _index(name, arg)
        memo[index] = stack[-1]
        return stack, False
    if name in _GET_OPS:
        index = _index(name, arg)
        if index not in memo:
            raise _Malformed(f"{name} of memo entry {index} that was never stored (byte {offset})")
        stack.append(memo[index])
        return stack, False
    if name in ("GLOBAL", "INST"):
        ref = StaticGlobal(arg[0], arg[1], offset, name)
        result.globals.append(ref)
        if name == "INST":
            items = stack
            stack = _pop_mark(marks, offset)
            ref.called = bool(items)
            stack.append(None)
        else:
            stack.append(_Global(ref))
        return stack, False
    if name == "STACK_GLOBAL":
        if len(stack) < 2:
            raise _Malformed(f"STACK_GLOBAL needs two strings on the stack (byte {offset})")
        attr = stack.pop()
        module = stack.pop()
        if isinstance(module, str) and isinstance(attr, str):
            ref = StaticGlobal(module, attr, offset, name)
            result.globals.append(ref)
            stack.append(_Global(ref))
        else:
            result.unresolved.append(offset)
            stack.append(None)
        return stack, False
    if name in ("REDUCE", "OBJ"):
        callee = _callee(name, stack, marks, offset)
        if isinstance(callee, _Global) and (name == "REDUCE" or callee is not None):
            callee.ref.called = True
        return _apply(op, stack, marks, offset), False
    return _apply(op, stack, marks, offset, _text(name, arg) if name in _STRING_OPS else None), False


def _callee(name: str, stack: list, marks: list, offset: int) -> Any:
    if name == "REDUCE":
        return stack[-2] if len(stack) >= 2 else None
    if stack and len(stack) > 1:
        return stack[0]
    return None


def _apply(op: pickletools.OpcodeInfo, stack: list, marks: list, offset: int, pushed: Any = None) -> list:
    before = op.stack_before
    if pickletools.markobject in before:
        below = before[: before.index(pickletools.markobject)]
        stack = _pop_mark(marks, offset)
        count = len(below)
    else:
        count = len(before)
    if len(stack) < count:
        raise _Malformed(f"{op.name} needs {count} stack items, found {len(stack)} (byte {offset})")
    if count:
        del stack[-count:]
    for _ in op.stack_after:
        stack.append(pushed)
    return stack


def _pop_mark(marks: list, offset: int) -> list:
    if not marks:
        raise _Malformed(f"pops a mark that was never set (byte {offset})")
    return marks.pop()


def _index(name: str, arg: Any) -> int:
    if isinstance(arg, bytes) and name in ("GET", "PUT"):
        try:
            return int(arg)
        except ValueError:
            raise _Malformed(f"{name} with a non-numeric index") from None
    if isinstance(arg, bytes):
        return int.from_bytes(arg, "little")
    return int(arg)


def _byte(arg: Any) -> int:
    return arg[0] if isinstance(arg, (bytes, bytearray)) and arg else 0


def walk_all(data: bytes | memoryview, start: int = 0, *, max_pickles: int = 8, max_opcodes: int = 50_000_000) -> list[StaticWalk]:
    """Walk consecutive pickles (torch's legacy format stacks five) until the data ends or one is malformed."""
    walks: list[StaticWalk] = []
    pos = start
    view = memoryview(data)
    while pos < len(view) and len(walks) < max_pickles:
        if view[pos] not in _OPS:
            break
        found = walk(view, pos, max_opcodes=max_opcodes)
        walks.append(found)
        if not found.stopped:
            break
        pos = found.end
    return walks


def looks_like_pickle(head: bytes) -> bool:
    """True when ``head`` decodes as the start of a pickle of any protocol (0-5).

    A short head must reach ``STOP``; a head cut off mid-pickle must decode cleanly for at least
    three opcodes. Text, images and random bytes fail within a few bytes.
    """
    if not head or head[0] not in _OPS:
        return False
    found = walk(head)
    if found.stopped:
        return True
    if found.error.startswith(("pickle ends at byte", "argument of", "unterminated text")) and found.opcodes >= 3:
        return True
    return False
