"""``migrate`` on trees of many files: what a rerun costs, and what the manifest holds in memory.

A rerun over a finished tree reads the manifest and stats the files; it rewrites nothing when
nothing changed. Records are held compactly, so a manifest of 10⁵ records fits in tens of MiB.
Memory is measured with ``tracemalloc`` (the allocations themselves, not a timer).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import torch

from ckpt_migrate.batch import migrate
from ckpt_migrate.batch.manifest import MANIFEST_NAME, Manifest, Record, parse
from ckpt_migrate.io.trees import Tree


def _tree(root: Path, count: int) -> Path:
    generator = torch.Generator().manual_seed(5)
    for index in range(count):
        folder = root / f"d{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.randn(3, 2, generator=generator)}, folder / f"m{index}.pt")
    return root


def _record(index: int) -> dict[str, object]:
    digest = f"{index:064x}"
    return {"source": f"folder{index // 1000}/model{index}.pt", "size": 40_000 + index, "mtime": 1_700_000_000.5 + index,
            "sha256": digest, "output": f"folder{index // 1000}/model{index}.safetensors", "output_size": 39_000 + index,
            "output_mtime": 1_700_000_100.25 + index, "output_sha256": digest[::-1], "status": "done", "reader": "torch-zip",
            "format": "torch-zip", "kind": "state_dict", "tensors": 8, "seconds": 0.0123, "options": "6971a006b34d4da7",
            "time": "2026-11-30T21:15:15+0000", "v": 1}


def test_a_rerun_with_nothing_to_do_leaves_the_manifest_untouched(tmp_path: Path) -> None:
    src, dst = _tree(tmp_path / "src", 6), tmp_path / "dst"
    first = migrate(src, dst, jobs=1)
    assert first.counts["converted"] == 6
    second = migrate(src, dst, jobs=1)
    assert second.counts["up-to-date"] == 6
    manifest = dst / MANIFEST_NAME
    before = (manifest.stat().st_ino, manifest.stat().st_mtime_ns, manifest.read_bytes())
    third = migrate(src, dst, jobs=1)
    assert third.counts["up-to-date"] == 6 and third.exit_code == 0
    assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns, manifest.read_bytes()) == before
    lines = manifest.read_text().splitlines()
    assert len(lines) == 6 and {json.loads(line)["status"] for line in lines} == {"done"}


def test_superseded_and_torn_lines_are_compacted_and_unknown_fields_kept(tmp_path: Path) -> None:
    src, dst = _tree(tmp_path / "src", 3), tmp_path / "dst"
    migrate(src, dst, jobs=1)
    manifest = dst / MANIFEST_NAME
    records = list({r["source"]: r for r in map(json.loads, manifest.read_text().splitlines())}.values())
    records[0]["written_by_a_later_version"] = {"note": "kept"}
    text = "".join(json.dumps(r) + "\n" for r in records)
    manifest.write_text(text + json.dumps({**records[1], "status": "started"}) + "\n" + json.dumps(records[1]) + "\n" + '{"source": "torn')
    loaded = Manifest(Tree(str(dst))).load()
    assert loaded.needs_compaction and loaded.superseded == 2 and loaded.unreadable == 1
    rerun = migrate(src, dst, jobs=1)
    assert rerun.counts["up-to-date"] == 3
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 3 and all(line["status"] == "done" for line in lines)
    assert next(line for line in lines if line["source"] == records[0]["source"])["written_by_a_later_version"] == {"note": "kept"}


def test_a_record_reads_like_the_mapping_it_was_made_from() -> None:
    fields = {**_record(7), "future_field": [1, 2]}
    record = Record(fields)
    assert record == fields and record.to_dict() == fields and set(record.keys()) == set(fields)
    assert record["status"] == "done" and record.get("error") is None and record.get("error", "none") == "none"
    assert "sha256" in record and "error" not in record
    parsed, bad = parse(json.dumps(fields) + "\n")
    assert parsed == {fields["source"]: fields} and bad == 0


def test_a_manifest_of_many_records_is_held_in_well_under_a_kilobyte_each() -> None:
    count = 20_000
    text = "".join(json.dumps(_record(index), sort_keys=True) + "\n" for index in range(count))
    per_line = len(text) / count
    tracemalloc.start()
    try:
        records, bad = parse(text)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bad == 0 and len(records) == count
    assert held / count < 1.5 * per_line < 1024, f"{held / count:.0f} bytes per record for lines of {per_line:.0f} bytes"
