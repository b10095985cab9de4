"""``migrate`` mirrors whole model folders: every other file carried over, verified, resumable, and safe with links.

Non-checkpoint files are copied byte for byte and recorded in the manifest like conversions
(resume, ``--force``, ``--dry-run``, the report); ``--checkpoints-only`` skips them. Links out of
SRC are never followed, links inside it are reproduced as copies, FIFOs are skipped, and nothing
is written through a symlink inside DST.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpt_migrate.batch import migrate
from ckpt_migrate.batch.manifest import MANIFEST_NAME, parse
from ckpt_migrate.cli import main_group

sys.path.insert(0, str(Path(__file__).parent))
import helpers_hf as hf  # noqa: E402


def build(src: Path) -> dict[str, bytes]:
    """A small model repository: a checkpoint, tokenizer files, a card, an image, a nested config."""
    src.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(hf.Net().state_dict(), src / "weights.pt")
    return hf.write_carried(src)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}


def test_every_file_is_carried_over_verified_and_recorded(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    carried = build(src)
    report = migrate(src, dst, to="safetensors")
    assert report.exit_code == 0
    out = files_of(dst)
    assert set(out) == {*carried, "weights.safetensors"}
    for name, data in carried.items():
        assert out[name] == data, name
    assert report.counts["copied"] == len(carried) and report.counts["converted"] == 1 and report.counts["skipped"] == 0
    latest, bad = parse((dst / MANIFEST_NAME).read_text())
    assert bad == 0 and latest["README.md"]["status"] == "done" and latest["README.md"]["output"] == "README.md"
    assert latest["README.md"]["output_sha256"] == latest["README.md"]["sha256"]

    again = migrate(src, dst, to="safetensors")
    assert again.counts["up-to-date"] == len(carried) + 1 and again.counts["copied"] == 0
    (src / "README.md").write_bytes(b"# changed card\n")
    third = migrate(src, dst, to="safetensors")
    assert [f.source for f in third.files if f.status == "copied"] == ["README.md"]
    assert (dst / "README.md").read_bytes() == b"# changed card\n"
    forced = migrate(src, dst, to="safetensors", force=True)
    assert forced.counts["copied"] == len(carried) and forced.counts["converted"] == 1


def test_dry_run_plans_copies_and_checkpoints_only_skips_them(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    carried = build(src)
    result = CliRunner().invoke(main_group, ["migrate", str(src), str(dst), "--to", "safetensors", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["source"]: row for row in json.loads(result.stdout)["files"]}
    assert rows["README.md"]["action"] == "copy" and rows["README.md"]["destination"] == "README.md"
    assert rows["weights.pt"]["action"] == "convert"
    assert not dst.exists()
    only = migrate(src, dst, to="safetensors", checkpoints_only=True)
    assert set(files_of(dst)) == {"weights.safetensors"}
    assert only.counts["skipped"] == len(carried)


def test_links_fifos_and_symlinks_inside_dst(tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "out", tmp_path / "outside"
    build(src)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not yours")
    os.symlink(outside / "secret.txt", src / "link_out.txt")
    os.symlink("README.md", src / "link_in.md")
    os.mkfifo(src / "pipe")
    report = migrate(src, dst, to="safetensors")
    by_source = {f.source: f for f in report.files}
    assert by_source["link_out.txt"].status == "skipped" and "out of the source folder" in by_source["link_out.txt"].reason
    assert by_source["pipe"].status == "skipped" and "not a regular file" in by_source["pipe"].reason
    assert by_source["link_in.md"].status == "copied"
    assert not (dst / "link_in.md").is_symlink() and (dst / "link_in.md").read_bytes() == (src / "README.md").read_bytes()
    assert not (dst / "link_out.txt").exists() and not (dst / "pipe").exists()
    assert report.exit_code == 0

    trap = tmp_path / "trap"
    trap.mkdir()
    dst2 = tmp_path / "out2"
    dst2.mkdir()
    os.symlink(trap, dst2 / "images")
    second = migrate(src, dst2, to="safetensors")
    failed = {f.source: f for f in second.files if f.status == "failed"}
    assert "images/diagram.png" in failed and "symlink" in failed["images/diagram.png"].error
    assert list(trap.iterdir()) == []
    assert second.exit_code == 1


def test_existing_file_not_ours_needs_force(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    build(src)
    dst.mkdir()
    (dst / "README.md").write_bytes(b"mine")
    report = migrate(src, dst, to="safetensors")
    entry = next(f for f in report.files if f.source == "README.md")
    assert entry.status == "failed" and "--force" in entry.error and (dst / "README.md").read_bytes() == b"mine"
    assert migrate(src, dst, to="safetensors", force=True).exit_code == 0
    assert (dst / "README.md").read_bytes() == (src / "README.md").read_bytes()


@pytest.mark.parametrize("jobs", [2])
def test_parallel_workers_copy_and_convert(tmp_path: Path, jobs: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    carried = build(src)
    report = migrate(src, dst, to="safetensors", jobs=jobs)
    assert report.exit_code == 0 and report.counts["copied"] == len(carried)


def test_a_source_file_named_like_the_manifest_is_not_copied_over_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    build(src)
    (src / MANIFEST_NAME).write_text('{"source": "weights.pt", "status": "done"}\n')
    report = migrate(src, dst, to="safetensors")
    entry = next(f for f in report.files if f.source == MANIFEST_NAME)
    assert entry.status == "skipped" and "manifest" in entry.reason
    latest, _ = parse((dst / MANIFEST_NAME).read_text())
    assert latest["weights.pt"]["output"] == "weights.safetensors"


def test_outputs_are_durable_before_their_manifest_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_migrate.batch.runner as runner
    from ckpt_migrate.batch.manifest import Manifest

    src, dst = tmp_path / "src", tmp_path / "out"
    build(src)
    events: list[tuple[str, object]] = []
    real_durable, real_append = runner.make_durable, Manifest.append

    def durable(paths: object, root: str) -> None:
        paths = [os.path.realpath(p) for p in paths]  # type: ignore[union-attr]
        real_durable(paths, root)
        events.append(("durable", set(paths)))

    def append(self: Manifest, records: object) -> None:
        records = list(records)  # type: ignore[arg-type]
        events.extend(("record", r["output"]) for r in records if r.get("status") == "done")
        real_append(self, records)

    monkeypatch.setattr(runner, "make_durable", durable)
    monkeypatch.setattr(Manifest, "append", append)
    assert migrate(src, dst, to="safetensors", executor="inline").exit_code == 0
    recorded = [(i, rel) for i, (kind, rel) in enumerate(events) if kind == "record"]
    assert len(recorded) == len(hf.CARRIED) + 1
    for index, rel in recorded:
        target = os.path.realpath(dst / rel)  # type: ignore[operator]
        assert any(kind == "durable" and target in paths for kind, paths in events[:index]), rel  # type: ignore[operator]
    assert sum(kind == "durable" for kind, _ in events) < len(recorded), "outputs are made durable in batches"
    events.clear()
    migrate(src, tmp_path / "fast", to="safetensors", executor="inline", fsync=False)
    assert not [e for e in events if e[0] == "durable"]


def test_durability_falls_back_to_fsync_of_each_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_migrate.io.durability as durability

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"a")
    assert durability._syncfs(str(tmp_path)) is True
    synced: list[str] = []
    monkeypatch.setattr(durability, "_syncfs", lambda root: False)
    real = durability.fsync_path
    monkeypatch.setattr(durability, "fsync_path", lambda path: (synced.append(path), real(path))[1])
    durability.make_durable([str(tmp_path / "sub" / "a.bin")], str(tmp_path))
    assert synced == [str(tmp_path / "sub" / "a.bin"), str(tmp_path / "sub")]
