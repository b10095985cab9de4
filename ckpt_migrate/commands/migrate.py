"""``ckpt-migrate migrate SRC_DIR DST_DIR --to FORMAT``."""

from __future__ import annotations

from typing import Any

import click

from ckpt_migrate.errors import UsageError
from ckpt_migrate.commands.common import console, convert_flags, convert_options_from, emit_json, fail, handle_errors


@click.command("migrate")
@click.argument("src_dir")
@click.argument("dst_dir")
@click.option("--to", "to", metavar="FORMAT", required=True, help="Writer name: safetensors, onnx, normalized, dcp.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes (local executor), CPUs of a local Ray instance.")
@click.option("--dry-run", is_flag=True, help="Print the plan (source, format, kind, destination, action) and write nothing.")
@click.option("--report", "report_path", metavar="FILE", help="Write the JSON report to FILE (a path or fsspec URL).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Run conversions in local processes or as Ray tasks.")
@click.option("--ray-address", metavar="ADDR", help="Ray cluster to connect to (auto, ray://host:10001); default: a local Ray instance.")
@click.option("--checkpoints-only", is_flag=True, help="Convert checkpoints only; skip other files instead of copying them.")
@click.option("--no-fsync", "no_fsync", is_flag=True, help="Do not fsync outputs before recording them (faster; a power loss may lose recent files).")
@click.option("--file-timeout", type=click.FloatRange(min=0, min_open=True), default=3600, show_default=True, metavar="SECONDS",
              help="Stop a file that takes longer in its worker and record it as failed; the batch goes on.")
@convert_flags("read", "calls", "transform", "onnx", "write")
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, one line per file otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the report (or, with --dry-run, the plan) as one JSON document.")
@handle_errors
def command(src_dir: str, dst_dir: str, to: str, jobs: int, dry_run: bool, report_path: str | None, executor: str,
            ray_address: str | None, checkpoints_only: bool, no_fsync: bool, file_timeout: float, quiet: bool, as_json: bool, **params: Any) -> None:
    """Convert every checkpoint under SRC_DIR into a mirrored tree under DST_DIR, verified and resumable.

    Files are recognised by content. Checkpoints are converted; every other file (configs,
    tokenizer files, model cards, images) is copied byte for byte and verified, unless
    --checkpoints-only. Hugging Face folders come out as save_pretrained writes them
    (model.safetensors, shards + index); Trainer state becomes weights-only torch files and
    training_args.json. Each file is handled in isolation, so a corrupt or refused file is
    recorded and the batch goes on.
    DST_DIR keeps a manifest: running the same command again skips what is done and unchanged
    and finishes the rest, even after a crash. SRC_DIR and DST_DIR may be fsspec URLs (s3://…).

    Exit codes: 0 all converted (or up to date), 1 some file failed, 3 some file was refused as
    unsafe, 2 usage error.
    """
    from ckpt_migrate.batch import migrate
    from ckpt_migrate.batch.progress import render_plan, render_summary, reporter_for

    if ray_address and executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    options = convert_options_from(dict(params, to=to))
    report = migrate(src_dir, dst_dir, options, jobs=jobs, executor=executor, ray_address=ray_address, dry_run=dry_run,
                     report=report_path, progress=reporter_for(quiet=dry_run or quiet), checkpoints_only=checkpoints_only, fsync=not no_fsync,
                     file_timeout=file_timeout)
    if as_json:
        emit_json(report.to_dict())
    elif dry_run:
        render_plan(report, console())
    else:
        render_summary(report, console())
    code = report.exit_code
    if code:
        counts = report.counts
        parts = [f"{counts[s]} {'refused as unsafe' if s == 'refused' else s}" for s in ("refused", "failed") if counts.get(s)]
        fail(f"{' and '.join(parts)} of {len(report.files)} files in {src_dir}"
             f"{'; see ' + report_path if report_path else '; rerun with --report FILE for details'}", code)
