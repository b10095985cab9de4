"""Where a batch's conversions run: in-process, in local worker processes, or as Ray tasks.

Every executor takes plain task dicts and yields plain result dicts as files finish, in
completion order. A file whose worker dies (segfault, OOM kill, lost Ray node) comes back as a
``failed`` result naming the cause; the other files go on.
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ckpt_migrate.errors import CkptMigrateError, MissingDependencyError, UsageError
from ckpt_migrate.batch.worker import crashed, prepare, run_task

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

EXECUTORS = ("local", "ray", "inline")
DEFAULT_FILE_TIMEOUT = 3600.0
"""Seconds one file may take in a worker before the worker is stopped and the file fails (``--file-timeout``)."""


class InlineExecutor:
    """Convert in this process, one file after the other (used for ``memory://`` trees and tests)."""

    name = "inline"

    def start(self) -> None:
        """Nothing to start: files are converted in this process."""

    def close(self) -> None:
        """Nothing to stop."""

    def run(self, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for task in tasks:
            yield run_task(task)


def _serve(conn: Connection, function: Callable[[dict[str, Any]], dict[str, Any]],
           prepare: Callable[[], None] | None = None) -> None:
    """A worker process's loop: ``prepare()`` once, then receive a task and send ``function(task)``, until told to stop."""
    try:
        if prepare is not None:
            prepare()
        while True:
            task = conn.recv()
            if task is None:
                return
            conn.send(function(task))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return


@dataclass
class _Worker:
    process: Any
    conn: Connection
    tasks: deque = field(default_factory=deque)
    deadline: float = 0.0


PREFETCH_MAX_BYTES = 4 << 20
"""A worker is handed a second task while it works on one when that task is this small: it never waits for
the parent between small files. A bigger file goes only to an idle worker, so no large file waits behind
another while a worker is free."""


@contextlib.contextmanager
def _caller_main_hidden() -> Iterator[None]:
    """Start workers without re-running the caller's script.

    A spawned child normally re-imports the parent's ``__main__`` (by path or module name) before
    it runs anything, so ``migrate(jobs=2)`` called from a script without an
    ``if __name__ == "__main__":`` guard would run the script again in every worker. Workers run
    only ckpt-migrate's own module-level functions, so the child is told of a bare ``__main__``.
    """
    real = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if real is not None:
            sys.modules["__main__"] = real


class LocalExecutor:
    """``jobs`` worker processes on this machine (spawned, so no state leaks between them).

    Each worker handles one file at a time; the parent knows which file every worker holds, so a
    worker that dies fails exactly that file and is replaced. ``function`` (a module-level
    callable, default :func:`~ckpt_migrate.batch.worker.run_task`) is what workers run on each
    task. A file still running after ``file_timeout`` seconds has its worker killed and fails with
    a message naming the limit. Workers idle at the end of a run stay up for the next one (the
    survey of a batch, then its conversions) until :meth:`close`.

    Raises:
        UsageError: ``jobs`` is below 1, or ``file_timeout`` is not positive.
    """

    name = "local"

    def __init__(self, jobs: int = 1, function: Callable[[dict[str, Any]], dict[str, Any]] = run_task,
                 file_timeout: float = DEFAULT_FILE_TIMEOUT, prepare: Callable[[], None] | None = None) -> None:
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        if not file_timeout > 0:
            raise UsageError(f"--file-timeout must be a positive number of seconds, got {file_timeout}")
        self.jobs = jobs
        self.function = function
        self.file_timeout = float(file_timeout)
        import multiprocessing

        self.context = multiprocessing.get_context("spawn")
        self.prepare = prepare
        self.started: list[_Worker] = []

    def start(self) -> None:
        """Start the workers now, so they start up (and ``prepare``) while the caller plans the batch."""
        while len(self.started) < self.jobs:
            self.started.append(self._start())

    def close(self) -> None:
        """Stop workers started by :meth:`start` that no run took."""
        while self.started:
            self._stop(self.started.pop())

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(child, self.function, self.prepare), daemon=True, name="ckpt-migrate-worker")
        with _caller_main_hidden():
            process.start()
        child.close()
        return _Worker(process, parent)

    def run(self, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from multiprocessing.connection import wait as wait_for

        queue = deque(tasks)
        count = min(self.jobs, len(queue))
        workers, self.started = self.started[:count], self.started[count:]
        self.close()
        workers += [self._start() for _ in range(count - len(workers))]
        try:
            for worker in workers:
                self._assign(worker, queue)
            while any(w.tasks for w in workers):
                busy = [w for w in workers if w.tasks]
                remaining = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                wait_for([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=remaining)
                for index, worker in enumerate(workers):
                    while worker.tasks:
                        result = self._collect(worker, queue) or self._expire(worker, queue)
                        if result is None:
                            break
                        yield result
                    if not worker.process.is_alive():
                        self._stop(worker)
                        if queue:
                            worker = workers[index] = self._start()
                    self._assign(worker, queue)
        finally:
            for worker in workers:
                if not worker.tasks and worker.process.is_alive():
                    self.started.append(worker)
                else:
                    self._stop(worker)

    def _collect(self, worker: _Worker, queue: deque) -> dict[str, Any] | None:
        """The running task's result when it has come, or a crash result when the worker died.

        Tasks handed to a dead worker after the one it died on go back to the front of the queue.
        """
        try:
            if worker.conn.poll():
                result = worker.conn.recv()
                worker.tasks.popleft()
                worker.deadline = time.monotonic() + self.file_timeout
                return result
        except (EOFError, OSError):
            pass
        if worker.process.is_alive():
            return None
        worker.process.join(1)
        task = self._requeue_waiting(worker, queue)
        code = worker.process.exitcode
        why = f"the worker process was killed by signal {-code}" if code is not None and code < 0 else f"the worker process exited with code {code}"
        return crashed(task, f"{why} while converting this file (out of memory?)")

    def _expire(self, worker: _Worker, queue: deque) -> dict[str, Any] | None:
        """Kill a worker whose file ran past its deadline; the file fails, the batch goes on."""
        if not worker.tasks or time.monotonic() < worker.deadline:
            return None
        worker.process.kill()
        worker.process.join(5)
        task = self._requeue_waiting(worker, queue)
        return crashed(task, f"took longer than {self.file_timeout:g} s (--file-timeout); its worker was stopped")

    @staticmethod
    def _requeue_waiting(worker: _Worker, queue: deque) -> dict[str, Any]:
        """The task a stopped worker was running; the ones waiting behind it go back to the queue."""
        running = worker.tasks.popleft()
        queue.extendleft(reversed(worker.tasks))
        worker.tasks.clear()
        return running

    def _assign(self, worker: _Worker, queue: deque) -> None:
        """Keep the worker busy: a task when it is idle, and a small second one waiting behind its current one."""
        while queue and worker.process.is_alive() and len(worker.tasks) < 2:
            if worker.tasks and (queue[0].get("size") or 0) > PREFETCH_MAX_BYTES:
                return
            if not worker.tasks:
                worker.deadline = time.monotonic() + self.file_timeout
            worker.tasks.append(queue.popleft())
            worker.conn.send(worker.tasks[-1])

    @staticmethod
    def _stop(worker: _Worker) -> None:
        try:
            if worker.process.is_alive():
                worker.conn.send(None)
        except (OSError, ValueError):
            pass
        worker.process.join(5)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(5)
        worker.conn.close()


class RayExecutor:
    """One Ray task per file, results streamed back with ``ray.wait`` as they finish.

    Connects to ``address`` (``auto``, ``ray://host:10001``…) or starts a local Ray instance when
    none is given and none is running; a Ray runtime this executor started is shut down after.
    Workers write outputs themselves: on a multi-node cluster DST must be shared storage (an
    ``s3://`` URL, a network file system) and ckpt-migrate installed on every node.

    Raises:
        MissingDependencyError: Ray is not installed.
        CkptMigrateError: the cluster cannot be reached (raised when the run starts).
    """

    name = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None, window: int | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MissingDependencyError("--executor ray needs Ray, which is not installed; run: pip install ckpt-migrate[ray]") from None
        self.address = address
        self.jobs = jobs
        self.window = window

    def start(self) -> None:
        """Nothing to start early: Ray is started or reached when the run starts."""

    def close(self) -> None:
        """Nothing to stop: :meth:`run` shuts down what it started."""

    def run(self, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        import ray

        started_here = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                options["address"] = self.address
            elif self.jobs:
                options["num_cpus"] = self.jobs
            try:
                ray.init(**options)
            except Exception as error:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise CkptMigrateError(f"cannot start or reach {where}: {type(error).__name__}: {error}") from None
            started_here = True
        try:
            remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
            window = self.window or max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
            queue = deque(tasks)
            pending: dict[Any, dict[str, Any]] = {}
            while queue or pending:
                while queue and len(pending) < window:
                    task = queue.popleft()
                    pending[remote.remote(task)] = task
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as error:  # noqa: BLE001 - a lost task fails its file only
                        yield crashed(task, f"the Ray task failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        finally:
            if started_here:
                ray.shutdown()


def make_executor(name: str, *, jobs: int = 1, ray_address: str | None = None, file_timeout: float = DEFAULT_FILE_TIMEOUT) -> Any:
    """The executor called ``name`` (``local``, ``ray`` or ``inline``).

    ``file_timeout`` applies to local worker processes (the inline executor runs in the caller's
    process and has none; on Ray, set task limits in the cluster).

    Raises:
        UsageError: an unknown name, a bad ``jobs`` or a bad ``file_timeout``.
        MissingDependencyError: ``ray`` without Ray installed.
    """
    if name == "local":
        return LocalExecutor(jobs, file_timeout=file_timeout, prepare=prepare)
    if name == "ray":
        return RayExecutor(ray_address, jobs if jobs > 1 else None)
    if name == "inline":
        return InlineExecutor()
    raise UsageError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
