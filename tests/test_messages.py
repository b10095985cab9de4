"""Messages users met: the scan table at 80 columns and its stderr line, no doubled parentheses, TorchScript → ONNX advice, schema infer guesses."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import payloads as P
from conftest import ROOT, run_cli

NAMES = ("models/resnet50_finetuned_e12.pth", "models/hostile_os_system.pt", "models/truncated_copy.pth")


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    """A clean checkpoint, one that names os.system and a truncated copy, under tmp_path/models."""
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save({"fc.weight": torch.randn(3, 3)}, tmp_path / NAMES[0])
    (tmp_path / NAMES[1]).write_bytes(P.call_pickle("os", "system", ["true"]))
    genuine = (tmp_path / NAMES[0]).read_bytes()
    (tmp_path / NAMES[2]).write_bytes(genuine[: len(genuine) // 2])
    return tmp_path


def test_scan_table_keeps_file_names_whole_at_80_columns(models: Path) -> None:
    run = run_cli("scan", "models", cwd=models, env={"COLUMNS": "80"})
    assert run.returncode == 3
    lines = run.stdout.splitlines()
    assert max(len(line) for line in lines if line.startswith(("┃", "│", "┏", "└"))) <= 80
    for name in NAMES:
        assert any(name in line for line in lines), (name, run.stdout)
    assert "unreadable: models/truncated_copy.pth: not a readable zip archive" in run.stdout
    assert "refused in models/hostile_os_system.pt" in run.stdout and "a known code-execution gadget" in run.stdout


def test_scan_of_several_files_says_one_line_on_stderr(models: Path) -> None:
    run = run_cli("scan", "models", cwd=models)
    assert run.stderr.splitlines() == [
        "ckpt-migrate: error: 1 unsafe (models/hostile_os_system.pt); 1 unreadable (models/truncated_copy.pth) "
        "of 3 files; the reasons are above"]
    as_json = run_cli("scan", "models", "--json", cwd=models)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["summary"]["unsafe"] == 1
    assert len(as_json.stderr.splitlines()) == 1 and as_json.stderr.rstrip().endswith("the reasons are in the JSON document")


def test_scan_of_one_file_gives_its_reason_once(models: Path) -> None:
    run = run_cli("scan", NAMES[1], cwd=models)
    assert run.returncode == 3
    assert run.stderr.splitlines() == [
        "ckpt-migrate: error: models/hostile_os_system.pt: refused: os.system at byte 2 in pickle (module os can run commands, "
        "code or file operations; a known code-execution gadget, never allowed, not even with --allow-call)"]


def test_no_message_doubles_a_closing_parenthesis(models: Path, tmp_path: Path) -> None:
    strict = tmp_path / "enum.pt"
    strict.write_bytes(P.call_pickle("trainkit.enums", "Precision", [16]))
    for args in (["scan", NAMES[1]], ["convert", NAMES[1], "out.safetensors"], ["inspect", NAMES[1]],
                 ["scan", str(strict), "--strict-calls"], ["inspect", str(strict), "--strict-calls", "--json"]):
        run = run_cli(*args, cwd=models)
        assert run.returncode == 3, (args, run.stderr)
        assert "))" not in run.stderr and "))" not in run.stdout, (args, run.stderr, run.stdout)


def test_torchscript_to_onnx_names_what_works(tmp_path: Path) -> None:
    import onnxruntime

    import helpers_user_model

    torch.manual_seed(0)
    model = helpers_user_model.TinyNet(num_classes=3).eval()
    src, dst = tmp_path / "scripted.pt", tmp_path / "scripted.onnx"
    torch.jit.script(model).save(str(src))
    refused = run_cli("convert", str(src), str(dst), "--input-shape", "1,3,8,8", cwd=tmp_path)
    assert refused.returncode == 1 and not dst.exists()
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert "--trust-module" not in lines[0] and "a TorchScript class" in lines[0]
    assert "--arch helpers_user_model:TinyNet if that class is importable here" in lines[0]
    assert "--arch NAME for a torchvision builder" in lines[0]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = run_cli("convert", str(src), str(dst), "--arch", "helpers_user_model:TinyNet", "--arch-kwargs", '{"num_classes": 3}',
                   "--input-shape", "1,3,8,8", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        assert np.abs(got - model(x).numpy()).max() < 1e-5


def test_schema_infer_says_which_matches_are_guesses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save({"enc.first.weight": torch.randn(4, 4), "enc.first.bias": torch.randn(4), "enc.second.weight": torch.randn(4, 4),
                "enc.second.bias": torch.randn(4), "head.weight": torch.randn(2, 4), "head.bias": torch.randn(2)}, tmp_path / "old.pt")
    torch.save({"blocks.0.weight": torch.zeros(4, 4), "blocks.0.bias": torch.zeros(4), "blocks.1.weight": torch.zeros(4, 4),
                "blocks.1.bias": torch.zeros(4), "head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)}, tmp_path / "new.pt")
    run = run_cli("schema", "infer", "old.pt", "--target", "new.pt", "-o", "inferred.toml", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert ("  guessed: 4 key(s) matched by shape and order only (modules of identical shapes paired in the order they appear); "
            "review them in inferred.toml") in run.stdout.splitlines()
    text = (tmp_path / "inferred.toml").read_text()
    assert "# 4 of the matches are guesses by shape and order" in text
    assert re.search(r"a guess: review it\)\n\"enc\.first\.\" = \"blocks\.0\.\"", text)
    assert "never guessed" not in text + run.stdout
    document = json.loads(run_cli("schema", "infer", "old.pt", "--target", "new.pt", "-o", "again.toml", "--json", cwd=tmp_path).stdout)
    assert document["guessed"] == ["enc.first.weight", "enc.first.bias", "enc.second.weight", "enc.second.bias"]
    plain = run_cli("schema", "infer", "old.pt", "--target", "old.pt", "-o", "same.toml", cwd=tmp_path)
    assert plain.returncode == 0 and "guessed" not in plain.stdout
    assert "guesses" not in (tmp_path / "same.toml").read_text()


def test_scan_names_an_unreadable_file_once(tmp_path: Path) -> None:
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(b"PK\x03\x04 garbage")
    result = run_cli("scan", str(bad))
    assert result.returncode == 1
    assert result.stdout.count("trunc.pt: not a readable zip archive") == 1 and "static walk skipped" not in result.stdout
