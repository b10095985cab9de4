"""Run one ``ckpt-migrate`` command in a child process under hard limits and an audit hook.

The child imports torch and ckpt-migrate, then caps its address space at what it has mapped plus
2 GiB (``RLIMIT_AS``; torch alone maps about 3 GiB of virtual memory before doing anything), caps
any file it writes at 256 MiB (``RLIMIT_FSIZE``, so a runaway output cannot fill the disk), records
every file opened for writing, removed or renamed outside the allowed folders and every process
started or command run, and runs the command. The parent kills it after 60 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(os.environ.get("CKPT_MIGRATE_ROOT", Path(__file__).resolve().parent.parent))
MEMORY_HEADROOM = 2 << 30
FILE_SIZE_LIMIT = 256 << 20
WALL_SECONDS = 60
PROCESS_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn")
CHANGE_EVENTS = ("os.remove", "os.unlink", "os.rmdir", "shutil.rmtree", "os.rename", "os.replace", "os.truncate", "os.symlink", "os.link")


@dataclass
class Outcome:
    """What the child did: exit code, its output, audit findings, peak memory (bytes) and wall time."""

    code: int
    stdout: str
    stderr: str
    events: list[str] = field(default_factory=list)
    peak_rss: int = 0
    seconds: float = 0.0


def _outside(path: object, allowed: list[str]) -> bool:
    if isinstance(path, int) or path is None:
        return False
    real = os.path.realpath(os.fsdecode(path))
    return not any(real == root or real.startswith(root + os.sep) for root in allowed)


def child_main(spec_file: str) -> None:
    """The child's entry point: limits, audit hook, the command, then the findings as JSON in ``spec["result"]``."""
    import resource
    import time

    sys.dont_write_bytecode = True
    spec = json.loads(Path(spec_file).read_text())
    import numpy  # noqa: F401 - ckpt-migrate's numpy handlers; loading it is not the input's doing
    import rich.console  # noqa: F401
    import torch  # noqa: F401

    from ckpt_migrate.cli import main_group

    status = Path("/proc/self/status").read_text()
    mapped = int(status.split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + MEMORY_HEADROOM, mapped + MEMORY_HEADROOM))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    allowed = [os.path.realpath(p) for p in spec["allowed"]]
    events: list[str] = []
    state = {"on": True}

    def hook(event: str, args: tuple) -> None:
        if not state["on"]:
            return
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writing and _outside(path, allowed):
                events.append(f"open for writing {path!r:.200}")
        elif event.startswith(PROCESS_EVENTS):
            events.append(f"{event} {args!r:.200}")
        elif event in CHANGE_EVENTS and any(_outside(a, allowed) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            events.append(f"{event} {args!r:.200}")

    sys.addaudithook(hook)
    started = time.monotonic()
    code = 0
    try:
        main_group.main(args=spec["args"], prog_name="ckpt-migrate", standalone_mode=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    seconds = time.monotonic() - started
    state["on"] = False
    sys.stdout.flush()
    sys.stderr.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(spec["result"]).write_text(json.dumps({"code": code, "events": events, "peak_rss": peak, "seconds": seconds}))
    os._exit(0)


def run_guarded(args: list[str], workdir: Path, allowed: list[Path], env: dict[str, str] | None = None) -> Outcome:
    """Run ``ckpt-migrate ARGS`` through :func:`child_main`; writes are allowed only under ``allowed``.

    A child still running after 60 s is killed and reported as exit code ``-9`` with its output so far.
    """
    spec_file = workdir / f"spec-{os.getpid()}-{len(list(workdir.glob('spec-*')))}.json"
    result_file = spec_file.with_suffix(".result")
    spec_file.write_text(json.dumps({"args": [os.fspath(a) for a in args], "allowed": [os.fspath(p) for p in allowed],
                                     "result": os.fspath(result_file)}))
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent), full_env.get("PYTHONPATH", "")])
    full_env.pop("FORCE_COLOR", None)
    full_env.update(env or {})
    try:
        proc = subprocess.run([sys.executable, "-c", f"import helpers_resources as h; h.child_main({os.fspath(spec_file)!r})"],
                              capture_output=True, cwd=workdir, env=full_env, timeout=WALL_SECONDS)
    except subprocess.TimeoutExpired as expired:
        out = (expired.stdout or b"").decode("utf-8", "replace")
        err = (expired.stderr or b"").decode("utf-8", "replace")
        return Outcome(-9, out, err + f"\n[killed after {WALL_SECONDS} s]", seconds=WALL_SECONDS)
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    if not result_file.exists():
        return Outcome(proc.returncode if proc.returncode else -1, out, err + f"\n[child died: {proc.returncode}]")
    found = json.loads(result_file.read_text())
    return Outcome(found["code"], out, err, found["events"], found["peak_rss"], found["seconds"])
