"""``migrate``: plan a folder tree, convert what needs it with an executor, keep the manifest.

The flow is one way: walk SRC → sniff each file by content → plan (destinations, resume
decisions) → dispatch ``convert`` tasks → record each result in DST's manifest as it arrives →
report. SRC is only ever read; a dry run reads DST's manifest and writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterator, Mapping, Sequence

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.converters.filenames import WRITER_SUFFIXES
from ckpt_migrate.errors import CkptMigrateError, UsageError
from ckpt_migrate.options import ConvertOptions
import ckpt_migrate.batch.layout as layout
import ckpt_migrate.batch.plan as planning
from ckpt_migrate.batch.executors import DEFAULT_FILE_TIMEOUT, make_executor
from ckpt_migrate.batch.manifest import LOCK_NAME, MANIFEST_NAME, Manifest
from ckpt_migrate.batch.progress import Reporter, Silent
from ckpt_migrate.batch.report import FileResult, MigrateReport
from ckpt_migrate.io.durability import make_durable
from ckpt_migrate.io.trees import Tree
from ckpt_migrate.batch.worker import survey


def writer_suffix(to: str, max_shard_size: str | None) -> str:
    """The suffix outputs get: the writer's first suffix; none for folder outputs (sharded, DCP).

    Raises:
        UsageError: no writer is registered under ``to``.
    """
    if to in WRITER_SUFFIXES:
        suffixes = WRITER_SUFFIXES[to]
    elif to in registry.list_writers():
        suffixes = getattr(registry.WRITERS.entries()[to].load(), "suffixes", ()) or ()
    else:
        raise UsageError(f"--to {to!r}: no such writer; registered: {', '.join(registry.list_writers())}")
    if max_shard_size and to == "safetensors":
        return ""
    return suffixes[0] if suffixes else ""


def options_key(options: ConvertOptions) -> str:
    """A digest of everything that shapes an output, so changing an option redoes the files.

    Schema files are hashed by content, so editing a schema redoes the batch too.
    """
    described = options.identity()
    schema_hashes = []
    for schema in options.schemas:
        if os.path.isfile(schema):
            with open(schema, "rb") as handle:
                schema_hashes.append(hashlib.sha256(handle.read()).hexdigest())
    described["schema_files"] = schema_hashes
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


SURVEY_CHUNK = 64
"""Files per survey task: enough that a worker's round trip costs little beside the work, few enough to share it evenly."""
SURVEY_IN_WORKERS_FROM = 256
"""A batch with at least this many files to sniff is surveyed by the local workers; a smaller one by this process."""


def _survey_all(src: Tree, entries: Sequence[Any], records: Mapping[str, Any], runner: Any,
                probe: ConvertOptions | None) -> tuple[dict[str, planning.Sniffed], dict[str, tuple[str | None, str | None]]]:
    """Each file's reader and, with ``probe`` (a dry run), its kind: ``(sniffed, kinds)``.

    An unchanged file's reader comes from its manifest record. The others are opened once each
    (:func:`~ckpt_migrate.batch.worker.survey`): by the local worker processes, a chunk of files per
    task, when there are many; else by this process, one after the other for local files (a sniff
    is a few reads from the page cache and Python work, which threads only slow down) and 16 at a
    time for remote ones, which wait on the network. A chunk whose worker dies is sniffed again
    here, without its kinds.
    """
    sniffed: dict[str, planning.Sniffed] = {}
    kinds: dict[str, tuple[str | None, str | None]] = {}
    todo = []
    for entry in entries:
        if entry.skip_reason is not None:
            continue
        record = records.get(entry.rel)
        if _describes(record, entry) and record.get("reader"):
            sniffed[entry.rel] = planning.Sniffed(True, record["reader"])
        else:
            todo.append(entry.rel)

    def take(rel: str, found: dict[str, Any]) -> None:
        sniffed[rel] = planning.Sniffed(found["checkpoint"], found["reader"], found["reason"])
        if found["kind"] is not None:
            kinds[rel] = (found["kind"], found["error"])

    if src.local and getattr(runner, "name", None) == "local" and len(todo) >= SURVEY_IN_WORKERS_FROM:
        chunks = [todo[start: start + SURVEY_CHUNK] for start in range(0, len(todo), SURVEY_CHUNK)]
        tasks = [{"job": "survey", "rel": chunk[0], "index": index, "size": 0, "urls": [src.url_of(rel) for rel in chunk], "convert": probe}
                 for index, chunk in enumerate(chunks)]
        by_first = {chunk[0]: chunk for chunk in chunks}
        for result in runner.run(tasks):
            chunk = by_first[result["source"]]
            for rel, found in zip(chunk, result.get("surveys") or [survey(src.url_of(rel)) for rel in chunk]):
                take(rel, found)
    elif src.local:
        for rel in todo:
            take(rel, survey(src.url_of(rel), probe))
    else:
        with ThreadPoolExecutor(max_workers=16) as pool:
            for rel, found in zip(todo, pool.map(lambda rel: survey(src.url_of(rel), probe), todo)):
                take(rel, found)
    return sniffed, kinds


def _describes(record: Mapping[str, Any] | None, entry: Any) -> bool:
    """True when a manifest record was made from the file as it is now (same size and modification time)."""
    return bool(record) and record.get("size") == entry.size and planning.same_time(record.get("mtime"), entry.mtime)


def _changed(entry: Any, records: Mapping[str, Any]) -> bool:
    """True when ``entry`` likely needs work: no successful record of it, or its size or mtime changed since."""
    if entry.skip_reason is not None:
        return False
    record = records.get(entry.rel)
    return not _describes(record, entry) or record.get("status") != "done"


@contextlib.contextmanager
def _locked(tree: Tree) -> Iterator[None]:
    """Hold DST's lock file so two runs never write the same tree at once (local trees only).

    Raises:
        CkptMigrateError: another live process holds the lock.
    """
    if not tree.local:
        yield
        return
    path = tree.path(LOCK_NAME)
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as existing:
                    pid = int(existing.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise CkptMigrateError(f"another migration (pid {pid}) is writing here; wait for it, or remove {LOCK_NAME} if it is gone",
                                       path=tree.root) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _file_result(item: planning.PlanItem, status: str) -> FileResult:
    return FileResult(item.source, item.size, item.format, item.action, status, item.destination, item.kind,
                      reason=item.reason, sha256=item.sha256)


def _write_report(path: str, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2, default=str) + "\n"
    if "://" in path and not path.startswith("file://"):
        import fsspec

        with fsspec.open(path, "w") as handle:
            handle.write(text)
        return
    path = path[len("file://"):] if path.startswith("file://") else path
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def migrate(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    options: ConvertOptions | None = None,
    *,
    jobs: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    dry_run: bool = False,
    report: str | None = None,
    progress: Reporter | None = None,
    probe_kinds: bool = True,
    checkpoints_only: bool = False,
    fsync: bool = True,
    file_timeout: float = DEFAULT_FILE_TIMEOUT,
    **convert_options: Any,
) -> MigrateReport:
    """Convert every checkpoint under ``src_dir`` into a mirrored tree under ``dst_dir``.

    Files are recognised by content; others are skipped and counted. Each file is converted by
    :func:`ckpt_migrate.api.convert` (atomic, verified) in isolation: a corrupt or refused file is
    recorded and the batch goes on. DST's manifest makes a rerun skip what is done and unchanged
    (``force`` redoes all); temporaries of interrupted runs are removed first. ``dry_run`` plans,
    probes each file's kind (``probe_kinds``) and touches nothing. Paths may be fsspec URLs.

    Args:
        src_dir: the tree to read (a folder or an fsspec URL); never modified.
        dst_dir: where the mirrored tree and its manifest go.
        options: the conversion options every file gets (``to`` defaults to safetensors); keyword
            arguments with :class:`~ckpt_migrate.options.ConvertOptions` field names override them.
        jobs: worker processes (local executor) or CPUs of a local Ray instance.
        executor: ``local`` or ``ray``.
        ray_address: the Ray cluster to connect to (executor ``ray`` only).
        dry_run: plan and report, write nothing.
        report: write the JSON report to this path or URL.
        progress: a reporter that is told of each file as it finishes.
        probe_kinds: with ``dry_run``, open each file to say what kind of checkpoint it is.
        file_timeout: seconds one file may take in a local worker before it is stopped and fails.
        checkpoints_only: convert checkpoints only; skip every other file instead of copying it.
        fsync: make each output (file and folder) durable before its manifest record is written.

    Returns:
        A :class:`MigrateReport` with one entry per file and the exit code the CLI uses.

    Raises:
        TypeError: an unknown keyword argument.
        UsageError: bad options, or SRC and DST overlap the wrong way (DST inside SRC is allowed).
        MissingDependencyError: ``executor="ray"`` without Ray, or a URL whose fsspec backend is missing.
        CkptMigrateError: SRC is not a folder, DST cannot be written, or another run holds DST.
    """
    started = time.perf_counter()
    options = ConvertOptions.from_kwargs(options, **convert_options)
    if options.to is None:
        options = replace(options, to="safetensors")
    to = options.to
    src_url, dst_url = os.fspath(src_dir), os.fspath(dst_dir)
    suffix = writer_suffix(to, options.max_shard_size)
    src, dst = Tree(src_url), Tree(dst_url)
    if dst.relative(src) is not None:
        raise UsageError("DST_DIR is SRC_DIR or contains it; choose a destination outside the source tree", path=dst_url)
    if src.in_process_only or dst.in_process_only:
        executor = "inline"
    surveying = dry_run and probe_kinds and executor == "local" and jobs > 1
    runner = make_executor(executor, jobs=jobs, ray_address=ray_address, file_timeout=file_timeout) if not dry_run or surveying else None
    force, key = options.force, options_key(options)
    with contextlib.ExitStack() as cleanup:
        if runner is not None:
            cleanup.callback(runner.close)
        manifest = Manifest(dst).load()
        entries = src.walk(exclude=src.relative(dst))
        if runner is not None and not dry_run and (force or any(_changed(entry, manifest.records) for entry in entries)):
            runner.start()
        sniffed, kinds = _survey_all(src, entries, manifest.records, runner, options if dry_run and probe_kinds else None)
        readable = [entry.rel for entry in entries if entry.skip_reason is None and not entry.folder]
        roles = layout.assign_roles(readable, {rel for rel in readable if sniffed[rel].checkpoint}, to=to,
                                    hf_layout=to == "safetensors" and not options.max_shard_size, read_text=src.read_text,
                                    checkpoints_only=checkpoints_only, suffix=suffix,
                                    folder_sources=[e.rel for e in entries if e.folder and e.skip_reason is None
                                                    and sniffed.get(e.rel) is not None and sniffed[e.rel].reader == "deepspeed"])
        items = planning.build_plan(
            entries, sniffed, suffix=suffix, options_key=key, records=manifest.records, dest_stat=dst.stat,
            source_sha256=src.sha256, dest_sha256=dst.sha256, force=force, reserved=(MANIFEST_NAME, LOCK_NAME), roles=roles,
        )
        outcome = MigrateReport(src_url, dst_url, to, dry_run, getattr(runner, "name", executor), jobs,
                                manifest=None if dry_run else dst.url_of(MANIFEST_NAME))
        if dry_run:
            for item in items:
                if probe_kinds and item.action in (planning.CONVERT, planning.EXISTS) and item.format and item.kind is None:
                    if item.source not in kinds:
                        found = survey(src.url_of(item.source), options)
                        kinds[item.source] = (found["kind"], found["error"])
                    item.kind, error = kinds[item.source]
                    if error and not item.reason:
                        item.reason = error
                status = {planning.SKIP: "skipped", planning.UP_TO_DATE: "up-to-date"}.get(item.action, "planned")
                outcome.files.append(_file_result(item, status))
        else:
            dst.makedirs()
            with _locked(dst):
                _execute(items, src, dst, manifest, runner, progress or Silent(), outcome, key, options, fsync)
        outcome.seconds = time.perf_counter() - started
        if report:
            _write_report(report, outcome.to_dict())
        return outcome


DURABLE_BATCH = 64
DURABLE_SECONDS = 0.25
DURABLE_ALONE = 16 << 20
"""Results are recorded in batches: up to 64 at a time, after a quarter of a second, at once for a file
of 16 MiB or more. Every output of a batch is made durable (one ``syncfs`` on a local DST) before its
records are appended, so a record never names an output a power loss could take away."""


def _execute(items: list[planning.PlanItem], src: Tree, dst: Tree, manifest: Manifest, runner: Any, progress: Reporter,
             outcome: MigrateReport, key: str, options: ConvertOptions, fsync: bool = True) -> None:
    for rel in sorted(dst.temporaries()):
        dst.remove(rel)
        outcome.cleaned.append(rel)
    if manifest.needs_compaction:
        manifest.compact()
    results: dict[str, FileResult] = {}
    for item in items:
        if item.action == planning.SKIP:
            results[item.source] = _file_result(item, "skipped")
        elif item.action == planning.UP_TO_DATE:
            results[item.source] = _file_result(item, "up-to-date")
        elif item.action == planning.EXISTS:
            entry = _file_result(item, "failed")
            entry.error, entry.exit_code = f"{dst.url_of(item.destination or '')}: {item.reason}", 1
            results[item.source] = entry
    todo = [item for item in items if item.action in planning.WORK]
    by_source = {item.source: item for item in todo}
    manifest.append({"source": item.source, "size": item.size, "mtime": item.mtime, "output": item.destination,
                     "status": "started", "options": key} for item in todo)
    manifest.flush()
    hf_options = replace(options, hf_layout=True)
    batch_durable = fsync and dst.local
    tasks = [{"index": index, "rel": item.source, "size": item.size, "src": src.url_of(item.source), "dst_root": dst.url, "destination": item.destination,
              "overwrite": item.overwrite, "options": key, "role": item.role, "outputs": item.outputs, "fsync": fsync and not batch_durable,
              "src_root": src.url, "members": item.members,
              "convert": _options_for(item, options, hf_options)}
             for index, item in enumerate(todo)]
    progress.start(len(todo), sum(item.size for item in todo))
    pending: list[tuple[planning.PlanItem, dict[str, Any]]] = []

    def record_pending() -> None:
        if batch_durable:
            make_durable([dst.path(rel) for item, result in pending if result.get("status") == "done"
                          for rel in (item.outputs or [item.destination]) if rel], dst.root)
        manifest.append([{**result, "size": item.size, "mtime": item.mtime} for item, result in pending])
        for item, result in pending:
            results[item.source] = _converted(item, result)
            progress.advance(result, item.size)
        pending.clear()

    try:
        oldest = 0.0
        for result in runner.run(tasks):
            item = by_source[result["source"]]
            if not pending:
                oldest = time.monotonic()
            pending.append((item, result))
            if len(pending) >= DURABLE_BATCH or item.size >= DURABLE_ALONE or time.monotonic() - oldest >= DURABLE_SECONDS:
                record_pending()
        record_pending()
    finally:
        progress.close()
        manifest.flush()
        for item in items:
            if item.action == planning.MEMBER:
                results[item.source] = _member_result(item, results.get(item.group or ""))
        outcome.files = [results[item.source] for item in items if item.source in results]


def _options_for(item: planning.PlanItem, options: ConvertOptions, hf_options: ConvertOptions) -> ConvertOptions:
    """The options one file is converted with: Hugging Face naming for HF weights, ``--tag`` for DeepSpeed folders only."""
    chosen = hf_options if item.role in (layout.HF_WEIGHTS, layout.HF_SHARDS) else options
    if chosen.tag is not None and item.format != "deepspeed":
        chosen = replace(chosen, tag=None)
    return chosen


def _member_result(item: planning.PlanItem, group: FileResult | None) -> FileResult:
    """A shard's result: its index's conversion (up to date, converted or failed with it)."""
    status = group.status if group is not None else "failed"
    entry = _file_result(item, status)
    entry.destination = group.destination if group is not None else None
    if status in ("failed", "refused"):
        entry.exit_code = 0
        entry.reason = f"not converted: its index {item.group} {status}"
        entry.status = "skipped"
    return entry


def _converted(item: planning.PlanItem, result: dict[str, Any]) -> FileResult:
    done = "copied" if item.role == layout.COPY else "converted"
    status = {"done": done, "refused": "refused"}.get(result.get("status", ""), "failed")
    return FileResult(
        item.source, item.size, item.format, item.action, status, item.destination,
        result.get("kind"), reason=item.reason if status not in ("converted", "copied") else None, error=result.get("error"),
        exit_code=int(result.get("exit_code") or 0), seconds=result.get("seconds"), sha256=result.get("sha256"),
        reader=result.get("reader") or (item.format if item.format != "?" else None), tensors=result.get("tensors"),
        output_size=result.get("output_size"), output_sha256=result.get("output_sha256"),
    )
