"""What a user meets: errors that say what happened, exit codes, the API from a plain script, user code found like ``python -m``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ckpt_migrate
from ckpt_migrate.errors import CkptMigrateError, WriteFailedError

from conftest import ROOT, run_cli

MYNET = textwrap.dedent("""
    import torch.nn as nn

    class LeNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU())
            self.head = nn.Linear(6, 10)
""")


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.randn(64, 64), "b": torch.randn(64)}, path)
    return path


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_target_module_in_the_current_folder_is_found_like_python_m(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text(MYNET)
    state = {"features.0.weight": torch.zeros(6, 1, 5, 5), "features.0.bias": torch.zeros(6),
             "head.weight": torch.zeros(10, 6), "head.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "old.pt")
    result = run_cli("check", "old.pt", "--target", "mynet:LeNetV2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "load_state_dict(strict=True) would accept these weights" in result.stdout, result.stdout


def test_target_errors_name_the_flag_the_user_typed(tmp_path: Path, weights: Path) -> None:
    result = run_cli("check", str(weights), "--target", "nosuchmodule_xyz:Net", cwd=tmp_path)
    assert result.returncode == 1
    _no_traceback(result)
    assert "--target nosuchmodule_xyz:Net" in result.stderr and "--arch" not in result.stderr


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_full_disk_is_one_line_naming_the_output_and_leaves_no_temporary(tmp_path: Path, suffix: str, weights: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "from ckpt_migrate.cli import main\n"
            f"main(['convert', {str(weights)!r}, {str(out / ('x' + suffix))!r}])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr
    _no_traceback(result)
    assert str(out / ("x" + suffix)) in result.stderr
    assert "file too large" in result.stderr.lower() or "disk full" in result.stderr.lower()
    assert os.listdir(out) == []


def test_a_read_only_destination_raises_write_failed(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path / "ro") else real_access(path, mode))
    (tmp_path / "ro").mkdir()
    for suffix in (".safetensors", ".pt"):
        with pytest.raises(WriteFailedError, match="not writable"):
            ckpt_migrate.convert(weights, tmp_path / "ro" / f"x{suffix}")
    assert os.listdir(tmp_path / "ro") == []


def test_a_missing_destination_folder_is_not_created(tmp_path: Path, weights: Path) -> None:
    result = run_cli("convert", str(weights), str(tmp_path / "typo" / "deeper" / "x.safetensors"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    _no_traceback(result)
    assert not (tmp_path / "typo").exists()


def test_a_folder_where_a_file_is_expected_says_so(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    result = run_cli("convert", str(tmp_path / "folder"), str(tmp_path / "x.safetensors"))
    assert result.returncode == 1 and "is a folder" in result.stderr and "empty file" not in result.stderr
    _no_traceback(result)
    with pytest.raises(CkptMigrateError, match="is a folder"):
        ckpt_migrate.load(tmp_path / "folder")
    with pytest.raises(CkptMigrateError, match="no such file"):
        ckpt_migrate.load(tmp_path / "missing.pt")


def test_json_failures_print_one_json_document(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    result = run_cli("convert", str(bad), str(tmp_path / "x.safetensors"), "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["exit_code"] == 1 and document["path"] == str(bad) and document["error"]


def test_fp16_output_does_not_claim_bit_exact(tmp_path: Path, weights: Path) -> None:
    result = run_cli("convert", str(weights), str(tmp_path / "x.safetensors"), "--dtype", "fp16")
    assert result.returncode == 0, result.stderr
    assert "bit-exact" not in result.stdout or "after the cast" in result.stdout
    assert "float16" in result.stdout


def test_migrate_with_jobs_from_a_script_without_a_main_guard(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for index in range(3):
        torch.save({"w": torch.full((4,), float(index))}, src / f"m{index}.pt")
    script = tmp_path / "plain_script.py"
    script.write_text(textwrap.dedent(f"""
        import ckpt_migrate
        print("SCRIPT RAN", flush=True)
        report = ckpt_migrate.migrate({str(src)!r}, {str(tmp_path / 'out')!r}, to="safetensors", jobs=2)
        print("EXIT", report.exit_code, sorted(f.status for f in report.files), flush=True)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("SCRIPT RAN") == 1
    assert "EXIT 0 ['converted', 'converted', 'converted']" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_accepts_a_module_a_class_a_spec_and_a_path(tmp_path: Path) -> None:
    import torch.nn as nn

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

    model = Small()
    torch.save(model.state_dict(), tmp_path / "small.pt")
    for target in (model, Small, str(tmp_path / "small.pt")):
        result = ckpt_migrate.check(tmp_path / "small.pt", target)
        assert not result.failed and result.report.matched == ["fc.weight", "fc.bias"], target
    with pytest.raises(TypeError, match="target"):
        ckpt_migrate.check(tmp_path / "small.pt", 42)
