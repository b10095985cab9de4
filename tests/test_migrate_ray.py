"""``migrate --executor ray`` on a small local Ray instance: same outputs, manifest and resume."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from ckpt_migrate.cli import main_group  # noqa: E402
from ckpt_migrate.batch import migrate  # noqa: E402
from ckpt_migrate.batch.manifest import MANIFEST_NAME, parse  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import helpers_migrate_tree as trees  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_executor_converts_the_tree_and_resumes(local_ray: None, tmp_path: Path) -> None:
    src, dst, report_path = tmp_path / "src", tmp_path / "out", tmp_path / "report.json"
    expected = trees.build_tree(src, tmp_path / "work")
    before = trees.snapshot(src)
    result = CliRunner().invoke(main_group, ["migrate", str(src), str(dst), "--to", "safetensors", "--executor", "ray",
                                             "--report", str(report_path)], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    report = json.loads(report_path.read_text())
    assert report["executor"] == "ray"
    assert report["counts"] == {"converted": 11, "copied": 3, "up-to-date": 0, "skipped": 1, "failed": 1, "refused": 2}
    assert (dst / "README.md").read_bytes() == (src / "README.md").read_bytes()
    trees.assert_outputs_exact(dst, expected)
    assert trees.temporaries(dst) == []
    assert trees.snapshot(src) == before
    assert not (tmp_path / "work/PWNED").exists()
    latest, bad = parse((dst / MANIFEST_NAME).read_text())
    assert bad == 0 and sorted(s for s, r in latest.items() if r["status"] == "refused") == sorted(trees.REFUSED)
    assert ray.is_initialized(), "a Ray runtime the caller started is left running"

    again = migrate(src, dst, to="safetensors", executor="ray")
    assert again.counts["converted"] == 0 and again.counts["up-to-date"] == 14 and again.exit_code == 3

    shutil.rmtree(dst / "sd")
    third = migrate(src, dst, to="safetensors", executor="ray")
    assert [e.source for e in third.files if e.status == "converted"] == ["sd/tiny.pt"]
    trees.assert_outputs_exact(dst, expected)
