"""The README's tour runs as written: every ``$ ckpt-migrate`` line, in a fresh demo folder, prints what the README shows.

The demo folder is built by ``fixtures/demo.py`` (the same builder as ``make demo``) and the tour
is run by ``fixtures/readme_tour.py`` (the same runner as ``make readme``). The resume snippet runs
as is in the folder, followed by checks that it restored the tutorial bundle's state exactly.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"ckpt_migrate_fixtures_{name}", ROOT / "fixtures" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tour_module = _load("readme_tour")

RESUME_CHECKS = '''

import torch as _torch

_bundle = _torch.load("bundle.tar", weights_only=True)
assert "scheduler_state_dict" not in checkpoint, "the tutorial bundle has no scheduler"
assert start_epoch == _bundle["epoch"] == 2
_restored = model.state_dict()
assert list(_restored) == list(_bundle["model_state_dict"])
assert all(_torch.equal(_restored[k], v) for k, v in _bundle["model_state_dict"].items())
_state = optimizer.state_dict()
_saved = _bundle["optimizer_state_dict"]
assert _state["param_groups"] == _saved["param_groups"]
assert sorted(_state["state"]) == sorted(_saved["state"]) and len(_saved["state"]) == 10
assert all(_torch.equal(_state["state"][i]["momentum_buffer"], _saved["state"][i]["momentum_buffer"]) for i in _saved["state"])
assert checkpoint["loss"] == _bundle["loss"] and isinstance(checkpoint["loss"], float)
print("resume-checks-passed")
'''


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Build the demo folder, then run every step of the README's tour in it (the resume snippet followed by checks)."""
    steps = tour_module.parse(README.read_text(encoding="utf-8"))
    for step in steps:
        if step.kind == "python":
            step.text += RESUME_CHECKS
    demo = tour_module.prepare_demo(None, tmp_path_factory.mktemp("tour"))
    return tour_module.run_steps(steps, demo)


def _commands(results: list) -> list[list[str]]:
    return [shlex.split(r.step.text, comments=True) for r in results if r.step.kind == "command"]


def _result(results: list, command: str):
    return next(r for r in results if r.step.kind == "command" and r.step.text == command)


def test_every_readme_command_prints_what_the_readme_shows(tour: list) -> None:
    problems = tour_module.report(tour)
    assert not problems, "README.md shows output the tool does not print (run `make readme`):\n\n" + "\n\n".join(problems)


def test_resume_snippet_runs_as_is_on_the_tutorial_bundle(tour: list) -> None:
    [snippet] = [r for r in tour if r.step.kind == "python"]
    assert snippet.returncode == 0, "\n".join(snippet.output)
    assert snippet.output[-1] == "resume-checks-passed"
    assert "checkpoint[\"scheduler_state_dict\"]" in snippet.step.text
    assert 'if "scheduler_state_dict" in checkpoint' in snippet.step.text


def test_the_tour_covers_every_command_and_the_flags_users_ask_about(tour: list) -> None:
    commands = _commands(tour)
    assert all(argv[0] in {"ckpt-migrate", "ls", "cat", "echo"} for argv in commands)
    run = [argv[1:] for argv in commands if argv[0] == "ckpt-migrate"]
    subcommands = {argv[0] if argv[0] != "schema" else f"schema {argv[1]}" for argv in run}
    assert subcommands >= {"inspect", "scan", "convert", "diff", "check", "schema list", "schema show", "schema infer",
                           "migrate", "formats"}
    converts = [argv for argv in run if argv[0] == "convert"]
    destinations = {argv[2].rsplit(".", 1)[-1] for argv in converts if "." in argv[2]}
    assert {"safetensors", "onnx", "pt"} <= destinations
    used = {flag for argv in converts for flag in argv if flag.startswith("--")}
    assert {"--to", "--dtype", "--max-shard-size", "--schema", "--strip-optimizer"} <= used
    assert any(argv[1].startswith("deepspeed/") for argv in converts)
    assert any(argv[0] == "migrate" and argv[1] == "hf" for argv in run)
    assert any(argv[0] == "check" and "--target" in argv and "mynet:LeNetV2" in argv for argv in run)
    assert not any(r.step.text.lstrip().startswith(".venv") or "demo-out/" in r.step.text for r in tour)


def test_the_tour_shows_real_outcomes(tour: list) -> None:
    scan = _result(tour, "ckpt-migrate scan untrusted")
    assert scan.returncode == 3
    shown = "\n".join(scan.output)
    for verdict in ("clean", "unknown", "unsafe"):
        assert verdict in shown
    strict = _result(tour, "ckpt-migrate scan untrusted/trainer_run.ckpt --strict-calls")
    assert strict.returncode == 3
    assert _result(tour, "ckpt-migrate check old.pth --target mynet:LeNetV2").returncode == 1
    assert _result(tour, "ckpt-migrate check new.safetensors --target mynet:LeNetV2 --strict").returncode == 0
    assert _result(tour, "ckpt-migrate migrate untrusted untrusted-out --to safetensors").returncode == 3
    hf = _result(tour, "ls hf-safetensors/gpt2-tiny")
    assert "model.safetensors" in hf.output and "config.json" in hf.output
    ds = _result(tour, "ckpt-migrate diff deepspeed.safetensors deepspeed/zero_to_fp32.safetensors")
    assert ds.returncode == 0 and any("identical" in line for line in ds.output)
    for result in tour:
        if result.step.kind == "command" and result.step.text.startswith("ckpt-migrate convert"):
            assert result.returncode == 0, "\n".join(result.output)
    escaped = [line for result in tour for line in result.output if "\\n" in line]
    assert not escaped, f"our own line breaks printed as \\n: {escaped}"


def test_an_edited_output_fails_the_check(tour: list) -> None:
    convert = _result(tour, "ckpt-migrate convert models/lenet_whole_model.pt lenet.safetensors")
    actual = convert.output
    assert tour_module.lines_match(actual, actual)
    assert not tour_module.lines_match([actual[0].replace("safetensors", "onnx")] + actual[1:], actual)
    assert not tour_module.lines_match(actual[:-1], actual)
    assert not tour_module.lines_match(actual + ["  schemas applied: lenet"], actual)
    assert not tour_module.lines_match([line.replace("bit-exact", "") for line in actual], actual)
    migrate = _result(tour, "ckpt-migrate migrate models safetensors --to safetensors --jobs 2 --report report.json")
    assert not tour_module.lines_match([line.replace("18", "19") for line in migrate.step.expected], migrate.output)


def test_normalization_covers_only_what_varies() -> None:
    normalize = tour_module.normalize
    assert normalize("[ 3/18] converted a.pt → a.safetensors (0.53 s)") == normalize("[ 3/18] converted a.pt → a.safetensors (12.00 s)")
    assert normalize("3.8 MB in → 3.2 MB out; 5.3 files/s, 1.1 MB/s") == normalize("3.8 MB in → 3.2 MB out; 9 files/s, 20.5 kB/s")
    assert normalize("max abs diff 5.55e-16  ") == normalize("max abs diff 1.2e-07")
    assert normalize("verified with onnxruntime, max abs diff 5.55e-16") == normalize("verified with onnxruntime, max abs diff 0")
    assert normalize("sha256 " + "a" * 64) == normalize("sha256 " + "0" * 64)
    assert normalize("3.8 MB in") != normalize("3.9 MB in")
    assert normalize("10 tensors, 247.8 kB") != normalize("11 tensors, 247.8 kB")
    assert normalize("max abs diff 0") != normalize("max abs diff 1")
    assert normalize("exit 1 (2 workers)") != normalize("exit 3 (2 workers)")


def test_ellipsis_stands_for_lines_but_not_for_a_whole_output() -> None:
    match = tour_module.lines_match
    assert match(["head", "...", "tail"], ["head", "a", "b", "tail"])
    assert match(["head", "...", "tail"], ["head", "tail"])
    assert not match(["head", "...", "tail"], ["head", "a", "tail", "more"])
    assert not match(["head", "...", "tail"], ["other", "tail"])
    with pytest.raises(tour_module.TourError):
        tour_module.parse("```console\n$ ckpt-migrate formats\n...\n```\n")
    with pytest.raises(tour_module.TourError):
        tour_module.parse("```console\noutput that nothing produced\n```\n")
    with pytest.raises(tour_module.TourError):
        tour_module.parse("```\n$ ckpt-migrate formats\nunchecked output\n```\n")
    with pytest.raises(tour_module.TourError):
        tour_module.parse("```console\n$ ckpt-migrate formats\n")
    steps = tour_module.parse("```console\n$ a\nx\n$ b\n```\n\n<!-- readme-tour: run -->\n```python\nprint(1)\n```\n")
    assert [(s.kind, s.text, s.expected) for s in steps] == [("command", "a", ["x"]), ("command", "b", []),
                                                             ("python", "print(1)", [])]


def test_update_rewrites_only_mismatched_blocks_and_keeps_the_elision() -> None:
    text = "```console\n$ a\nkept (1.0 s)\n$ b\nhead\n...\ntail\n$ c\nstale\n```"
    steps = tour_module.parse(text)
    results = [tour_module.Result(steps[0], ["kept (9.9 s)"], 0),
               tour_module.Result(steps[1], ["head2", "x", "y", "tail2"], 0),
               tour_module.Result(steps[2], ["fresh", "lines"], 1)]
    new = tour_module.updated(text, results)
    assert new == "```console\n$ a\nkept (1.0 s)\n$ b\nhead2\n...\ntail2\n$ c\nfresh\nlines\n```"
    for step, result in zip(tour_module.parse(new), results):
        assert tour_module.lines_match(step.expected, result.output)


def test_readme_tour_parses() -> None:
    steps = tour_module.parse(README.read_text(encoding="utf-8"))
    assert sum(step.kind == "python" for step in steps) == 1
    assert len(steps) >= 30
