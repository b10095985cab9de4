"""Opcode handlers of the safe interpreter: one small function per pickle opcode, and the dispatch table.

Each handler reads its argument through the interpreter's bounds-checked readers and pushes plain
values; anything that names, calls, instantiates or sets state goes through the interpreter's
policy-checked methods (``_global``, ``_call``, ``_instantiate``, ``_build``). Bytes and text read
from the pickle are charged to the file's allocation budget.
"""

from __future__ import annotations

import collections
import struct
from typing import TYPE_CHECKING, Any, Callable

from ckpt_migrate.errors import CorruptFileError, LimitExceededError
from ckpt_migrate.unpickler.stubs import CallRecord, GlobalRef, RefusedCall, StubObject, describe_value

if TYPE_CHECKING:
    from ckpt_migrate.unpickler.vm import Interpreter

MAX_LONG_BYTES = 1785
"""The largest LONG4 whose integer Python can still print (4300 decimal digits)."""


def _op_proto(vm: Interpreter) -> None:
    vm.proto = vm._read(1)[0]
    if vm.proto > 5:
        raise CorruptFileError(f"unsupported pickle protocol {vm.proto}", path=vm.path)


def _op_frame(vm: Interpreter) -> None:
    size = struct.unpack("<Q", vm._read(8))[0]
    if vm.pos + size > len(vm.data):
        raise CorruptFileError(f"pickle frame of {size} bytes runs past the end of the data", path=vm.path)


def _op_mark(vm: Interpreter) -> None:
    if len(vm.metastack) >= vm.limits.max_marks:
        raise LimitExceededError(f"pickle nests more than {vm.limits.max_marks} marks", path=vm.path)
    vm.metastack.append(vm.stack)
    vm.stack = []


def _op_pop(vm: Interpreter) -> None:
    if vm.stack:
        vm.stack.pop()
    else:
        vm._pop_mark()


def _op_pop_mark(vm: Interpreter) -> None:
    vm._pop_mark()


def _op_dup(vm: Interpreter) -> None:
    vm._push(vm.stack[-1])


def _int_from_text(vm: Interpreter, line: bytes) -> Any:
    if line == b"00":
        return False
    if line == b"01":
        return True
    text = line.rstrip(b"L")
    if len(text) > 4300:
        raise LimitExceededError("pickle integer literal too long", path=vm.path)
    return int(text)


def _op_int(vm: Interpreter) -> None:
    vm._push(_int_from_text(vm, vm._readline()))


def _op_long(vm: Interpreter) -> None:
    vm._push(_int_from_text(vm, vm._readline()))


def _op_float(vm: Interpreter) -> None:
    vm._push(float(vm._readline()))


def _op_binint(vm: Interpreter) -> None:
    vm._push(struct.unpack("<i", vm._read(4))[0])


def _op_binint1(vm: Interpreter) -> None:
    vm._push(vm._read_byte())


def _op_binint2(vm: Interpreter) -> None:
    vm._push(struct.unpack("<H", vm._read(2))[0])


def _op_long1(vm: Interpreter) -> None:
    size = vm._read(1)[0]
    vm._push(int.from_bytes(vm._read(size), "little", signed=True))


def _op_long4(vm: Interpreter) -> None:
    size = struct.unpack("<i", vm._read(4))[0]
    if size < 0 or size > MAX_LONG_BYTES:
        raise LimitExceededError(f"LONG4 of {size} bytes (an integer of more than 4300 digits)", path=vm.path)
    vm._push(int.from_bytes(vm._read(size), "little", signed=True))


def _op_binfloat(vm: Interpreter) -> None:
    vm._push(struct.unpack(">d", vm._read(8))[0])


def _op_none(vm: Interpreter) -> None:
    vm._push(None)


def _op_true(vm: Interpreter) -> None:
    vm._push(True)


def _op_false(vm: Interpreter) -> None:
    vm._push(False)


def _unquote(vm: Interpreter, line: bytes) -> bytes:
    if len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"'):
        import codecs

        return codecs.escape_decode(line[1:-1])[0]
    raise CorruptFileError("STRING opcode argument is not quoted", path=vm.path)


def _op_string(vm: Interpreter) -> None:
    vm._push(vm._decode(_unquote(vm, vm._readline())))


def _op_binstring(vm: Interpreter) -> None:
    size = struct.unpack("<i", vm._read(4))[0]
    vm._push(vm._decode(bytes(vm._read_alloc(size))))


def _op_short_binstring(vm: Interpreter) -> None:
    vm._push(vm._decode(bytes(vm._read(vm._read(1)[0]))))


def _op_unicode(vm: Interpreter) -> None:
    vm._push(vm._readline().decode("raw-unicode-escape"))


def _op_binunicode(vm: Interpreter) -> None:
    size = struct.unpack("<I", vm._read(4))[0]
    vm._push(str(vm._read_alloc(size), "utf-8", "surrogatepass"))


def _op_binunicode8(vm: Interpreter) -> None:
    size = struct.unpack("<Q", vm._read(8))[0]
    vm._push(str(vm._read_alloc(size), "utf-8", "surrogatepass"))


def _op_short_binunicode(vm: Interpreter) -> None:
    vm._push(str(vm._read(vm._read_byte()), "utf-8", "surrogatepass"))


def _op_binbytes(vm: Interpreter) -> None:
    vm._push(bytes(vm._read_alloc(struct.unpack("<I", vm._read(4))[0])))


def _op_binbytes8(vm: Interpreter) -> None:
    vm._push(bytes(vm._read_alloc(struct.unpack("<Q", vm._read(8))[0])))


def _op_short_binbytes(vm: Interpreter) -> None:
    vm._push(bytes(vm._read(vm._read(1)[0])))


def _op_bytearray8(vm: Interpreter) -> None:
    vm._push(bytearray(vm._read_alloc(struct.unpack("<Q", vm._read(8))[0])))


def _op_next_buffer(vm: Interpreter) -> None:
    raise CorruptFileError("pickle uses out-of-band buffers (NEXT_BUFFER), which checkpoints never need", path=vm.path)


def _op_readonly_buffer(vm: Interpreter) -> None:
    return None


def _op_empty_tuple(vm: Interpreter) -> None:
    vm._push(())


def _op_tuple(vm: Interpreter) -> None:
    vm._push(vm._track(tuple(vm._pop_mark())))


def _op_tuple1(vm: Interpreter) -> None:
    vm.stack[-1] = vm._track((vm.stack[-1],))


def _op_tuple2(vm: Interpreter) -> None:
    b = vm.stack.pop()
    vm.stack[-1] = vm._track((vm.stack[-1], b))


def _op_tuple3(vm: Interpreter) -> None:
    c = vm.stack.pop()
    b = vm.stack.pop()
    vm.stack[-1] = vm._track((vm.stack[-1], b, c))


def _op_empty_list(vm: Interpreter) -> None:
    vm._push([])


def _op_list(vm: Interpreter) -> None:
    vm._push(vm._pop_mark())


def _append_to(vm: Interpreter, target: Any, items: list) -> None:
    if isinstance(target, list):
        target.extend(items)
    elif isinstance(target, StubObject):
        target.listitems.extend(items)
    elif isinstance(target, set):
        vm.hash_items(items)
        target.update(items)
    elif isinstance(target, collections.deque):
        target.extend(items)
    elif isinstance(target, (RefusedCall, CallRecord)):
        return
    else:
        raise CorruptFileError(f"APPEND to {describe_value(target)} (byte {vm.op_offset})", path=vm.path)


def _op_append(vm: Interpreter) -> None:
    value = vm.stack.pop()
    _append_to(vm, vm.stack[-1], [value])


def _op_appends(vm: Interpreter) -> None:
    items = vm._pop_mark()
    _append_to(vm, vm.stack[-1], items)


def _op_empty_dict(vm: Interpreter) -> None:
    vm._push({})


def _op_dict(vm: Interpreter) -> None:
    items = vm._pop_mark()
    keys = items[0::2]
    vm.hash_items(keys)
    vm._push({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})


def _set_items(vm: Interpreter, target: Any, items: list) -> None:
    if isinstance(target, dict):
        vm.hash_items(items[0::2])
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    elif isinstance(target, StubObject):
        vm.hash_items(items[0::2])
        for i in range(0, len(items) - 1, 2):
            target.items[items[i]] = items[i + 1]
    elif isinstance(target, (RefusedCall, CallRecord)):
        return
    else:
        raise CorruptFileError(f"SETITEM on {describe_value(target)} (byte {vm.op_offset})", path=vm.path)


def _op_setitem(vm: Interpreter) -> None:
    value = vm.stack.pop()
    key = vm.stack.pop()
    _set_items(vm, vm.stack[-1], [key, value])


def _op_setitems(vm: Interpreter) -> None:
    items = vm._pop_mark()
    _set_items(vm, vm.stack[-1], items)


def _op_empty_set(vm: Interpreter) -> None:
    vm._push(set())


def _op_additems(vm: Interpreter) -> None:
    items = vm._pop_mark()
    target = vm.stack[-1]
    if isinstance(target, set):
        vm.hash_items(items)
        try:
            target.update(items)
        except TypeError:
            vm.stack[-1] = list(target) + items
    elif isinstance(target, list):
        target.extend(items)
    else:
        raise CorruptFileError(f"ADDITEMS on {describe_value(target)}", path=vm.path)


def _op_frozenset(vm: Interpreter) -> None:
    items = vm._pop_mark()
    vm.hash_items(items)
    try:
        vm._push(vm._track(frozenset(items)))
    except TypeError:
        vm._push(items)


def _op_get(vm: Interpreter) -> None:
    vm._push(vm._memo_get(int(vm._readline())))


def _op_binget(vm: Interpreter) -> None:
    vm._push(vm._memo_get(vm._read_byte()))


def _op_long_binget(vm: Interpreter) -> None:
    vm._push(vm._memo_get(struct.unpack("<I", vm._read(4))[0]))


def _op_put(vm: Interpreter) -> None:
    vm._memo_put(int(vm._readline()), vm.stack[-1])


def _op_binput(vm: Interpreter) -> None:
    vm._memo_put(vm._read_byte(), vm.stack[-1])


def _op_long_binput(vm: Interpreter) -> None:
    vm._memo_put(struct.unpack("<I", vm._read(4))[0], vm.stack[-1])


def _op_memoize(vm: Interpreter) -> None:
    vm._memo_put(len(vm.memo), vm.stack[-1])


def _op_global(vm: Interpreter) -> None:
    module = vm._readline().decode("utf-8", "replace")
    name = vm._readline().decode("utf-8", "replace")
    vm._push(vm._global(module, name))


def _op_stack_global(vm: Interpreter) -> None:
    name = vm.stack.pop()
    module = vm.stack.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise CorruptFileError("STACK_GLOBAL needs two strings", path=vm.path)
    vm._push(vm._global(module, name))


def _ext(vm: Interpreter, size: int) -> None:
    code = int.from_bytes(vm._read(size), "little")
    vm._push(vm._refuse(f"EXT{size} code {code}", "uses the copyreg extension registry, which can name any callable"))


def _op_ext1(vm: Interpreter) -> None:
    _ext(vm, 1)


def _op_ext2(vm: Interpreter) -> None:
    _ext(vm, 2)


def _op_ext4(vm: Interpreter) -> None:
    _ext(vm, 4)


def _op_reduce(vm: Interpreter) -> None:
    args = vm.stack.pop()
    func = vm.stack[-1]
    if not isinstance(args, tuple):
        args = tuple(args) if isinstance(args, list) else (args,)
    vm.stack[-1] = vm._call(func, args, "REDUCE")


def _op_newobj(vm: Interpreter) -> None:
    args = vm.stack.pop()
    cls = vm.stack[-1]
    vm.stack[-1] = vm._instantiate(cls, tuple(args) if isinstance(args, (tuple, list)) else (args,), None, "NEWOBJ")


def _op_newobj_ex(vm: Interpreter) -> None:
    kwargs = vm.stack.pop()
    args = vm.stack.pop()
    cls = vm.stack[-1]
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    vm.stack[-1] = vm._instantiate(cls, args, dict(kwargs) if isinstance(kwargs, dict) else {}, "NEWOBJ_EX")


def _instantiate_or_call(vm: Interpreter, ref: Any, args: list, how: str) -> Any:
    if args:
        return vm._call(ref, tuple(args), how)
    return vm._instantiate(ref, (), None, how)


def _op_inst(vm: Interpreter) -> None:
    module = vm._readline().decode("utf-8", "replace")
    name = vm._readline().decode("utf-8", "replace")
    ref = vm._global(module, name)
    args = vm._pop_mark()
    vm._push(_instantiate_or_call(vm, ref if isinstance(ref, GlobalRef) else GlobalRef(*f"{module}.{name}".rsplit(".", 1)), args, "INST"))


def _op_obj(vm: Interpreter) -> None:
    items = vm._pop_mark()
    if not items:
        raise CorruptFileError("OBJ without a class", path=vm.path)
    vm._push(_instantiate_or_call(vm, items[0], items[1:], "OBJ"))


def _op_build(vm: Interpreter) -> None:
    state = vm.stack.pop()
    vm.stack[-1] = vm._build(vm.stack[-1], state)


def _op_persid(vm: Interpreter) -> None:
    pid = vm._readline().decode("ascii", "replace")
    vm._push(_persistent(vm, pid))


def _op_binpersid(vm: Interpreter) -> None:
    vm.stack[-1] = _persistent(vm, vm.stack[-1])


def _persistent(vm: Interpreter, pid: Any) -> Any:
    if vm.persistent_load is None:
        raise CorruptFileError("pickle refers to external data (persistent id) where none is expected", path=vm.path)
    return vm.persistent_load(pid)


DISPATCH: dict[int, Callable[[Interpreter], None]] = {
    0x80: _op_proto, 0x95: _op_frame, ord("("): _op_mark, ord("0"): _op_pop, ord("1"): _op_pop_mark,
    ord("2"): _op_dup, ord("F"): _op_float, ord("I"): _op_int, ord("J"): _op_binint, ord("K"): _op_binint1,
    ord("L"): _op_long, ord("M"): _op_binint2, ord("N"): _op_none, ord("P"): _op_persid, ord("Q"): _op_binpersid,
    ord("R"): _op_reduce, ord("S"): _op_string, ord("T"): _op_binstring, ord("U"): _op_short_binstring,
    ord("V"): _op_unicode, ord("X"): _op_binunicode, ord("a"): _op_append, ord("b"): _op_build,
    ord("c"): _op_global, ord("d"): _op_dict, ord("}"): _op_empty_dict, ord("e"): _op_appends,
    ord("g"): _op_get, ord("h"): _op_binget, ord("i"): _op_inst, ord("j"): _op_long_binget, ord("l"): _op_list,
    ord("]"): _op_empty_list, ord("o"): _op_obj, ord("p"): _op_put, ord("q"): _op_binput, ord("r"): _op_long_binput,
    ord("s"): _op_setitem, ord("t"): _op_tuple, ord(")"): _op_empty_tuple, ord("u"): _op_setitems,
    ord("G"): _op_binfloat, 0x81: _op_newobj, 0x82: _op_ext1, 0x83: _op_ext2, 0x84: _op_ext4, 0x85: _op_tuple1,
    0x86: _op_tuple2, 0x87: _op_tuple3, 0x88: _op_true, 0x89: _op_false, 0x8A: _op_long1, 0x8B: _op_long4,
    ord("B"): _op_binbytes, ord("C"): _op_short_binbytes, 0x8C: _op_short_binunicode, 0x8D: _op_binunicode8,
    0x8E: _op_binbytes8, 0x8F: _op_empty_set, 0x90: _op_additems, 0x91: _op_frozenset, 0x92: _op_newobj_ex,
    0x93: _op_stack_global, 0x94: _op_memoize, 0x96: _op_bytearray8, 0x97: _op_next_buffer,
    0x98: _op_readonly_buffer, ord("."): _op_pop,
}

HANDLERS: tuple[Callable[[Interpreter], None] | None, ...] = tuple(DISPATCH.get(code) for code in range(256))
""":data:`DISPATCH` as a table indexed by the opcode byte (``None`` for an unknown opcode): the interpreter's loop reads it."""

