"""Shared fixtures: the deterministic fixture folder, built once per session in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
CORPUS = SHARED_CORPUS / "realworld"
IN_CI = os.environ.get("CI", "").lower() == "true"


WEIGHT_KINDS = {"full_model", "state_dict", "bundle", "lightning"}
"""Manifest kinds of corpus files that hold model weights."""


def corpus_manifest(folder: Path) -> list[dict[str, str]]:
    """The rows of a shared corpus's ``manifest.tsv`` (empty when the corpus is absent; :func:`check_corpus_present` fails under CI)."""
    import csv

    path = folder / "manifest.tsv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def corpus_mark(path: Path) -> pytest.MarkDecorator:
    """Skip tests of a missing shared corpus on a developer's machine; under CI (``CI=true``) run them, so they fail."""
    return pytest.mark.skipif(not path.exists() and not IN_CI, reason=f"{path} is not present (under CI=true this fails)")


def check_corpus_present(path: Path) -> None:
    """Fail under CI when the shared corpus is missing; skip elsewhere. Each corpus test module calls it from one test."""
    if path.exists():
        return
    if IN_CI:
        pytest.fail(f"{path} is missing; CI needs ../shared/corpus beside the clone")
    pytest.skip(f"{path} is not present")


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/models (the checkpoints) and OUT/expected (what each must yield), built by fixtures/make_fixtures.py."""
    out = tmp_path_factory.mktemp("fixtures")
    subprocess.run([sys.executable, str(ROOT / "fixtures" / "make_fixtures.py"), str(out / "models"), "--no-vgg"],
                   check=True, capture_output=True, cwd=out)
    return out


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ckpt_migrate ARGS`` in a fresh process and capture its output."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ckpt_migrate", *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)
