"""The security policy: what a name a pickle mentions or calls may do. Read this file alone to review it.

Every name is looked at after Python 2 name mapping, as a dotted ``module.name``:

1. **Known gadgets** (:func:`gadget_reason`): modules and functions that run commands or code,
   import, unpickle, read or write files, dunder attributes, and gadgets re-exported through
   another module. Mentioning one refuses the whole file (exit 3); ``--allow-call`` cannot accept it.
2. **Allowlisted** names (:mod:`.allowlist`): mapped to fixed constructors of ours.
3. **Curated benign calls** (:data:`BENIGN_CALLS`): enums and data classes of widely used libraries,
   kept as inert call records even under ``--strict-calls``.
4. **Pure-data wrappers** (:data:`WRAPPERS`, ``functools.partial``): a call of one is an inert record
   of its target and arguments; a gadget target is refused by rule 1 when the pickle names it.
5. **Unknown** names: a class becomes an inert stub; a *call* becomes an inert call record (verdict
   ``unknown-call``), never executed. With ``--strict-calls`` such a call is refused unless the user
   names it with ``--allow-call``.

Operations refused whatever the names: calling anything that is not a named global (the result of a
call: the shape of gadget chains), ``EXT`` opcodes (the copyreg registry can name any callable), and
``BUILD`` on an object that is not an inert stub or record. Those live in :mod:`.vm`.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import ckpt_migrate.unpickler.allowlist as allowlist


@dataclass(frozen=True)
class Policy:
    """The user's choices for one file.

    ``allow_calls``: names accepted as inert records under ``--strict-calls`` (never gadgets).
    ``strict_calls``: refuse unknown calls instead of recording them.
    ``collect_only``: keep going after a refusal so every global gets a verdict (``scan``, ``inspect``).
    """

    allow_calls: frozenset[str] = frozenset()
    collect_only: bool = False
    strict_calls: bool = False


_GADGET_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "runpy", "importlib", "pickle", "_pickle", "cPickle",
    "pickletools", "marshal", "ctypes", "_ctypes", "shutil", "socket", "timeit", "cProfile", "profile", "pdb", "bdb",
    "code", "codeop", "pty", "commands", "popen2", "webbrowser", "multiprocessing", "concurrent", "asyncio",
    "threading", "_thread", "signal", "io", "_io", "tempfile", "glob", "zipimport", "types", "gc", "inspect",
    "functools", "operator", "_operator", "pydoc", "platform", "distutils", "setuptools", "pip", "sysconfig", "site",
    "linecache", "smtplib", "ftplib", "http", "urllib", "requests", "telnetlib", "dill", "cloudpickle", "joblib",
    "yaml", "jinja2", "_posixsubprocess", "posixpath", "ntpath", "zipfile", "tarfile", "sqlite3", "venv", "ensurepip",
    "imp", "builtin", "trace", "tracemalloc", "faulthandler", "atexit", "readline", "rlcompleter", "xmlrpc",
    "logging", "unittest", "doctest", "idlelib", "tkinter", "turtle", "mmap", "fcntl", "resource", "select",
    "selectors", "ssl", "shelve", "dbm", "copy", "weakref", "contextlib", "abc", "pkgutil", "modulefinder",
    "codecs", "antigravity", "this", "_winapi", "msvcrt", "winreg", "_osx_support", "_aix_support", "compileall",
    "py_compile", "zipapp", "_bootlocale", "_imp", "_frozen_importlib", "_frozen_importlib_external", "_sitebuiltins",
    "spawn", "pexpect", "sh", "plumbum", "fabric", "paramiko", "numexpr", "sympy", "pandas.io", "IPython",
}
_GADGET_INNER = {
    "os", "posix", "nt", "sys", "subprocess", "builtins", "runpy", "importlib", "pickle", "cPickle",
    "marshal", "ctypes", "_ctypes", "shutil", "socket", "pty", "multiprocessing", "_posixsubprocess", "dill",
    "cloudpickle", "joblib", "commands", "_imp", "_frozen_importlib", "_frozen_importlib_external",
    "functools",
}
_GADGET_FUNCTIONS = {
    "system", "popen", "popen2", "popen3", "popen4", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve",
    "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "execl", "execle", "execlp", "execlpe", "execv", "execve",
    "execvp", "execvpe", "eval", "exec", "execfile", "compile", "__import__", "import_module", "getattr", "setattr",
    "delattr", "attrgetter", "methodcaller", "loads", "load_module", "exec_module", "run_path", "run_module",
    "check_output", "check_call", "Popen", "getoutput", "getstatusoutput", "rmtree", "breakpoint", "set_trace",
    "fork", "forkpty", "kill", "killpg", "load_inline", "load_library", "runstring", "_forward_from_src",
}
_GADGET_NAMES = {
    "torch.load", "torch.hub", "torch.jit", "torch.serialization", "torch._C", "torch.utils.cpp_extension",
    "torch._dynamo", "torch._inductor", "torch.fx", "torch.package", "torch.ops", "torch.library",
    "torch.storage", "torch.distributed", "torch.multiprocessing", "torch.utils.data", "torch._ops",
    "torch.compile", "torch.export", "torch.utils.collect_env", "torch.testing", "torch.backends",
    "torch.utils.benchmark", "torch.utils.checkpoint", "torch.utils.bottleneck", "torch.func", "torch.vmap",
    "torch._classes", "torch.classes", "torch._higher_order_ops", "torch._export", "torch._functorch",
    "torch.cuda.memory", "torch.utils._config_module", "torch._jit_internal", "torch._sources", "torch.onnx",
    "numpy.load", "numpy.loads", "numpy.lib", "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib",
    "numpy.fromfile", "numpy.memmap", "numpy.save", "numpy.savez", "numpy.savetxt", "numpy.loadtxt", "numpy.genfromtxt",
    "numpy.core._internal", "numpy._core._internal", "numpy.core.numeric.load", "numpy.compat", "numpy.core.records",
    "numpy._core.records", "numpy.rec", "numpy.core.memmap", "numpy._core.memmap", "numpy.core.multiarray.fromfile",
    "numpy._core.multiarray.fromfile", "numpy.core._methods", "numpy._core._methods", "numpy._pytesttester",
    "torch._utils._rebuild_sparse_tensor",
}
_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "range", "bytearray", "bytes", "list", "tuple", "dict",
                  "int", "float", "bool", "str", "object"}
_ALLOWED_DUNDERS = {"__main__", "__builtin__", "__torch__", "__newobj__", "__newobj_ex__"}
_SAFE_IN_GADGET_PREFIX = {
    "torch.storage._load_from_bytes", "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
    "torch.serialization._get_layout", "torch.jit._pickle.restore_type_tag", "torch.jit._pickle.build_intlist",
    "torch.jit._pickle.build_doublelist", "torch.jit._pickle.build_boollist", "torch.jit._pickle.build_tensorlist",
    "copyreg._reconstructor", "copyreg.__newobj__",
} | allowlist.DCP_METADATA

WRAPPERS = frozenset({"functools.partial"})
"""Pure-data wrappers: a call of one is recorded (target and arguments as data), never executed."""

BENIGN_CALLS = frozenset({
    "torchvision.transforms.functional.InterpolationMode",
    "torchvision.transforms.InterpolationMode",
    "torchvision.io.image.ImageReadMode",
    "transformers.trainer_utils.IntervalStrategy",
    "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.EvaluationStrategy",
    "transformers.trainer_utils.SchedulerType",
    "transformers.trainer_utils.HubStrategy",
    "transformers.trainer_utils.FSDPOption",
    "transformers.training_args.OptimizerNames",
    "transformers.training_args.ParallelMode",
    "transformers.debug_utils.DebugOption",
    "transformers.utils.generic.PaddingStrategy",
    "transformers.utils.generic.TensorType",
    "accelerate.utils.dataclasses.DistributedType",
    "accelerate.utils.dataclasses.PrecisionType",
    "accelerate.utils.dataclasses.ComputeEnvironment",
    "accelerate.utils.dataclasses.DynamoBackend",
    "pytorch_lightning.trainer.states.TrainerFn",
    "pytorch_lightning.trainer.states.TrainerStatus",
    "pytorch_lightning.trainer.states.RunningStage",
    "pytorch_lightning.utilities.enums.LightningEnum",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.trainer.states.TrainerFn",
    "lightning.pytorch.trainer.states.TrainerStatus",
    "lightning.pytorch.trainer.states.RunningStage",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "omegaconf.base.SCMode",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.zero.offload_config.OffloadDeviceEnum",
    "deepspeed.runtime.zero.offload_config.OffloadStateTypeEnum",
    "numpy.random._pickle.__randomstate_ctor",
    "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__generator_ctor",
    "numpy.core.numeric._frombuffer",
    "numpy._core.numeric._frombuffer",
})
"""Enums and data classes of widely used libraries whose calls only build a value: plain records
even under ``--strict-calls``. Only exact names: a look-alike in another module is not on this list."""

_NEVER = "a known code-execution gadget, never allowed, not even with --allow-call"


@functools.lru_cache(maxsize=4096)
def gadget_reason(dotted: str) -> str | None:
    """Why ``dotted`` is a known code-execution gadget that can never be allowed, or ``None``.

    Every part of the name is checked, so re-exports (``torch.os.system``) and attribute chains
    (``os.path.join.__globals__``) are caught as well as direct names.

    Args:
        dotted: the global's ``module.name`` after Python 2 name mapping.

    Returns:
        A reason for a gadget, ``None`` for anything else.
    """
    if dotted in _SAFE_IN_GADGET_PREFIX or dotted in WRAPPERS:
        return None
    parts = dotted.split(".")
    name = parts[-1]
    if any(p.startswith("__") and p.endswith("__") and p not in _ALLOWED_DUNDERS for p in parts[1:]):
        return "reaches into interpreter internals through a dunder attribute"
    if parts[0] == "builtins":
        return None if name in _SAFE_BUILTINS and len(parts) == 2 else "builtins can evaluate code, open files or import modules"
    for module in (parts[0], ".".join(parts[:2])):
        if module in _GADGET_MODULES:
            return f"module {module} can run commands, code or file operations"
    for prefix in _GADGET_NAMES:
        if dotted == prefix or dotted.startswith(prefix + "."):
            return f"{prefix} can load or execute code"
    inner = next((p for p in parts[1:-1] if p in _GADGET_INNER), None)
    if inner is not None:
        return f"reaches module {inner} through an attribute of {parts[0]}"
    if name in _GADGET_FUNCTIONS and not allowlist.is_allowlisted(dotted):
        return f"{name} runs commands, code or loaders wherever it is re-exported"
    return None


def classify(dotted: str, policy: Policy | None = None) -> tuple[str, str]:
    """The verdict on a *mention* of ``dotted``: ``(verdict, reason)``.

    Args:
        dotted: the global's ``module.name``.
        policy: the user's choices (only used to say that ``--allow-call`` was ignored for a gadget).

    Returns:
        ``refused`` for gadgets, ``allowed`` for allowlisted names, ``stub`` for everything else.
    """
    gadget = gadget_reason(dotted)
    if gadget:
        reason = f"{gadget}; {_NEVER}"
        if policy is not None and dotted in policy.allow_calls:
            reason += "; --allow-call was given for it and was ignored"
        return "refused", reason
    if allowlist.is_allowlisted(dotted):
        return "allowed", ""
    return "stub", ""


def call_verdict(dotted: str, how: str, policy: Policy) -> tuple[str, str]:
    """The verdict on a *call* (``REDUCE``, ``INST``, ``OBJ``) of a name that is not allowlisted.

    Args:
        dotted: the called global's ``module.name``.
        how: the opcode, for the reason.
        policy: the user's choices.

    Returns:
        ``(verdict, reason)``: ``refused`` for a gadget, or for an unknown call under
        ``--strict-calls`` without ``--allow-call``; ``allowed`` for a curated or accepted call;
        ``unknown-call`` for any other call, which is recorded as inert data.
    """
    verdict, reason = classify(dotted, policy)
    if verdict != "stub":
        return verdict, reason
    if dotted in BENIGN_CALLS:
        return "allowed", f"{how} of a curated benign enum or data class, kept as an inert record, never executed"
    if dotted in policy.allow_calls:
        return "allowed", f"{how} accepted with --allow-call as an inert record, never executed"
    if policy.strict_calls:
        return "refused", (f"{how} calls a name outside the allowlist under --strict-calls; "
                           f"--allow-call {dotted} would accept it as an inert record, never executed")
    return "unknown-call", f"{how} of a name outside the allowlist, kept as an inert record, never executed"
