"""Shared fixtures: the deterministic fixture folder, built once per session in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "realworld"


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
