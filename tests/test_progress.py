"""Progress on long single-file work: rich lines on a terminal (a pseudo-terminal here), nothing in a pipe, with --json or --quiet."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MB state_dict (four 64 MB float32 tensors)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("progress") / "big.pt"
    torch.save({f"layer{i}.weight": torch.randn(4096, 4096) for i in range(4)}, path)
    return path


def run_in_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``python -m ckpt_migrate ARGS`` with stdin, stdout and stderr on a pseudo-terminal; return its exit code and transcript."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), TERM="xterm-256color", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "ckpt_migrate", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 600)
            if not ready:
                proc.kill()
                break
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def plain(transcript: str) -> str:
    return ANSI.sub("", transcript).replace("\r", "\n")


def test_convert_shows_phases_on_a_terminal(big: Path, tmp_path: Path) -> None:
    dst = tmp_path / "big.safetensors"
    code, transcript = run_in_terminal("convert", str(big), str(dst), cwd=tmp_path)
    text = plain(transcript)
    assert code == 0, text
    assert "reading big.pt" in text and "writing big.safetensors" in text, text
    assert "268.4 MB" in text, text
    assert "✓" in text and "verified bit-exact" in text
    expected = torch.load(big, weights_only=True)
    written = load_file(dst)
    assert all(torch.equal(written[k], v) for k, v in expected.items()) and list(written) == list(expected)


def test_normalized_and_cast_phases_on_a_terminal(big: Path, tmp_path: Path) -> None:
    dst = tmp_path / "big16.pt"
    code, transcript = run_in_terminal("convert", str(big), str(dst), "--dtype", "fp16", cwd=tmp_path)
    text = plain(transcript)
    assert code == 0, text
    assert "hashing big.pt" in text and "saving big16.pt" in text and "verifying big16.pt" in text, text
    loaded = torch.load(dst, weights_only=True)["model_state_dict"]
    expected = torch.load(big, weights_only=True)
    assert all(torch.equal(loaded[k], v.half()) for k, v in expected.items())


def test_inspect_shows_reading_on_a_terminal(big: Path, tmp_path: Path) -> None:
    code, transcript = run_in_terminal("inspect", str(big), cwd=tmp_path)
    text = plain(transcript)
    assert code == 0, text
    assert "reading big.pt" in text and "layer3.weight" in text


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_quiet_and_json_show_no_progress_on_a_terminal(big: Path, tmp_path: Path, flag: str) -> None:
    dst = tmp_path / "big.safetensors"
    code, transcript = run_in_terminal("convert", str(big), str(dst), flag, cwd=tmp_path)
    text = plain(transcript)
    assert code == 0, text
    assert "reading big.pt" not in text and "writing big.safetensors" not in text, text
    if flag == "--json":
        assert json.loads(transcript.replace("\r\n", "\n"))["tensors"] == 4
    assert dst.is_file()


def test_a_pipe_gets_only_the_result(big: Path, tmp_path: Path) -> None:
    dst = tmp_path / "big.safetensors"
    run = run_cli("convert", str(big), str(dst), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert len(lines) == 2, run.stdout
    assert lines[0] == f"✓ {big} → {dst}"
    assert lines[1].startswith("  torch-zip (state_dict) → safetensors: 4 tensors, 268.4 MB, verified bit-exact")
    inspected = run_cli("inspect", str(big), cwd=tmp_path)
    assert inspected.returncode == 0 and inspected.stderr == ""
    assert "reading" not in inspected.stdout


def test_the_library_is_silent_unless_given_a_reporter(big: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import ckpt_migrate
    from ckpt_migrate.reports import progress

    class Recorder(progress.ProgressReporter):
        def __init__(self) -> None:
            self.phases: list[tuple[str, int | None]] = []
            self.done: dict[str, int] = {}

        def phase(self, label: str, total: int | None = None, unit: str = "bytes") -> progress.Phase:
            self.phases.append((label, total))
            recorder = self

            class Counted(progress.Phase):
                def advance(self, amount: int = 1) -> None:
                    recorder.done[label] = recorder.done.get(label, 0) + amount

            return Counted()

    ckpt_migrate.convert(big, tmp_path / "silent.safetensors")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    recorder = Recorder()
    ckpt_migrate.convert(big, tmp_path / "told.safetensors", progress=recorder)
    labels = [label for label, _ in recorder.phases]
    assert labels[0] == "reading big.pt"
    writing = dict(recorder.phases)["writing told.safetensors"]
    assert writing == 4 * 4096 * 4096 * 4 and recorder.done["writing told.safetensors"] == writing
    assert progress.current() is progress.SILENT


def test_migrate_quiet_silences_its_per_file_lines(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (tmp_path / "src").mkdir()
    torch.save({"w": torch.randn(8, 8)}, tmp_path / "src" / "a.pt")
    loud = run_cli("migrate", "src", "loud", "--to", "safetensors", cwd=tmp_path)
    assert loud.returncode == 0 and "[1/1] converted" in loud.stderr, loud.stderr
    quiet = run_cli("migrate", "src", "quiet", "--to", "safetensors", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert torch.equal(load_file(tmp_path / "quiet" / "a.safetensors")["w"], torch.load(tmp_path / "src" / "a.pt", weights_only=True)["w"])
