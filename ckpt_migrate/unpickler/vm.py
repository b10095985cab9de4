"""The safe pickle interpreter: a pickle virtual machine of our own that never runs code.

It reads opcodes from bytes (handlers in :mod:`.opcodes`), builds plain Python data, lazy tensor
references and inert stubs, and asks :mod:`.policy` what every ``GLOBAL`` may do. It never calls
``pickle.load``, never imports a module a file names, and never calls a name the allowlist does
not map to one of our own constructors: any other call becomes an inert :class:`CallRecord`.

A refusal does not stop the walk: every global of the pickle gets its verdict, so ``scan``,
``inspect`` and ``convert`` name the same globals. When a pickle is both refused and malformed,
the refusal wins; either error carries the verdicts collected so far as ``error.globals``. All
work is charged to the input file's :class:`~.budget.Budget`, shared with nested payloads.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import ckpt_migrate.unpickler.allowlist as allowlist
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, LimitExceededError
from ckpt_migrate.model.checkpoint import TensorRef
from ckpt_migrate.unpickler.budget import Budget, numeric_key
from ckpt_migrate.unpickler.context import CallContext
from ckpt_migrate.unpickler.limits import DEFAULT_LIMITS, Limits
from ckpt_migrate.unpickler.opcodes import HANDLERS
from ckpt_migrate.unpickler.policy import WRAPPERS, Policy, call_verdict, classify
from ckpt_migrate.unpickler.rebuilders import NumpyArrayBuilder, NumpyDTypeBuilder
from ckpt_migrate.unpickler.stubs import CallRecord, GlobalRef, PickledOrderedDict, RefusedCall, StubObject, describe_value
from ckpt_migrate.unpickler.verdicts import GlobalVerdict, merge_uses, refusal_error, refused, settle

_BUILDERS = frozenset({NumpyArrayBuilder, NumpyDTypeBuilder})
_FLAT = frozenset({str, bool, bytes, type(None)})
"""Types whose items add nothing to a tuple's depth, size or hash risk."""

PersistentLoad = Callable[[Any], Any]

_HASH_MODULUS = sys.hash_info.modulus
_NUMERIC_TYPES = (float, complex)


@dataclass
class Result:
    """What one pickle produced: the top object and the verdict on each global it named."""

    value: Any
    globals: dict[str, GlobalVerdict] = field(default_factory=dict)

    @property
    def refused(self) -> list[GlobalVerdict]:
        return refused(self.globals)

    def verdicts(self) -> list[GlobalVerdict]:
        return list(self.globals.values())


class Interpreter:
    """Run one pickle from ``data`` starting at ``start``; :meth:`run` returns a :class:`Result`.

    ``persistent_load`` turns persistent ids into values (torch storages); ``load_nested`` opens
    ``torch.storage._load_from_bytes`` payloads through the same rules and returns a
    :class:`~.context.NestedResult` whose verdicts join this pickle's. ``budget`` is the input
    file's :class:`~.budget.Budget` (a new one when not given); nested payloads share it.
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
        budget: Budget | None = None,
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
        self.budget = budget if budget is not None else Budget(limits, len(self.data))
        self.ctx = CallContext(path, load_nested, limits=limits, budget=self.budget, merge=self.merge_nested, hashing=self.hash_items)
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.builder_slots: dict[int, list[int]] = {}
        self.uses: dict[str, GlobalVerdict] = {}
        self.shapes: dict[int, tuple[int, int, bool, bool]] = {}
        self.op_offset = start
        self.proto = 0
        if type(data) is bytes and start == 0:
            self.budget.charge_alloc(len(data), "a pickle read into memory")

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
            walked = walk(self.data, self.start, max_opcodes=self.budget.max_ops)
        except Exception:  # noqa: BLE001 - the walk only adds detail to an error already being raised
            return
        for ref in walked.globals:
            if ref.offset <= self.op_offset:
                continue
            dotted = ".".join(resolve_name(ref.module, ref.name, walked.protocol))
            if dotted in self.uses:
                continue
            verdict, reason = static_verdict(dotted, ref.called, ref.opcode, self.policy)
            where = f"{self.where or 'pickle'} (found past the malformed byte {self.op_offset})"
            self.uses[dotted] = GlobalVerdict(dotted, ref.offset, verdict, reason, where, "static")

    def merge_nested(self, uses: Iterable[GlobalVerdict]) -> None:
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

    def _read_byte(self) -> int:
        """The next byte, as an int (the argument of the one-byte opcodes)."""
        pos = self.pos
        if pos >= len(self.data):
            raise CorruptFileError(f"pickle declares 1 bytes at byte {pos} but only 0 remain", path=self.path)
        self.pos = pos + 1
        return self.data[pos]

    def _read_alloc(self, size: int) -> memoryview:
        """:meth:`_read` for an argument about to be copied into a new object: charged to the budget."""
        chunk = self._read(size)
        if size > 256:
            self.budget.charge_alloc(size, f"a string or bytes of {size} bytes at byte {self.op_offset}")
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
        if type(value) in _BUILDERS:
            self.builder_slots.setdefault(id(value), []).append(index)

    def _memo_get(self, index: int) -> Any:
        if index not in self.memo:
            raise CorruptFileError(f"pickle reads memo entry {index} that was never stored (byte {self.op_offset})", path=self.path)
        return self.memo[index]

    def _use(self, ref: GlobalRef) -> GlobalVerdict:
        use = self.uses.get(ref.dotted)
        if use is None:
            verdict, reason = classify(ref.dotted, self.policy)
            use = GlobalVerdict(ref.dotted, self.op_offset, verdict, reason, self.where)
            self.uses[ref.dotted] = use
        return use

    def _refuse(self, name: str, reason: str) -> RefusedCall:
        """Record a refused operation that names no global (``BUILD`` on a dict, an ``EXT`` code)."""
        use = self.uses.get(name)
        if use is None:
            self.uses[name] = use = GlobalVerdict(name, self.op_offset, "refused", reason, self.where)
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
            return self._track(handler(self.ctx, tuple(args)))
        verdict, reason = call_verdict(func.dotted, how, self.policy)
        if verdict == "allowed" and use.verdict in ("stub", "allowed"):
            use.verdict, use.reason = verdict, reason
        elif verdict != "allowed":
            use.escalate(verdict, reason)
        if verdict == "refused":
            return RefusedCall(func, reason)
        if func.dotted in WRAPPERS:
            target = args[0] if args else None
            if isinstance(target, RefusedCall) or (isinstance(target, GlobalRef) and classify(target.dotted)[0] == "refused"):
                named = target.dotted if isinstance(target, GlobalRef) else target.func.dotted
                use.escalate("refused", f"{how} wraps {named}, which is refused; calling the wrapper would call it")
                return RefusedCall(func, use.reason)
        self.budget.charge_ops(len(args))
        return CallRecord(func, tuple(args))

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
        if isinstance(obj, (NumpyArrayBuilder, NumpyDTypeBuilder)):
            built = obj.build(self.ctx, state)
            for slot in self.builder_slots.pop(id(obj), ()):
                self.memo[slot] = built
            return built
        if isinstance(obj, TensorRef):
            obj.pickle_state = state
            return obj
        if isinstance(obj, CallRecord):
            obj.state = state
            return obj
        if isinstance(obj, RefusedCall):
            return obj
        if isinstance(obj, argparse.Namespace) and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            vars(obj).update(state)
            return obj
        return self._refuse(f"BUILD on {describe_value(obj)}", "sets state on an object that is not an inert stub; only stubs accept state")

    def hash_items(self, items: Any) -> None:
        """Charge the hashing of ``items`` (keys or set members) to the file's budget.

        Every item costs one unit of work (a tuple its size); keys whose hash an attacker can
        choose (big integers, floats, complex numbers, fractions, decimals, tuples of them) are
        checked for collisions.

        Raises:
            LimitExceededError: the budget is spent, or too many keys share a hash.
        """
        if isinstance(items, dict):
            items = items.keys()
        elif not isinstance(items, (list, tuple, set, frozenset, collections.deque)):
            return
        self.budget.charge_ops(len(items))
        for item in items:
            if type(item) is list and item:
                item = item[0]
            self._hash_key(item)

    def _hash_key(self, key: Any) -> None:
        kind = type(key)
        if kind is int:
            if not -_HASH_MODULUS < key < _HASH_MODULUS:
                self.budget.hash_key(key, big=True)
            return
        if kind is tuple or kind is frozenset or kind is slice:
            _, size, big, numeric = self._measure(key)
            self.budget.charge_ops(size)
            if big or numeric:
                self.budget.hash_key(key, big=big)
            return
        if kind is str or kind is bytes or kind is bool or key is None:
            return
        if numeric_key(key):
            self.budget.hash_key(key)

    def _measure(self, value: Any) -> tuple[int, int, bool, bool]:
        known = self.shapes.get(id(value))
        if known is not None:
            return known
        items = (value.start, value.stop, value.step) if type(value) is slice else value
        big = numeric = False
        for item in items:
            kind = type(item)
            if kind is int:
                big = big or not -_HASH_MODULUS < item < _HASH_MODULUS
            elif kind not in _FLAT and numeric_key(item):
                numeric = True
        return 1, len(items) + 1, big, numeric

    def _track(self, value: Any) -> Any:
        """Record the nesting depth and size of a new tuple, frozenset or slice; refuse one nested too deep.

        Every hashable container the pickle can reach is made here, so none is deeper than the
        limit (CPython's hash of a deeper tuple overflows the C stack).
        """
        kind = type(value)
        if kind is not tuple and kind is not frozenset and kind is not slice:
            return value
        items = (value.start, value.stop, value.step) if kind is slice else value
        depth, size, big, numeric = 1, len(items) + 1, False, False
        for item in items:
            item_kind = type(item)
            if item_kind in _FLAT:
                continue
            if item_kind is tuple or item_kind is frozenset or item_kind is slice:
                child_depth, child_size, child_big, child_numeric = self._measure(item)
                depth = max(depth, child_depth + 1)
                size += child_size
                big = big or child_big
                numeric = numeric or child_numeric
            elif item_kind is int and not -_HASH_MODULUS < item < _HASH_MODULUS:
                big = True
            elif numeric_key(item):
                numeric = True
        if depth > self.limits.max_depth:
            raise LimitExceededError(f"tuples nested more than {self.limits.max_depth} deep", path=self.path)
        if depth > 1 or size > 16 or big or numeric:
            self.shapes[id(value)] = (depth, size, big, numeric)
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
        size = len(data)
        budget = self.budget
        limit = budget.max_ops
        handlers = HANDLERS
        while True:
            pos = self.pos
            if pos >= size:
                raise CorruptFileError(f"pickle ends at byte {pos} without STOP", path=self.path)
            self.op_offset = pos
            code = data[pos]
            self.pos = pos + 1
            budget.ops += 1
            if budget.ops > limit:
                budget.charge_ops(0)
            op = handlers[code]
            if op is None:
                raise CorruptFileError(f"unknown pickle opcode {bytes([code])!r} at byte {pos}", path=self.path)
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
    if kind is CallRecord:
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



def static_verdict(dotted: str, called: bool, opcode: str, policy: Policy) -> tuple[str, str]:
    """The verdict on a global found by the static walk only: a mention, or a call when ``called``.

    Args:
        dotted: the global's ``module.name``.
        called: the walk saw the pickle call it (``REDUCE``, ``OBJ``, ``INST`` with arguments).
        opcode: the opcode that named it, for the reason.
        policy: the user's choices.

    Returns:
        ``(verdict, reason)`` as the interpreter would give it.
    """
    if called:
        return call_verdict(dotted, opcode, policy)
    return classify(dotted, policy)


def interpret(data: bytes | memoryview, *, path: str, **options: Any) -> Result:
    """Interpret one pickle; see :class:`Interpreter` for the options.

    Raises:
        UnsafeFileError: the pickle names a known gadget (or an unknown call under ``--strict-calls``).
        CorruptFileError: the bytes are not a well-formed pickle.
        LimitExceededError: a resource limit was reached.
    """
    return Interpreter(data, path=path, **options).run()
