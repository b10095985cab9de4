"""The safe pickle interpreter: a pickle virtual machine of our own that never runs code.

It reads opcodes from bytes, builds plain Python data, lazy tensor references and inert stubs,
and decides what every ``GLOBAL`` may do through :mod:`.allowlist`. It never calls
``pickle.load``, never imports a module a file names, and never calls a name the allowlist does
not map to one of our own constructors.

A refusal does not stop the walk: every global of the pickle gets its verdict, so ``scan``,
``inspect`` and ``convert`` name the same globals. When a pickle is both refused and malformed,
the refusal wins; either error carries the verdicts collected so far as ``error.globals``.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ckpt_migrate.model.checkpoint import GlobalVerdict, TensorRef
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, LimitExceededError, UnsafeFileError
import ckpt_migrate.unpickler.allowlist as allowlist
from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits
from ckpt_migrate.unpickler.stubs import AllowedCall, GlobalRef, PickledOrderedDict, RefusedCall, StubObject, describe_value

PersistentLoad = Callable[[Any], Any]

_HASH_MODULUS = sys.hash_info.modulus
_MAX_LONG_BYTES = 1785
"""The largest LONG4 whose integer Python can still print (4300 decimal digits)."""
_RANK = {"allowed": 0, "stub": 1, "refused": 2}


@dataclass
class Policy:
    """The user's choices: calls accepted as inert records, and whether refusals stop the run."""

    allow_calls: frozenset[str] = frozenset()
    collect_only: bool = False


@dataclass
class GlobalUse:
    """Every use of one global in one file; the verdict is the worst use.

    ``offset`` is the byte of the first opcode that named it; ``where`` says which pickle
    (``archive/data.pkl``, ``nested pickle at byte 120``) when the file holds several.
    """

    name: str
    offset: int
    verdict: str = "stub"
    reason: str = ""
    where: str = ""

    def escalate(self, verdict: str, reason: str) -> None:
        """Keep the worse of the current verdict and ``verdict`` (allowed < stub < refused)."""
        if _RANK[verdict] > _RANK[self.verdict] or (verdict == self.verdict and not self.reason):
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


def merge_uses(into: dict[str, GlobalUse], uses: Iterable[GlobalUse], where: str | None = None) -> None:
    """Add ``uses`` to ``into``, keeping the first offset of each name and the worst verdict."""
    for use in uses:
        known = into.get(use.name)
        if known is None:
            into[use.name] = GlobalUse(use.name, use.offset, use.verdict, use.reason, where if where is not None else use.where)
        else:
            known.escalate(use.verdict, use.reason)


def refusal_error(uses: dict[str, GlobalUse], path: str | None, cause: CkptMigrateError | None = None) -> UnsafeFileError:
    """The :class:`UnsafeFileError` for the refused globals in ``uses``, carrying all of them as ``globals``."""
    refused = [u for u in uses.values() if u.verdict == "refused"]
    details = "; ".join(f"{u.name} at byte {u.offset}{f' in {u.where}' if u.where else ''} ({u.reason})" for u in refused[:5])
    if len(refused) > 5:
        details += f"; and {len(refused) - 5} more ({', '.join(u.name for u in refused[5:20])}{', …' if len(refused) > 20 else ''})"
    message = f"refused: {details}"
    if cause is not None:
        message += f"; the file is also malformed: {cause.message}"
    error = UnsafeFileError(message, path=path, refused=[u.name for u in refused])
    error.globals = dict(uses)
    return error


def settle(error: CkptMigrateError, uses: dict[str, GlobalUse], path: str | None) -> CkptMigrateError:
    """The error to raise when reading stopped on ``error``: a refusal wins over a malformed file.

    The returned error carries every verdict collected so far as ``globals``.
    """
    if isinstance(error, UnsafeFileError):
        collected = dict(uses)
        merge_uses(collected, getattr(error, "globals", {}).values())
        error.globals = collected
        return error
    if any(u.verdict == "refused" for u in uses.values()):
        return refusal_error(uses, path or error.path, error)
    collected = dict(uses)
    merge_uses(collected, getattr(error, "globals", {}).values())
    error.globals = collected
    return error


class Interpreter:
    """Run one pickle from ``data`` starting at ``start``; :meth:`run` returns a :class:`Result`.

    ``persistent_load`` turns persistent ids into values (torch storages); ``load_nested`` opens
    ``torch.storage._load_from_bytes`` payloads through the same rules and returns a
    :class:`~.allowlist.NestedResult` whose verdicts join this pickle's.
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
        where: str = "",
    ) -> None:
        self.data = memoryview(data)
        self.start = start
        self.pos = start
        self.path = path
        self.where = where
        self.persistent_load = persistent_load
        self.policy = policy or Policy()
        self.limits = limits
        self.ctx = allowlist.CallContext(path, load_nested, limits=limits, merge=self.merge_nested, hashing=self.hash_items)
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.builder_slots: dict[int, list[int]] = {}
        self.uses: dict[str, GlobalUse] = {}
        self.shapes: dict[int, tuple[int, int, bool]] = {}
        self.colliding = 0
        self.ops = 0
        self.op_offset = start
        self.proto = 0

    def run(self) -> Result:
        """Interpret until ``STOP``.

        Raises:
            UnsafeFileError: a refused global was found (unless the policy only collects verdicts),
                or the pickle is both refused and malformed.
            CorruptFileError: the bytes are not a well-formed pickle.
            LimitExceededError: a resource limit was reached.
        """
        try:
            value = self._loop()
            check_nesting(value, self.limits.max_depth, self.path)
        except CkptMigrateError as error:
            self._walk_rest()
            raise settle(error.with_path(self.path), self.uses, self.path) from None
        except Exception as error:  # noqa: BLE001 - any failure on hostile bytes is a malformed file, never a crash
            corrupt = CorruptFileError(f"malformed pickle at byte {self.op_offset}: {type(error).__name__}: {error}"[:500], path=self.path)
            self._walk_rest()
            raise settle(corrupt, self.uses, self.path) from None
        result = Result(value, self.uses)
        if result.refused and not self.policy.collect_only:
            raise refusal_error(self.uses, self.path)
        return result

    def _walk_rest(self) -> None:
        """After a failure, add the globals a static walk finds past the failing opcode.

        A pickle that stops on a malformed value may still name ``os.system`` further on; the
        verdict must not depend on which byte broke first.
        """
        from ckpt_migrate.unpickler.static import walk

        try:
            walked = walk(self.data, self.start, max_opcodes=self.limits.max_opcodes)
        except Exception:  # noqa: BLE001 - the walk only adds detail to an error already being raised
            return
        for ref in walked.globals:
            if ref.offset <= self.op_offset:
                continue
            dotted = ".".join(resolve_name(ref.module, ref.name, walked.protocol))
            if dotted in self.uses:
                continue
            verdict, reason = allowlist.classify(dotted, self.policy.allow_calls)
            if ref.called and verdict == "stub" and dotted not in self.policy.allow_calls:
                verdict = "refused"
                reason = f"{ref.opcode} calls a name outside the allowlist; --allow-call {dotted} would accept it as an inert record (never executed)"
            where = f"{self.where or 'pickle'} (found past the malformed byte {self.op_offset})"
            self.uses[dotted] = GlobalUse(dotted, ref.offset, verdict, reason, where)

    def merge_nested(self, uses: Iterable[GlobalUse]) -> None:
        """Record the verdicts of a nested pickle opened at the current opcode."""
        where = f"nested pickle at byte {self.op_offset}" + (f" of {self.where}" if self.where else "")
        merge_uses(self.uses, uses, where)

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
        end = find_newline(self.data, self.pos)
        if end < 0:
            raise CorruptFileError(f"unterminated text opcode at byte {self.pos}", path=self.path)
        line = bytes(self.data[self.pos: end])
        self.pos = end + 1
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
        if index < 0:
            raise CorruptFileError(f"negative memo index {index}", path=self.path)
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
            use = GlobalUse(ref.dotted, self.op_offset, where=self.where)
            verdict, reason = allowlist.classify(ref.dotted, self.policy.allow_calls)
            use.verdict, use.reason = verdict, reason
            self.uses[ref.dotted] = use
        return use

    def _refuse(self, name: str, reason: str) -> RefusedCall:
        """Record a refused operation that names no global (``BUILD`` on a dict, an ``EXT`` code)."""
        use = self.uses.get(name)
        if use is None:
            self.uses[name] = use = GlobalUse(name, self.op_offset, "refused", reason, self.where)
        use.escalate("refused", reason)
        return RefusedCall(GlobalRef("<pickle>", name), reason)

    def _global(self, module: str, name: str) -> Any:
        ref = GlobalRef(*resolve_name(module, name, self.proto))
        self._use(ref)
        value = allowlist.VALUES.get(ref.dotted)
        return value if value is not None else ref

    def _call(self, func: Any, args: tuple, how: str) -> Any:
        if isinstance(func, RefusedCall):
            return func
        if not isinstance(func, GlobalRef):
            return self._refuse(f"{how} of {describe_value(func)}", "calls an object that is not a named global; only allowlisted constructors may be called")
        use = self._use(func)
        if use.verdict == "refused":
            return RefusedCall(func, use.reason)
        handler = allowlist.CALLABLES.get(func.dotted)
        if handler is not None:
            if any(isinstance(a, RefusedCall) for a in args):
                return RefusedCall(func, "argument refused")
            if func.dotted in allowlist.HASHING:
                self.hash_items(args[0] if args else ())
            return self._track(handler(self.ctx, tuple(args)))
        if func.dotted in self.policy.allow_calls:
            use.verdict, use.reason = "allowed", f"{how} accepted with --allow-call as an inert record (never executed)"
            return AllowedCall(func, tuple(args))
        use.escalate("refused", f"{how} calls a name outside the allowlist; --allow-call {func.dotted} would accept it as an inert record (never executed)")
        return RefusedCall(func, use.reason)

    def _instantiate(self, cls: Any, args: tuple, kwargs: dict | None, how: str) -> Any:
        if isinstance(cls, RefusedCall):
            return cls
        if not isinstance(cls, GlobalRef):
            raise CorruptFileError(f"{how} on {describe_value(cls)}, not a class (byte {self.op_offset})", path=self.path)
        use = self._use(cls)
        if use.verdict == "refused":
            return RefusedCall(cls, use.reason)
        factory = allowlist.CLASSES.get(cls.dotted)
        if factory is not None:
            return self._track(factory(self.ctx, args))
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
        if isinstance(obj, AllowedCall):
            obj.state = state
            return obj
        if isinstance(obj, RefusedCall):
            return obj
        if isinstance(obj, argparse.Namespace) and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            vars(obj).update(state)
            return obj
        return self._refuse(f"BUILD on {describe_value(obj)}", "sets state on an object that is not an inert stub; only stubs accept state")

    def hash_items(self, items: Any) -> None:
        """Charge the hashing of ``items`` (keys or set members) to the opcode budget.

        Raises:
            LimitExceededError: the budget is spent, or too many keys have attacker-chosen hashes.
        """
        if isinstance(items, dict):
            items = items.keys()
        elif not isinstance(items, (list, tuple, set, frozenset, collections.deque)):
            return
        for item in items:
            if type(item) is list and item:
                item = item[0]
            self._hash_key(item)

    def _hash_key(self, key: Any) -> None:
        kind = type(key)
        if kind is int:
            if not -_HASH_MODULUS < key < _HASH_MODULUS:
                self._collision()
            return
        if kind is tuple or kind is frozenset or kind is slice:
            _, size, big = self._measure(key)
            self.ops += size
            if self.ops > self.limits.max_opcodes:
                raise LimitExceededError(f"pickle exceeds {self.limits.max_opcodes} opcodes and hashed elements", path=self.path)
            if big:
                self._collision()

    def _collision(self) -> None:
        self.colliding += 1
        if self.colliding > self.limits.max_colliding_keys:
            raise LimitExceededError(
                f"more than {self.limits.max_colliding_keys} dict keys or set members are integers beyond the hash modulus "
                "(a hash-collision attack)", path=self.path)

    def _measure(self, value: Any) -> tuple[int, int, bool]:
        known = self.shapes.get(id(value))
        if known is not None:
            return known
        items = (value.start, value.stop, value.step) if type(value) is slice else value
        big = any(type(i) is int and not -_HASH_MODULUS < i < _HASH_MODULUS for i in items)
        return 1, len(items) + 1, big

    def _track(self, value: Any) -> Any:
        """Record the nesting depth and size of a new tuple, frozenset or slice; refuse one nested too deep.

        Every hashable container the pickle can reach is made here, so none is deeper than the
        limit (CPython's hash of a deeper tuple overflows the C stack).
        """
        kind = type(value)
        if kind is not tuple and kind is not frozenset and kind is not slice:
            return value
        items = (value.start, value.stop, value.step) if kind is slice else value
        depth, size, big = 1, len(items) + 1, False
        for item in items:
            item_kind = type(item)
            if item_kind is tuple or item_kind is frozenset or item_kind is slice:
                child_depth, child_size, child_big = self._measure(item)
                depth = max(depth, child_depth + 1)
                size += child_size
                big = big or child_big
            elif item_kind is int and not -_HASH_MODULUS < item < _HASH_MODULUS:
                big = True
        if depth > self.limits.max_depth:
            raise LimitExceededError(f"tuples nested more than {self.limits.max_depth} deep", path=self.path)
        if depth > 1 or size > 16 or big:
            self.shapes[id(value)] = (depth, size, big)
        else:
            self.shapes.pop(id(value), None)
        return value

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


def find_newline(data: memoryview, pos: int, limit: int = 65536) -> int:
    """The index of the next newline within ``limit`` bytes of ``pos``, or -1.

    The window grows geometrically, so a text opcode costs what its line costs, not ``limit``.
    """
    size = 64
    while True:
        index = bytes(data[pos: pos + size]).find(b"\n")
        if index >= 0:
            return pos + index
        if size >= limit or pos + size >= len(data):
            return -1
        size = min(size * 8, limit)


def resolve_name(module: str, name: str, proto: int) -> tuple[str, str]:
    """The module and name a global means: Python 2 names mapped as pickle maps them, dotted names split.

    Old spellings (``__builtin__``, ``copy_reg``) are mapped whatever the protocol, so a
    protocol-4 file cannot hide ``eval`` behind a Python 2 module name.
    """
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    module = {"__builtin__": "builtins", "copy_reg": "copyreg", "exceptions": "builtins"}.get(module, module)
    if "." in name:
        module, name = f"{module}.{name}".rsplit(".", 1)
    return module, name


def _children(value: Any) -> Any:
    kind = type(value)
    if kind is list or kind is tuple or kind is set or kind is frozenset or kind is collections.deque:
        return value
    if isinstance(value, dict):
        return value.values()
    if kind is StubObject:
        return (value.args, value.kwargs, value.state, value.items, value.listitems)
    if kind is AllowedCall:
        return (value.args, value.state)
    if kind is TensorRef:
        return (value.pickle_state,) if value.pickle_state is not None else None
    if kind is argparse.Namespace:
        return tuple(vars(value).values())
    return None


def check_nesting(root: Any, limit: int, path: str | None = None) -> int:
    """The nesting depth of containers in ``root`` (cycles do not count), without recursion.

    Raises:
        LimitExceededError: containers are nested deeper than ``limit``.
    """
    kids = _children(root)
    if kids is None:
        return 0
    done: dict[int, int] = {}
    active = {id(root)}
    frames: list[list[Any]] = [[root, iter(kids), 0]]
    while frames:
        frame = frames[-1]
        descended = False
        for child in frame[1]:
            child_kids = _children(child)
            if child_kids is None:
                continue
            key = id(child)
            known = done.get(key)
            if known is not None:
                frame[2] = max(frame[2], known)
                continue
            if key in active:
                continue
            if len(frames) >= limit:
                raise LimitExceededError(f"containers nested more than {limit} deep", path=path)
            active.add(key)
            frames.append([child, iter(child_kids), 0])
            descended = True
            break
        if descended:
            continue
        frames.pop()
        active.discard(id(frame[0]))
        depth = frame[2] + 1
        if depth > limit:
            raise LimitExceededError(f"containers nested more than {limit} deep", path=path)
        done[id(frame[0])] = depth
        if frames:
            frames[-1][2] = max(frames[-1][2], depth)
    return done.get(id(root), 0)


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
    if size < 0 or size > _MAX_LONG_BYTES:
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
    elif isinstance(target, (RefusedCall, AllowedCall)):
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
    elif isinstance(target, (RefusedCall, AllowedCall)):
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
    ord("G"): _op_binfloat, 0x81: _op_newobj, 0x82: _op_ext1, 0x83: _op_ext2, 0x84: _op_ext4, 0x85: _op_tuple1,
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
