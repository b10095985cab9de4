"""Convert one file of a batch; runs in a worker process, a Ray task, or in-process.

Everything crosses process boundaries as plain dicts. A worker never raises for a bad file: it
returns a result whose ``status`` is ``done``, ``failed`` or ``refused`` (the file calls something
outside the allowlist), so one bad file never stops the batch.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from typing import Any

from ckpt_migrate.io.atomic import temp_stem
from ckpt_migrate.io.hashing import file_sha256
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.errors import CkptMigrateError, OutputExistsError, VerificationError
from ckpt_migrate.io.trees import Tree


def convert_one(task: dict[str, Any]) -> dict[str, Any]:
    """Convert ``task["src"]`` to ``task["destination"]`` under ``task["dst_root"]``; report what happened.

    Remote destinations are converted to a local temporary file first, uploaded under a temporary
    key, checked (size and sha256 read back) and only then moved to the final name.
    """
    started = time.perf_counter()
    result: dict[str, Any] = {"source": task["rel"], "index": task.get("index"), "output": task["destination"], "options": task.get("options")}
    try:
        result.update(_convert(task))
        result["status"] = "done"
    except CkptMigrateError as error:
        result.update(status="refused" if error.exit_code == 3 else "failed", error=_one_line(str(error)), exit_code=error.exit_code)
    except MemoryError:
        result.update(status="failed", error=f"{task['src']}: out of memory while converting", exit_code=1)
    except Exception as error:  # noqa: BLE001 - per-file isolation: any failure is this file's result, not the batch's
        result.update(status="failed", error=_one_line(f"{task['src']}: {type(error).__name__}: {error}"), exit_code=1)
    if result["status"] != "done":
        result.pop("output", None)
        if "sha256" not in result:
            try:
                from ckpt_migrate.io.source import Source

                result["sha256"] = Source(task["src"]).sha256()
            except Exception:  # noqa: BLE001 - the hash is informative for a failed file
                pass
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


def prepare() -> None:
    """Import what converting a file needs, once, when a worker starts (while the parent still plans the batch)."""
    import ckpt_migrate.api  # noqa: F401 - imported for its side effect: the modules are loaded
    import ckpt_migrate.converters.registry as registry

    for name in registry.READERS.names():
        registry.READERS.get(name)
    for name in registry.list_writers():
        if name in ("safetensors", "normalized"):
            registry.get_writer(name)
    import ckpt_migrate.converters.writers.safetensors.stream  # noqa: F401


def crashed(task: dict[str, Any], why: str) -> dict[str, Any]:
    """The result for a file whose worker died (a hard crash, an OOM kill, a lost Ray task)."""
    return {"source": task["rel"], "index": task.get("index"), "options": task.get("options"), "status": "failed",
            "error": _one_line(f"{task['src']}: {why}"), "exit_code": 1, "seconds": 0.0}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _convert(task: dict[str, Any]) -> dict[str, Any]:
    from ckpt_migrate.batch.carry import check_no_links, copy_file

    tree = Tree(task["dst_root"])
    role = task.get("role", "convert")
    result: dict[str, Any] = {"role": role}
    if role == "copy":
        return {**result, **copy_file(task["src"], tree, task["destination"], overwrite=task.get("overwrite", False),
                                     fsync=task.get("fsync", True))}
    for rel in task.get("outputs") or [task["destination"]]:
        check_no_links(tree, rel)
    if role == "state":
        return {**result, **_rewrite_state(task, tree)}
    if role == "hf-shards":
        return {**result, **_convert_shards(task, tree)}
    return {**result, **_convert_file(task, tree)}


def _rewrite_state(task: dict[str, Any], tree: Tree) -> dict[str, Any]:
    from ckpt_migrate.bundle.trainer_files import rewrite

    options = task["convert"]
    kwargs = {"allow_calls": options.allow_calls, "verify": options.verify, "fsync": task.get("fsync", True)}
    if tree.local:
        found = rewrite(task["src"], tree.path(task["destination"]), force=task.get("overwrite", False), **kwargs)
        if task.get("fsync", True):
            from ckpt_migrate.io.durability import sync_outputs

            sync_outputs([tree.path(task["destination"])])
        digest = tree.sha256(task["destination"])
    else:
        if tree.exists(task["destination"]) and not task.get("overwrite", False):
            raise OutputExistsError("already exists; pass --force to overwrite it", path=tree.url_of(task["destination"]))
        staging = tempfile.mkdtemp(prefix="ckpt-migrate-")
        try:
            local = os.path.join(staging, posixpath.basename(task["destination"]))
            found = rewrite(task["src"], local, force=True, **kwargs)
            digest = upload(local, tree, task["destination"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    size, mtime = tree.stat(task["destination"]) or (0, 0.0)
    from ckpt_migrate.io.source import Source

    return {**found, "sha256": Source(task["src"]).sha256(), "output_size": size, "output_mtime": mtime,
            "output_sha256": digest, "verified": task["convert"].verify}


def _convert_shards(task: dict[str, Any], tree: Tree) -> dict[str, Any]:
    """A ``.bin`` index and its shards → the safetensors files and index beside them in DST."""
    from ckpt_migrate.api import convert
    from ckpt_migrate.io.durability import sync_outputs

    folder = posixpath.dirname(task["destination"])
    outputs = list(task.get("outputs") or [task["destination"]])
    if tree.local:
        converted = convert(task["src"], tree.path(folder), task["convert"], force=task.get("overwrite", False))
        if task.get("fsync", True):
            sync_outputs([tree.path(rel) for rel in outputs])
    else:
        existing = [rel for rel in outputs if tree.exists(rel)]
        if existing and not task.get("overwrite", False):
            raise OutputExistsError("already exists; pass --force to overwrite it", path=tree.url_of(existing[0]))
        staging = tempfile.mkdtemp(prefix="ckpt-migrate-")
        try:
            converted = convert(task["src"], staging, task["convert"], force=True)
            for rel in outputs:
                upload(os.path.join(staging, posixpath.basename(rel)), tree, rel)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    written = sorted(posixpath.basename(path) for path in converted.report.outputs)
    if written != sorted(posixpath.basename(rel) for rel in outputs):
        raise VerificationError(f"wrote {', '.join(written)}, expected {', '.join(posixpath.basename(r) for r in outputs)}", path=task["src"])
    return _described(converted, tree, task["destination"])


def _convert_file(task: dict[str, Any], tree: Tree) -> dict[str, Any]:
    from ckpt_migrate.api import convert
    from ckpt_migrate.io.durability import sync_outputs

    options = task["convert"]
    if tree.local:
        dst = tree.path(task["destination"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        converted = convert(task["src"], dst, options, force=task.get("overwrite", False))
        if task.get("fsync", True):
            sync_outputs([dst])
        return _described(converted, tree, task["destination"])
    if tree.exists(task["destination"]) and not task.get("overwrite", False):
        raise OutputExistsError("already exists; pass --force to overwrite it", path=tree.url_of(task["destination"]))
    staging = tempfile.mkdtemp(prefix="ckpt-migrate-")
    try:
        local = os.path.join(staging, posixpath.basename(task["destination"]))
        converted = convert(task["src"], local, options, force=True)
        upload(local, tree, task["destination"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _described(converted, tree, task["destination"])


def _described(converted: Any, tree: Tree, rel: str) -> dict[str, Any]:
    """The manifest fields of a finished conversion: provenance, kind, and the output's size, mtime and sha256."""
    size, mtime = tree.stat(rel) or (0, 0.0)
    digest = tree.sha256(rel)
    checkpoint = converted.checkpoint
    return {
        "sha256": converted.source_sha256,
        "reader": checkpoint.meta.get("reader"),
        "format": checkpoint.format,
        "kind": checkpoint.kind,
        "tensors": converted.report.tensors,
        "output_size": size,
        "output_mtime": mtime,
        "output_sha256": digest,
        "verified": converted.report.verified,
    }


def _local_files(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [""]
    found = []
    for folder, _, files in os.walk(path):
        for name in files:
            found.append(os.path.relpath(os.path.join(folder, name), path).replace(os.sep, "/"))
    return sorted(found)


def upload(local: str, tree: Tree, rel: str) -> str:
    """Copy a local file (or folder) to ``rel`` under a remote tree, never exposing a partial object.

    Each file goes to a temporary key beside its final name, is read back and compared (size and
    sha256), then moved to the final name. Returns the sha256 the tree reports for ``rel``.

    Raises:
        VerificationError: the uploaded bytes differ from the local file.
    """
    members = _local_files(local)
    if tree.exists(rel) and (members != [""] or tree.fs.isdir(tree.path(rel))):
        tree.remove(rel)
    digests = {}
    for member in members:
        source = os.path.join(local, *member.split("/")) if member else local
        target = f"{rel}/{member}" if member else rel
        folder, name = posixpath.split(target)
        temp = posixpath.join(folder, f"{temp_stem(name)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        expected = file_sha256(source)
        try:
            tree.fs.put_file(source, tree.path(temp))
            found = tree.stat(temp)
            if found is None or found[0] != os.path.getsize(source) or tree.sha256(temp) != expected:
                raise VerificationError("the uploaded copy differs from the converted file", path=tree.url_of(target))
            tree.fs.mv(tree.path(temp), tree.path(target))
        finally:
            tree.remove(temp)
        digests[member] = expected
    if members == [""]:
        return digests[""]
    digest = hashlib.sha256()
    for member in members:
        digest.update(f"{member}\0{digests[member]}\n".encode())
    return digest.hexdigest()


def survey(url: str, options: ConvertOptions | None = None) -> dict[str, Any]:
    """Which reader claims a file and, with ``options`` (a dry run), what kind of checkpoint it is, opening it once.

    The kind comes from parsing the file's pickle (no tensor bytes are read) with the batch's
    ``select``, ``ema``, ``allow_calls`` and ``strict_calls``, so a dry run predicts what the
    conversion will do.

    Args:
        url: the file to look at.
        options: the batch's options; None to sniff only.

    Returns:
        A dict: ``checkpoint`` (a reader claims it, or it looks like a damaged checkpoint),
        ``reader``, ``reason`` (why it is not one, or what is wrong with it), and with ``options``
        ``kind`` (``refused`` for a file the conversion would refuse, ``?`` when it cannot be
        opened) and ``error`` (why).
    """
    import ckpt_migrate.converters.registry as registry
    from ckpt_migrate.errors import UnsupportedFormatError
    from ckpt_migrate.io.source import Source

    found: dict[str, Any] = {"checkpoint": True, "reader": None, "reason": None, "kind": None, "error": None}
    with Source(url) as source:
        try:
            reader = registry.sniff(source)
        except UnsupportedFormatError as error:
            return {**found, "checkpoint": False, "reason": error.message.split(" (tried readers")[0]}
        except CkptMigrateError as error:
            return _unopened(found, error.message, _one_line(str(error)), options)
        except OSError as error:
            return _unopened(found, f"cannot read: {error}", _one_line(f"{url}: cannot read: {error}"), options)
        except Exception as error:  # noqa: BLE001 - hostile bytes: the file will be tried and fail with its own message
            why = _one_line(f"cannot be sniffed: {type(error).__name__}: {error}")
            return _unopened(found, why, f"{url}: {why}", options)
        found["reader"] = reader.name
        if options is not None:
            found["kind"], found["error"] = _kind(source, reader, options)
    return found


def _unopened(found: dict[str, Any], reason: str, error: str, options: ConvertOptions | None) -> dict[str, Any]:
    """A survey of a file that looks like a checkpoint but no reader could open: kind ``?`` when probing."""
    return {**found, "reason": reason, "kind": "?" if options is not None else None, "error": error if options is not None else None}


def _kind(source: Any, reader: Any, options: ConvertOptions) -> tuple[str, str | None]:
    from ckpt_migrate.api import read_sniffed
    from ckpt_migrate.bundle.extract import Extraction, extract

    try:
        raw = read_sniffed(source, reader, allow_calls=options.allow_calls, collect_only=True, strict_calls=options.strict_calls)
        refused = [use.name for use in raw.globals.values() if use.verdict == "refused"]
        if refused:
            return "refused", f"{source.name}: refused: calls {', '.join(refused)}"
        found = Extraction(raw.root, {}, "state_dict") if raw.tensors_only else extract(raw.root, select=options.select, ema=options.ema,
                                                                                        fmt=raw.format)
        return found.kind, None
    except CkptMigrateError as error:
        return ("refused" if error.exit_code == 3 else "?"), _one_line(str(error))
    except Exception as error:  # noqa: BLE001 - a dry run reports, it does not stop
        return "?", _one_line(f"{source.name}: {type(error).__name__}: {error}")


def survey_files(task: dict[str, Any]) -> dict[str, Any]:
    """A worker's share of a batch's survey: :func:`survey` of each of ``task["urls"]``, in order.

    Args:
        task: ``rel`` (the first file, naming the task), ``urls`` and ``convert`` (the batch's
            options in a dry run, else None).

    Returns:
        ``{"source", "index", "status": "done", "surveys": [...]}``, one survey per URL.
    """
    options = task.get("convert")
    return {"source": task["rel"], "index": task.get("index"), "status": "done",
            "surveys": [survey(url, options) for url in task["urls"]]}


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """What a batch worker does with a task: survey files (``job`` ``survey``) or convert one.

    Args:
        task: a survey task (:func:`survey_files`) or a conversion task (:func:`convert_one`).

    Returns:
        The task's result dict; a conversion never raises for a bad file.
    """
    if task.get("job") == "survey":
        return survey_files(task)
    return convert_one(task)
