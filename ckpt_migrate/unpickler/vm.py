"""The safe pickle interpreter: a pickle virtual machine of our own that never runs code.

It reads opcodes from bytes, builds plain Python data, lazy tensor references and inert stubs,
and decides what every ``GLOBAL`` may do through :mod:`.allowlist`. It never calls
``pickle.load``, never imports a module a file names, and never calls a name the allowlist does
not map to one of our own constructors.
"""

from __future__ import annotations

import _compat_pickle
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from ..checkpoint import GlobalVerdict, TensorRef
from ..errors import CorruptFileError, LimitExceededError, UnsafeFileError
from . import allowlist
from .limits import DEFAULT_LIMITS, Limits
from .stubs import AllowedCall, GlobalRef, PickledOrderedDict, RefusedCall, StubObject

PersistentLoad = Callable[[Any], Any]

_MARK = object()


@dataclass
class Policy:
    """The user's choices: calls accepted as inert records, and whether refusals stop the run."""

    allow_calls: frozenset[str] = frozenset()
    collect_only: bool = False


@dataclass
class GlobalUse:
    """Every use of one global in one pickle; the verdict is the worst use."""

    name: str
    offset: int
    verdict: str = "stub"
    reason: str = ""

    def escalate(self, verdict: str, reason: str) -> None:
        rank = {"allowed": 0, "stub": 1, "refused": 2}
        if rank[verdict] > rank[self.verdict] or (verdict == self.verdict and not self.reason):
            self.verdict, self.reason = verdict, reason


@dataclass
class Result:
    """What one pickle produced: the top object and the verdict on each global it named."""

    value: Any
    globals: dict[str, GlobalUse] = field(default_factory=dict)

    @property
    def refused(self) -> list[GlobalUse]:
        return [use for use in self.globals.values() if use.verdict == "refused"]

    def verdicts(self) -> list[GlobalVerdict]:
        return [GlobalVerdict(u.name, u.verdict, u.reason, u.offset) for u in self.globals.values()]


class Interpreter:
    """Run one pickle from ``data`` starting at ``start``; :meth:`run` returns a :class:`Result`.

    ``persistent_load`` turns persistent ids into values (torch storages); ``load_nested`` opens
    ``torch.storage._load_from_bytes`` payloads through the same rules.
    """

    def __init__(
        self,
        data: bytes | memoryview,
        *,
        path: str,
        start: int = 0,
        persistent_load: PersistentLoad | None = None,
        load_nested: Callable[[bytes], Any] | None = None,
        policy: Policy | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.data = memoryview(data)
        self.pos = start
        self.path = path
        self.persistent_load = persistent_load
        self.policy = policy or Policy()
        self.limits = limits
        self.ctx = allowlist.CallContext(path, load_nested)
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.builder_slots: dict[int, list[int]] = {}
        self.uses: dict[str, GlobalUse] = {}
        self.ops = 0
        self.op_offset = start
        self.proto = 0

    def run(self) -> Result:
        """Interpret until ``STOP``.

        Raises:
            UnsafeFileError: a refused call was found (unless the policy only collects verdicts).
            CorruptFileError: the bytes are not a well-formed pickle.
            LimitExceededError: a resource limit was reached.
        """
        try:
            value = self._loop()
        except UnsafeFileError:
            raise
        except CorruptFileError:
            if self._refused_names() and not self.policy.collect_only:
                self._raise_refused()
            raise
        except (IndexError, KeyError, TypeError, ValueError, AttributeError, struct.error, RecursionError, OverflowError, MemoryError) as error:
            if self._refused_names() and not self.policy.collect_only:
                self._raise_refused()
            raise CorruptFileError(f"malformed pickle at byte {self.op_offset}: {type(error).__name__}: {error}", path=self.path) from None
        result = Result(value, self.uses)
        if result.refused and not self.policy.collect_only:
            self._raise_refused()
        return result

    def _refused_names(self) -> list[str]:
        return [u.name for u in self.uses.values() if u.verdict == "refused"]

    def _raise_refused(self) -> None:
        refused = [u for u in self.uses.values() if u.verdict == "refused"]
        details = "; ".join(f"{u.name} ({u.reason})" for u in refused)
        raise UnsafeFileError(f"refused: the pickle calls {details}", path=self.path, refused=[u.name for u in refused])

    def _read(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise CorruptFileError(
                f"pickle declares {size} bytes at byte {self.pos} but only {max(len(self.data) - self.pos, 0)} remain",
                path=self.path,
            )
        chunk = self.data[self.pos: self.pos + size]
        self.pos += size
        return chunk

    def _readline(self) -> bytes:
        end = bytes(self.data[self.pos: self.pos + 65536]).find(b"\n")
        if end < 0:
            raise CorruptFileError(f"unterminated text opcode at byte {self.pos}", path=self.path)
        line = bytes(self.data[self.pos: self.pos + end])
        self.pos += end + 1
        return line

    def _push(self, value: Any) -> None:
        if len(self.stack) >= self.limits.max_stack:
            raise LimitExceededError(f"pickle stack exceeds {self.limits.max_stack} entries", path=self.path)
        self.stack.append(value)

    def _pop_mark(self) -> list[Any]:
        items = self.stack
        if not self.metastack:
            raise CorruptFileError(f"pickle pops a mark that was never set (byte {self.op_offset})", path=self.path)
        self.stack = self.metastack.pop()
        return items

    def _memo_put(self, index: int, value: Any) -> None:
        if index not in self.memo and len(self.memo) >= self.limits.max_memo:
            raise LimitExceededError(f"pickle memo exceeds {self.limits.max_memo} entries", path=self.path)
        self.memo[index] = value
        if isinstance(value, (allowlist.NumpyArrayBuilder, allowlist.NumpyDTypeBuilder)):
            self.builder_slots.setdefault(id(value), []).append(index)

    def _memo_get(self, index: int) -> Any:
        if index not in self.memo:
            raise CorruptFileError(f"pickle reads memo entry {index} that was never stored (byte {self.op_offset})", path=self.path)
        return self.memo[index]

    def _use(self, ref: GlobalRef) -> GlobalUse:
        use = self.uses.get(ref.dotted)
        if use is None:
            use = GlobalUse(ref.dotted, self.op_offset)
            gadget = allowlist.gadget_reason(ref.dotted)
            if gadget:
                use.escalate("refused", gadget)
            elif ref.dotted in allowlist.CALLABLES or ref.dotted in allowlist.VALUES or ref.dotted in allowlist.CLASSES or allowlist.storage_dtype(ref.dotted):
                use.verdict = "allowed"
            self.uses[ref.dotted] = use
        return use

    def _global(self, module: str, name: str) -> Any:
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        module = {"__builtin__": "builtins", "copy_reg": "copyreg", "exceptions": "builtins"}.get(module, module)
        if "." in name:
            module, name = f"{module}.{name}".rsplit(".", 1)
        ref = GlobalRef(module, name)
        self._use(ref)
        value = allowlist.VALUES.get(ref.dotted)
        return value if value is not None else ref

    def _call(self, func: Any, args: tuple, how: str) -> Any:
        if not isinstance(func, GlobalRef):
            if isinstance(func, RefusedCall):
                return func
            raise UnsafeFileError(f"refused: the pickle calls a {type(func).__name__} object through {how}", path=self.path, refused=[type(func).__name__])
        use = self._use(func)
        if use.verdict == "refused":
            return RefusedCall(func, use.reason)
        handler = allowlist.CALLABLES.get(func.dotted)
        if handler is not None:
            use.escalate("allowed", "")
            if any(isinstance(a, RefusedCall) for a in args):
                return RefusedCall(func, "argument refused")
            return handler(self.ctx, tuple(args))
        if func.dotted in self.policy.allow_calls:
            use.escalate("allowed", "accepted with --allow-call as an inert record")
            return AllowedCall(func, tuple(args))
        use.escalate("refused", f"{how} of a name outside the allowlist; --allow-call {func.dotted} would accept it as an inert record")
        return RefusedCall(func, use.reason)

    def _instantiate(self, cls: Any, args: tuple, kwargs: dict | None, how: str) -> Any:
        if not isinstance(cls, GlobalRef):
            if isinstance(cls, RefusedCall):
                return cls
            raise CorruptFileError(f"{how} on a {type(cls).__name__}, not a class (byte {self.op_offset})", path=self.path)
        use = self._use(cls)
        if use.verdict == "refused":
            return RefusedCall(cls, use.reason)
        factory = allowlist.CLASSES.get(cls.dotted)
        if factory is not None:
            return factory(self.ctx, args)
        return StubObject(cls, args=tuple(args), kwargs=dict(kwargs or {}))

    def _build(self, obj: Any, state: Any) -> Any:
        if isinstance(obj, StubObject):
            if isinstance(obj.state, dict) and isinstance(state, dict):
                obj.state.update(state)
            else:
                obj.state = state
            return obj
        if isinstance(obj, PickledOrderedDict):
            obj.pickle_state = state
            return obj
        if isinstance(obj, (allowlist.NumpyArrayBuilder, allowlist.NumpyDTypeBuilder)):
            built = obj.build(self.ctx, state)
            for slot in self.builder_slots.pop(id(obj), ()):
                self.memo[slot] = built
            return built
        if isinstance(obj, TensorRef):
            obj.pickle_state = state
            return obj
        if isinstance(obj, (AllowedCall,)):
            obj.state = state
            return obj
        if isinstance(obj, RefusedCall):
            return obj
        import argparse

        if isinstance(obj, argparse.Namespace) and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            vars(obj).update(state)
            return obj
        raise UnsafeFileError(f"refused: BUILD sets state on a {type(obj).__name__} object, which only stubs accept (byte {self.op_offset})", path=self.path, refused=[f"BUILD:{type(obj).__name__}"])

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin1")

    def _loop(self) -> Any:
        data = self.data
        limit = self.limits.max_opcodes
        dispatch = _DISPATCH
        while True:
            if self.pos >= len(data):
                raise CorruptFileError(f"pickle ends at byte {self.pos} without STOP", path=self.path)
            self.op_offset = self.pos
            code = data[self.pos]
            self.pos += 1
            self.ops += 1
            if self.ops > limit:
                raise LimitExceededError(f"pickle exceeds {limit} opcodes", path=self.path)
            op = dispatch.get(code)
            if op is None:
                raise CorruptFileError(f"unknown pickle opcode {bytes([code])!r} at byte {self.op_offset}", path=self.path)
            if code == 0x2E:  # STOP
                if not self.stack:
                    raise CorruptFileError("pickle STOP with an empty stack", path=self.path)
                return self.stack.pop()
            op(self)


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
    vm._push(vm._read(1)[0])


def _op_binint2(vm: Interpreter) -> None:
    vm._push(struct.unpack("<H", vm._read(2))[0])


def _op_long1(vm: Interpreter) -> None:
    size = vm._read(1)[0]
    vm._push(int.from_bytes(vm._read(size), "little", signed=True))


def _op_long4(vm: Interpreter) -> None:
    size = struct.unpack("<i", vm._read(4))[0]
    if size < 0 or size > 1 << 16:
        raise LimitExceededError(f"LONG4 of {size} bytes", path=vm.path)
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
    vm._push(vm._decode(bytes(vm._read(size))))


def _op_short_binstring(vm: Interpreter) -> None:
    vm._push(vm._decode(bytes(vm._read(vm._read(1)[0]))))


def _op_unicode(vm: Interpreter) -> None:
    vm._push(vm._readline().decode("raw-unicode-escape"))


def _op_binunicode(vm: Interpreter) -> None:
    size = struct.unpack("<I", vm._read(4))[0]
    vm._push(str(vm._read(size), "utf-8", "surrogatepass"))


def _op_binunicode8(vm: Interpreter) -> None:
    size = struct.unpack("<Q", vm._read(8))[0]
    vm._push(str(vm._read(size), "utf-8", "surrogatepass"))


def _op_short_binunicode(vm: Interpreter) -> None:
    vm._push(str(vm._read(vm._read(1)[0]), "utf-8", "surrogatepass"))


def _op_binbytes(vm: Interpreter) -> None:
    vm._push(bytes(vm._read(struct.unpack("<I", vm._read(4))[0])))


def _op_binbytes8(vm: Interpreter) -> None:
    vm._push(bytes(vm._read(struct.unpack("<Q", vm._read(8))[0])))


def _op_short_binbytes(vm: Interpreter) -> None:
    vm._push(bytes(vm._read(vm._read(1)[0])))


def _op_bytearray8(vm: Interpreter) -> None:
    vm._push(bytearray(vm._read(struct.unpack("<Q", vm._read(8))[0])))


def _op_next_buffer(vm: Interpreter) -> None:
    raise CorruptFileError("pickle uses out-of-band buffers (NEXT_BUFFER), which checkpoints never need", path=vm.path)


def _op_readonly_buffer(vm: Interpreter) -> None:
    return None


def _op_empty_tuple(vm: Interpreter) -> None:
    vm._push(())


def _op_tuple(vm: Interpreter) -> None:
    vm._push(tuple(vm._pop_mark()))


def _op_tuple1(vm: Interpreter) -> None:
    vm.stack[-1] = (vm.stack[-1],)


def _op_tuple2(vm: Interpreter) -> None:
    b = vm.stack.pop()
    vm.stack[-1] = (vm.stack[-1], b)


def _op_tuple3(vm: Interpreter) -> None:
    c = vm.stack.pop()
    b = vm.stack.pop()
    vm.stack[-1] = (vm.stack[-1], b, c)


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
        target.update(items)
    elif isinstance(target, (RefusedCall, AllowedCall)):
        return
    else:
        raise CorruptFileError(f"APPEND to a {type(target).__name__} (byte {vm.op_offset})", path=vm.path)


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
    vm._push({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})


def _set_items(vm: Interpreter, target: Any, items: list) -> None:
    if isinstance(target, dict):
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    elif isinstance(target, StubObject):
        for i in range(0, len(items) - 1, 2):
            target.items[items[i]] = items[i + 1]
    elif isinstance(target, (RefusedCall, AllowedCall)):
        return
    else:
        raise CorruptFileError(f"SETITEM on a {type(target).__name__} (byte {vm.op_offset})", path=vm.path)


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
        try:
            target.update(items)
        except TypeError:
            vm.stack[-1] = list(target) + items
    elif isinstance(target, list):
        target.extend(items)
    else:
        raise CorruptFileError(f"ADDITEMS on a {type(target).__name__}", path=vm.path)


def _op_frozenset(vm: Interpreter) -> None:
    items = vm._pop_mark()
    try:
        vm._push(frozenset(items))
    except TypeError:
        vm._push(items)


def _op_get(vm: Interpreter) -> None:
    vm._push(vm._memo_get(int(vm._readline())))


def _op_binget(vm: Interpreter) -> None:
    vm._push(vm._memo_get(vm._read(1)[0]))


def _op_long_binget(vm: Interpreter) -> None:
    vm._push(vm._memo_get(struct.unpack("<I", vm._read(4))[0]))


def _op_put(vm: Interpreter) -> None:
    vm._memo_put(int(vm._readline()), vm.stack[-1])


def _op_binput(vm: Interpreter) -> None:
    vm._memo_put(vm._read(1)[0], vm.stack[-1])


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


def _op_ext(vm: Interpreter) -> None:
    raise UnsafeFileError("refused: the pickle uses the copyreg extension registry (EXT opcodes)", path=vm.path, refused=["EXT"])


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
    vm.stack[-1] = vm._instantiate(cls, tuple(args), dict(kwargs) if isinstance(kwargs, dict) else {}, "NEWOBJ_EX")


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


_DISPATCH: dict[int, Callable[[Interpreter], None]] = {
    0x80: _op_proto, 0x95: _op_frame, ord("("): _op_mark, ord("0"): _op_pop, ord("1"): _op_pop_mark,
    ord("2"): _op_dup, ord("F"): _op_float, ord("I"): _op_int, ord("J"): _op_binint, ord("K"): _op_binint1,
    ord("L"): _op_long, ord("M"): _op_binint2, ord("N"): _op_none, ord("P"): _op_persid, ord("Q"): _op_binpersid,
    ord("R"): _op_reduce, ord("S"): _op_string, ord("T"): _op_binstring, ord("U"): _op_short_binstring,
    ord("V"): _op_unicode, ord("X"): _op_binunicode, ord("a"): _op_append, ord("b"): _op_build,
    ord("c"): _op_global, ord("d"): _op_dict, ord("}"): _op_empty_dict, ord("e"): _op_appends,
    ord("g"): _op_get, ord("h"): _op_binget, ord("i"): _op_inst, ord("j"): _op_long_binget, ord("l"): _op_list,
    ord("]"): _op_empty_list, ord("o"): _op_obj, ord("p"): _op_put, ord("q"): _op_binput, ord("r"): _op_long_binput,
    ord("s"): _op_setitem, ord("t"): _op_tuple, ord(")"): _op_empty_tuple, ord("u"): _op_setitems,
    ord("G"): _op_binfloat, 0x81: _op_newobj, 0x82: _op_ext, 0x83: _op_ext, 0x84: _op_ext, 0x85: _op_tuple1,
    0x86: _op_tuple2, 0x87: _op_tuple3, 0x88: _op_true, 0x89: _op_false, 0x8A: _op_long1, 0x8B: _op_long4,
    ord("B"): _op_binbytes, ord("C"): _op_short_binbytes, 0x8C: _op_short_binunicode, 0x8D: _op_binunicode8,
    0x8E: _op_binbytes8, 0x8F: _op_empty_set, 0x90: _op_additems, 0x91: _op_frozenset, 0x92: _op_newobj_ex,
    0x93: _op_stack_global, 0x94: _op_memoize, 0x96: _op_bytearray8, 0x97: _op_next_buffer,
    0x98: _op_readonly_buffer, ord("."): _op_pop,
}


def interpret(data: bytes | memoryview, *, path: str, **options: Any) -> Result:
    """Interpret one pickle; see :class:`Interpreter` for the options.

    Raises:
        UnsafeFileError: the pickle calls something outside the allowlist.
        CorruptFileError: the bytes are not a well-formed pickle.
    """
    return Interpreter(data, path=path, **options).run()
