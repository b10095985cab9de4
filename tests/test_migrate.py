"""``ckpt-migrate migrate``: a generated model folder with every kind of file, local disk.

Covers correct outputs (bit-exact), the report and exit codes, dry runs that touch nothing,
resume through the manifest, a SIGKILL mid-way, parallel workers, and the pure planning rules.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpt_migrate.cli import main_group
from ckpt_migrate.batch import migrate
from ckpt_migrate.batch.executors import LocalExecutor, make_executor
from ckpt_migrate.batch.manifest import MANIFEST_NAME, parse
from ckpt_migrate.batch.plan import assign_destinations, natural_name

sys.path.insert(0, str(Path(__file__).parent))
import helpers_migrate_crash  # noqa: E402
import helpers_migrate_tree as trees  # noqa: E402
from conftest import ROOT  # noqa: E402

CONVERTED = 11


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("tree")
    expected = trees.build_tree(base / "src", base / "work")
    return base / "src", base / "work", expected


@pytest.fixture
def tree(built: tuple[Path, Path, dict], tmp_path: Path) -> tuple[Path, Path, dict]:
    src, work, expected = built
    copy = tmp_path / "models"
    shutil.copytree(src, copy, symlinks=True)
    return copy, work, expected


def run_cli(*args: str) -> object:
    return CliRunner().invoke(main_group, ["migrate", *args, "--checkpoints-only"], catch_exceptions=False)


def test_migrate_help_lists_every_flag() -> None:
    result = CliRunner().invoke(main_group, ["migrate", "--help"])
    assert result.exit_code == 0
    for flag in ("--to", "--jobs", "--dry-run", "--report", "--executor", "--ray-address", "--force", "--json", "--schema",
                 "--select", "--ema", "--dtype", "--strip-optimizer", "--arch", "--allow-call", "--trust-module"):
        assert flag in result.output


def test_tree_converts_bit_exact_with_report_and_exit_3(tree: tuple[Path, Path, dict], tmp_path: Path) -> None:
    src, work, expected = tree
    dst, report_path = tmp_path / "out", tmp_path / "report.json"
    before = trees.snapshot(src)
    result = run_cli(str(src), str(dst), "--to", "safetensors", "--jobs", "2", "--report", str(report_path))
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines()[-1] == f"ckpt-migrate: error: 2 refused as unsafe and 1 failed of 18 files in {src}; see {report_path}"
    assert "Traceback" not in result.stderr
    trees.assert_outputs_exact(dst, expected)
    assert not (work / "PWNED").exists()
    assert trees.snapshot(src) == before
    produced = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert produced == sorted([*expected, MANIFEST_NAME])
    assert trees.temporaries(dst) == []

    report = json.loads(report_path.read_text())
    assert report["exit_code"] == 3
    assert report["counts"] == {"converted": CONVERTED, "copied": 0, "up-to-date": 0, "skipped": 4, "failed": 1, "refused": 2}
    by_source = {entry["source"]: entry for entry in report["files"]}
    assert {s for s, e in by_source.items() if e["status"] == "skipped"} == trees.SKIPPED
    assert {s for s, e in by_source.items() if e["status"] == "failed"} == trees.FAILED
    assert {s for s, e in by_source.items() if e["status"] == "refused"} == trees.REFUSED
    assert by_source["link_out.pt"]["reason"] == "a symlink that points out of the source folder (not followed)"
    assert by_source["docs/figure.png"]["reason"] == "a PNG image"
    assert "os.system" in by_source["hostile/evil.pth"]["error"] and by_source["hostile/evil.pth"]["exit_code"] == 3
    assert "truncated" in by_source["corrupt/truncated.pt"]["error"]
    assert by_source["collide/a.pth"]["destination"] == "collide/a.pth.safetensors"
    assert by_source["collide/a.pt"]["destination"] == "collide/a.safetensors"
    kinds = {s: e.get("kind") for s, e in by_source.items() if e["status"] == "converted"}
    assert kinds["full/main_model.pt"] == kinds["full/lost_module.pt"] == "full_model"
    assert kinds["lightning/epoch=3-step=30.ckpt"] == "lightning"
    assert kinds["bundles/run1/checkpoint.pth"] == "bundle"
    assert by_source["legacy/old.pth"]["reader"] == "torch-legacy"
    assert by_source["hub/already.safetensors"]["reader"] == "safetensors"
    for entry in by_source.values():
        if entry["status"] == "converted":
            assert entry["output_sha256"] == trees.hashlib.sha256((dst / entry["destination"]).read_bytes()).hexdigest()

    latest, bad = parse((dst / MANIFEST_NAME).read_text())
    assert bad == 0
    assert {s: r["status"] for s, r in latest.items()} == {
        **{s: "done" for s, e in by_source.items() if e["status"] == "converted"},
        **{s: "failed" for s in trees.FAILED}, **{s: "refused" for s in trees.REFUSED}}
    record = latest["sd/tiny.pt"]
    assert record["sha256"] == trees.hashlib.sha256((src / "sd/tiny.pt").read_bytes()).hexdigest()
    assert record["size"] == (src / "sd/tiny.pt").stat().st_size and record["reader"] == "torch-zip" and record["seconds"] >= 0


def test_dry_run_touches_nothing_and_plans_every_file(tree: tuple[Path, Path, dict], tmp_path: Path) -> None:
    src, _, _ = tree
    dst = tmp_path / "out"
    before = trees.snapshot(src)
    result = run_cli(str(src), str(dst), "--to", "safetensors", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert not dst.exists()
    assert trees.snapshot(src) == before
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    rows = {entry["source"]: entry for entry in plan["files"]}
    assert len(rows) == 18
    assert rows["sd/tiny.pt"] == {"source": "sd/tiny.pt", "size": (src / "sd/tiny.pt").stat().st_size, "format": "torch-zip",
                                  "action": "convert", "status": "planned", "destination": "sd/tiny.safetensors",
                                  "kind": "state_dict", "exit_code": 0}
    assert rows["legacy/old.pth"]["format"] == "torch-legacy"
    assert rows["hostile/payload.pkl"]["kind"] == "refused" and rows["hostile/payload.pkl"]["action"] == "convert"
    assert rows["full/main_model.pt"]["kind"] == "full_model"
    assert rows["lightning/epoch=3-step=30.ckpt"]["kind"] == "lightning"
    assert rows["corrupt/truncated.pt"]["kind"] == "?" and "truncated" in rows["corrupt/truncated.pt"]["reason"]
    assert {s for s, e in rows.items() if e["action"] == "skip"} == trees.SKIPPED
    text = run_cli(str(src), str(dst), "--to", "safetensors", "--dry-run")
    assert text.exit_code == 0 and "nothing was written" in text.stdout and "collide/a.pth.safetensors" in text.stdout
    assert not dst.exists()


def test_second_run_skips_everything_then_redoes_what_changed(tree: tuple[Path, Path, dict], tmp_path: Path) -> None:
    src, _, expected = tree
    dst = tmp_path / "out"
    first = migrate(src, dst, to="safetensors", checkpoints_only=True)
    assert first.exit_code == 3 and first.counts["converted"] == CONVERTED
    stamps = {rel: (dst / rel).stat().st_mtime_ns for rel in expected}

    second = migrate(src, dst, to="safetensors", checkpoints_only=True)
    assert second.counts["converted"] == 0
    assert second.counts["up-to-date"] == CONVERTED
    assert second.exit_code == 3
    assert {rel: (dst / rel).stat().st_mtime_ns for rel in expected} == stamps

    torch.save(trees.tiny(42).state_dict(), src / "sd/tiny.pt")
    (dst / "legacy/old.safetensors").unlink()
    third = migrate(src, dst, to="safetensors", checkpoints_only=True)
    redone = sorted(e.source for e in third.files if e.status == "converted")
    assert redone == ["legacy/old.pth", "sd/tiny.pt"]
    trees.assert_outputs_exact(dst, {**expected, "sd/tiny.safetensors": trees.state_dict_copy(trees.tiny(42))})

    fourth = migrate(src, dst, to="safetensors", checkpoints_only=True, dtype="fp16")
    assert fourth.counts["converted"] == CONVERTED, "changing a transform option redoes every file"
    forced = migrate(src, dst, to="safetensors", checkpoints_only=True, dtype="fp16", force=True)
    assert forced.counts["converted"] == CONVERTED and forced.counts["up-to-date"] == 0


def test_existing_output_not_ours_needs_force(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    (src / "m").mkdir(parents=True)
    model = trees.tiny(3)
    torch.save(model.state_dict(), src / "m/net.pth")
    (dst / "m").mkdir(parents=True)
    (dst / "m/net.safetensors").write_bytes(b"someone else's file")
    result = run_cli(str(src), str(dst), "--to", "safetensors")
    assert result.exit_code == 1
    assert "already exists and was not written by this migration; pass --force" in result.stdout
    assert (dst / "m/net.safetensors").read_bytes() == b"someone else's file"
    result = run_cli(str(src), str(dst), "--to", "safetensors", "--force")
    assert result.exit_code == 0, result.output
    trees.assert_outputs_exact(dst, {"m/net.safetensors": trees.state_dict_copy(model)})


def test_sigkill_midway_then_rerun_completes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    expected = {}
    generator = torch.Generator().manual_seed(0)
    for index in range(24):
        folder = src / f"group{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {"w": torch.randn(256, 1024, generator=generator), "step": torch.tensor(index)}
        torch.save(state, folder / f"ckpt{index:02d}.pt")
        expected[f"group{index % 3}/ckpt{index:02d}.safetensors"] = state
    command = [sys.executable, "-m", "ckpt_migrate", "migrate", str(src), str(dst), "--to", "safetensors"]
    killer = (
        "import os, signal, sys\n"
        "from ckpt_migrate.batch import migrate\n"
        "from ckpt_migrate.batch.progress import Silent\n"
        "import ckpt_migrate.batch.runner as runner\n"
        "runner.DURABLE_BATCH = 1\n"
        "class KillAfterTwo(Silent):\n"
        "    count = 0\n"
        "    def advance(self, result, size):\n"
        "        self.count += 1\n"
        "        if self.count == 2:\n"
        "            os.killpg(os.getpid(), signal.SIGKILL)\n"
        f"migrate({str(src)!r}, {str(dst)!r}, to='safetensors', jobs=2, progress=KillAfterTwo())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", killer], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.wait(timeout=300) == -signal.SIGKILL
    manifest = dst / MANIFEST_NAME
    done_at_kill = manifest.read_text().count('"status": "done"')
    assert 2 <= done_at_kill < 24, "the run is killed by its own progress callback after its second result"
    with manifest.open("a") as handle:
        handle.write('{"source": "group0/ckpt00.pt", "status": "do')
    (dst / "group1").mkdir(exist_ok=True)
    (dst / "group1" / f".ckpt04.safetensors.ckpt-migrate-tmp-{process.pid}-deadbeef").write_bytes(b"partial")

    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["counts"]["converted"] + report["counts"]["up-to-date"] == 24
    assert report["counts"]["up-to-date"] >= 2
    assert f"group1/.ckpt04.safetensors.ckpt-migrate-tmp-{process.pid}-deadbeef" in report["cleaned_temporaries"]
    trees.assert_outputs_exact(dst, expected)
    assert trees.temporaries(dst) == []
    assert not (dst / ".ckpt-migrate.lock").exists()
    latest, bad = parse(manifest.read_text())
    assert bad == 0 and len(latest) == 24 and {r["status"] for r in latest.values()} == {"done"}
    again = migrate(src, dst, to="safetensors", checkpoints_only=True)
    assert again.counts["up-to-date"] == 24 and again.exit_code == 0


def test_dst_inside_src_is_excluded_and_src_inside_dst_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "models"
    src.mkdir()
    torch.save(trees.tiny(1).state_dict(), src / "a.pt")
    report = migrate(src, src / "converted", to="safetensors", executor="inline")
    assert report.exit_code == 0 and [e.source for e in report.files] == ["a.pt"]
    assert migrate(src, src / "converted", to="safetensors", executor="inline").counts["up-to-date"] == 1
    result = run_cli(str(src / "converted"), str(src), "--to", "safetensors")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("DST_DIR is SRC_DIR or contains it; choose a destination outside the source tree")


def test_unknown_writer_and_missing_ray_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    result = run_cli(str(tmp_path / "src"), str(tmp_path / "out"), "--to", "tflite")
    assert result.exit_code == 2 and "--to 'tflite': no such writer; registered: safetensors" in result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run_cli(str(tmp_path / "src"), str(tmp_path / "out"), "--to", "safetensors", "--executor", "ray")
    assert result.exit_code == 1
    assert result.stderr.strip() == "ckpt-migrate: error: --executor ray needs Ray, which is not installed; run: pip install ckpt-migrate[ray]"
    assert not (tmp_path / "out").exists()


def test_a_worker_that_dies_fails_only_its_file() -> None:
    tasks = [{"rel": name, "src": name} for name in ("a", "b", "boom", "c", "d")]
    results = {r["source"]: r for r in LocalExecutor(2, function=helpers_migrate_crash.crash_or_echo).run(tasks)}
    assert sorted(results) == ["a", "b", "boom", "c", "d"]
    assert results["boom"]["status"] == "failed" and "killed by signal 9" in results["boom"]["error"]
    assert all(results[name]["status"] == "done" for name in "abcd")
    with pytest.raises(Exception, match="--jobs must be at least 1"):
        make_executor("local", jobs=0)


def test_files_waiting_behind_a_crash_or_a_timeout_on_the_same_worker_are_converted() -> None:
    tasks = [{"rel": name, "src": name, "index": i} for i, name in enumerate(["a", "boom", "b", "hang", "c", "d"])]
    executor = LocalExecutor(1, function=helpers_migrate_crash.crash_or_echo, file_timeout=2)
    order = [(r["source"], r["status"]) for r in executor.run(tasks)]
    assert order == [("a", "done"), ("boom", "failed"), ("b", "done"), ("hang", "failed"), ("c", "done"), ("d", "done")]


def test_a_large_file_waits_for_an_idle_worker_not_behind_another_file() -> None:
    import ckpt_migrate.batch.executors as executors

    big = executors.PREFETCH_MAX_BYTES + 1
    tasks = [{"rel": "slow", "src": "slow", "size": 10}, {"rel": "small", "src": "small", "size": 10},
             {"rel": "big", "src": "big", "size": big}]
    executor = LocalExecutor(1, function=helpers_migrate_crash.crash_or_echo)
    worker = executor._start()
    try:
        from collections import deque

        queue = deque(tasks)
        executor._assign(worker, queue)
        assert [t["rel"] for t in worker.tasks] == ["slow", "small"]
        worker.tasks.popleft()
        executor._assign(worker, queue)
        assert [t["rel"] for t in worker.tasks] == ["small"] and [t["rel"] for t in queue] == ["big"]
    finally:
        executor._stop(worker)


def test_workers_started_early_are_used_or_stopped() -> None:
    import multiprocessing

    executor = LocalExecutor(2, function=helpers_migrate_crash.crash_or_echo)
    executor.start()
    early = {worker.process.pid for worker in executor.started}
    results = list(executor.run([{"rel": "a", "src": "a"}, {"rel": "b", "src": "b"}]))
    assert {r["status"] for r in results} == {"done"} and {r["pid"] for r in results} <= early
    assert {worker.process.pid for worker in executor.started} == early
    again = list(executor.run([{"rel": "c", "src": "c"}]))
    assert again[0]["pid"] in early
    executor.close()
    assert executor.started == [] and multiprocessing.active_children() == []


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_survey_by_the_workers_says_what_this_process_says(tree: tuple[Path, Path, dict], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, dry_run: bool) -> None:
    import ckpt_migrate.batch.runner as runner

    src, _, _ = tree
    reports = {}
    for threshold in (10**9, 1):
        monkeypatch.setattr(runner, "SURVEY_CHUNK", 3)
        monkeypatch.setattr(runner, "SURVEY_IN_WORKERS_FROM", threshold)
        report = migrate(src, tmp_path / f"out{threshold}", to="safetensors", jobs=2, dry_run=dry_run, checkpoints_only=True)
        reports[threshold] = [(f.source, f.format, f.action, f.status, f.kind, f.reason) for f in report.files]
    assert reports[1] == reports[10**9]
    assert any("refused" in (status, kind) for _, _, _, status, kind, _ in reports[1])


def test_natural_names_and_collisions_are_deterministic() -> None:
    assert natural_name("runs/best.pth.tar", ".safetensors") == "runs/best.safetensors"
    assert natural_name("weights", ".safetensors") == "weights.safetensors"
    assert natural_name("model.v2", ".onnx") == "model.v2.onnx"
    assert natural_name("ckpt.PT", ".safetensors") == "ckpt.safetensors"
    sources = ["m/a.pth", "m/a.pt", "m/a.safetensors", "m/A.ckpt", "m/b.pt", "x.pt", "x.safetensors/y.pt", "m/a.pt.pt"]
    expected = {
        "m/a.safetensors": "m/a.safetensors",
        "m/a.pt.pt": "m/a.pt.safetensors",
        "m/A.ckpt": "m/A.ckpt.safetensors",
        "m/a.pt": "m/a.pt-2.safetensors",
        "m/a.pth": "m/a.pth.safetensors",
        "m/b.pt": "m/b.safetensors",
        "x.pt": "x.pt.safetensors",
        "x.safetensors/y.pt": "x.safetensors/y.safetensors",
    }
    for seed in range(5):
        shuffled = sources[:]
        random.Random(seed).shuffle(shuffled)
        assert assign_destinations(shuffled, ".safetensors") == expected
    assert assign_destinations(["a.pt", "a.pth"], ".safetensors") == {"a.pt": "a.safetensors", "a.pth": "a.pth.safetensors"}
    assert assign_destinations(["manifest.pt"], ".jsonl", reserved=["MANIFEST.jsonl"]) == {"manifest.pt": "manifest.pt.jsonl"}


def test_manifest_parse_ignores_a_torn_last_line() -> None:
    text = '{"source": "a.pt", "status": "started"}\n{"source": "a.pt", "status": "done"}\n{"source": "b.pt", "sta'
    latest, bad = parse(text)
    assert latest == {"a.pt": {"source": "a.pt", "status": "done"}} and bad == 1


def test_memory_urls_run_in_process_and_names_never_climb_out() -> None:
    import io
    import uuid

    import fsspec
    from safetensors.torch import load as load_safetensors

    fs = fsspec.filesystem("memory")
    root = f"/migrate-{uuid.uuid4().hex[:8]}"
    buffer = io.BytesIO()
    model = trees.tiny(12)
    torch.save(model.state_dict(), buffer)
    fs.pipe_file(f"{root}/src/m/net.pt", buffer.getvalue())
    fs.pipe_file(f"{root}/src/m/../../../escape.pt", buffer.getvalue())
    fs.pipe_file(f"{root}/src/.git/objects/ab/cdef", buffer.getvalue())
    fs.pipe_file(f"{root}/src/notes.txt", b"hello")
    report = migrate(f"memory://{root}/src", f"memory://{root}/dst", to="safetensors", jobs=2)
    assert report.executor == "inline" and report.exit_code == 0
    by_source = {e.source: e for e in report.files}
    assert sorted(by_source) == ["m/../../../escape.pt", "m/net.pt", "notes.txt"]
    assert by_source["m/../../../escape.pt"].status == "skipped" and "climb out" in by_source["m/../../../escape.pt"].reason
    assert by_source["m/net.pt"].status == "converted"
    assert sorted(fs.find(f"{root}/dst")) == [f"{root}/dst/{MANIFEST_NAME}", f"{root}/dst/m/net.safetensors", f"{root}/dst/notes.txt"]
    assert fs.cat_file(f"{root}/dst/notes.txt") == b"hello" and by_source["notes.txt"].status == "copied"
    loaded = load_safetensors(fs.cat_file(f"{root}/dst/m/net.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items()) and set(loaded) == set(model.state_dict())
    assert not [p for p in fs.find("/") if "escape" in p and not p.startswith(f"{root}/src")]
    assert migrate(f"memory://{root}/src", f"memory://{root}/dst", to="safetensors").counts["up-to-date"] == 2


def test_vcs_folders_are_not_walked_and_stale_temporaries_in_src_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".git/objects").mkdir(parents=True)
    torch.save(trees.tiny(1).state_dict(), src / ".git/objects/model.pt")
    torch.save(trees.tiny(2).state_dict(), src / "real.pt")
    (src / ".real.safetensors.ckpt-migrate-tmp-1-abcdef12").write_bytes(b"half")
    report = migrate(src, tmp_path / "out", to="safetensors", executor="inline")
    assert {e.source: e.status for e in report.files} == {"real.pt": "converted", ".real.safetensors.ckpt-migrate-tmp-1-abcdef12": "skipped"}
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST_NAME, "real.safetensors"]


def test_top_level_migrate_is_callable_after_the_package_is_imported(tmp_path: Path) -> None:
    import ckpt_migrate
    import ckpt_migrate.batch.plan  # noqa: F401 - binds the subpackage on its parent

    (tmp_path / "src").mkdir()
    torch.save(trees.tiny(4).state_dict(), tmp_path / "src/a.pt")
    report = ckpt_migrate.migrate(tmp_path / "src", tmp_path / "out", executor="inline")
    assert report.exit_code == 0 and report.counts["converted"] == 1
    assert (tmp_path / "out/a.safetensors").is_file()


def test_a_file_past_its_timeout_fails_alone_and_the_batch_goes_on() -> None:
    tasks = [{"rel": name, "src": name, "index": i} for i, name in enumerate(["a", "hang", "b", "c"])]
    executor = LocalExecutor(2, function=helpers_migrate_crash.crash_or_echo, file_timeout=2)
    results = {r["source"]: r for r in executor.run(tasks)}
    assert {name: r["status"] for name, r in results.items()} == {"a": "done", "hang": "failed", "b": "done", "c": "done"}
    assert "longer than 2 s (--file-timeout)" in results["hang"]["error"]


def test_file_timeout_must_be_positive(tmp_path: Path) -> None:
    result = run_cli(str(tmp_path), str(tmp_path / "out"), "--to", "safetensors", "--file-timeout", "0")
    assert result.exit_code == 2 and "--file-timeout" in result.output
