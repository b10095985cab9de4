"""``ckpt-migrate check`` and ``diff``: output, JSON and exit codes; ``--target`` resolution."""

from __future__ import annotations

import dataclasses

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckpt_migrate.cli import main_group
from ckpt_migrate.errors import ArchitectureError, CkptMigrateError, UsageError
from ckpt_migrate.architectures.targets import resolve_target

from conftest import run_cli
from helpers_lenet import LeNet

TARGET = "helpers_lenet:LeNet"
LENET_KEYS = [f"{m}.{p}" for m in ("conv1", "conv2", "fc1", "fc2", "fc3") for p in ("weight", "bias")]


def cli(*args: str):
    return CliRunner().invoke(main_group, list(args), catch_exceptions=False, prog_name="ckpt-migrate")


def seeded_lenet_state(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    torch.manual_seed(seed)
    return LeNet().state_dict()


@pytest.fixture
def matched(tmp_path: Path) -> Path:
    path = tmp_path / "lenet.pth"
    torch.save(seeded_lenet_state(), path)
    return path


@pytest.fixture
def partial(tmp_path: Path) -> Path:
    """LeNet weights with a 5-class head, conv1.bias missing and one extra key."""
    state = seeded_lenet_state()
    del state["conv1.bias"]
    state["fc3.weight"] = state["fc3.weight"][:5].clone()
    state["fc3.bias"] = state["fc3.bias"][:5].clone()
    state["aux.weight"] = torch.ones(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def disjoint(tmp_path: Path) -> Path:
    path = tmp_path / "wrapped.pth"
    torch.save(OrderedDict((f"module.{k}", v) for k, v in seeded_lenet_state().items()), path)
    return path


# --- check ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True])
def test_check_matched_exits_0(matched: Path, strict: bool) -> None:
    result = cli("check", str(matched), "--target", TARGET, *(["--strict"] if strict else []))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{matched} → {TARGET} (architecture, 10 keys)"
    assert lines[1].split() == ["matched", "│", "10"]
    assert "✓ load_state_dict(strict=True) would accept these weights" in result.stdout


def test_check_partial_reports_each_kind_and_exits_1_only_under_strict(partial: Path) -> None:
    result = cli("check", str(partial), "--target", TARGET)
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split("│") for line in lines[1:5]] == [[" matched        ", " 7 "], [" missing        ", " 1 "],
                                                         [" unexpected     ", " 1 "], [" shape mismatch ", " 2 "]]
    assert lines[5] == "Shape mismatches"
    assert [cell.strip() for cell in lines[8].split("│")] == ["fc3.weight", "[5, 84]", "[10, 84]"]
    assert [cell.strip() for cell in lines[9].split("│")] == ["fc3.bias", "[5]", "[10]"]
    assert "  missing: conv1.bias" in result.stdout.splitlines()
    assert "  unexpected: aux.weight" in result.stdout.splitlines()

    strict = cli("check", str(partial), "--target", TARGET, "--strict")
    assert strict.exit_code == 1
    assert strict.stderr == (f"ckpt-migrate: error: {partial}: does not load strictly into {TARGET}: "
                             "1 missing, 1 unexpected, 2 shape-mismatched\n")

    as_json = cli("check", str(partial), "--target", TARGET, "--strict", "--json")
    assert as_json.exit_code == 1
    doc = json.loads(as_json.stdout)
    assert doc["counts"] == {"matched": 7, "missing": 1, "optional_missing": 0, "unexpected": 1, "mismatched": 2}
    assert doc["mismatched"] == [{"key": "fc3.weight", "source": [5, 84], "target": [10, 84]},
                                 {"key": "fc3.bias", "source": [5], "target": [10]}]
    assert doc["missing"] == ["conv1.bias"] and doc["unexpected"] == ["aux.weight"]
    assert doc["exit_code"] == 1 and doc["ok"] is False


@pytest.mark.parametrize("strict", [False, True])
def test_check_disjoint_always_exits_1_and_suggests_a_schema(disjoint: Path, strict: bool) -> None:
    result = cli("check", str(disjoint), "--target", TARGET, *(["--strict"] if strict else []))
    assert result.exit_code == 1
    assert result.stderr == (f"ckpt-migrate: error: {disjoint}: no key matches {TARGET}; "
                             "try --schema lightning-to-plain or --schema strip-wrappers\n")
    assert result.stdout.splitlines()[1].split() == ["matched", "│", "0"]
    as_json = cli("check", str(disjoint), "--target", TARGET, "--json", *(["--strict"] if strict else []))
    assert as_json.exit_code == 1
    doc = json.loads(as_json.stdout)
    assert doc["counts"]["matched"] == 0 and doc["counts"]["missing"] == 10 and doc["counts"]["unexpected"] == 10
    assert doc["suggestions"] == ["lightning-to-plain", "strip-wrappers"]


def test_check_with_schema_fixes_the_disjoint_case(disjoint: Path, tmp_path: Path) -> None:
    result = cli("check", str(disjoint), "--target", TARGET, "--schema", "strip-wrappers", "--strict")
    assert result.exit_code == 0, result.output
    assert "  schemas applied: strip-wrappers" in result.stdout.splitlines()
    idle = tmp_path / "idle.toml"
    idle.write_text('[[rules]]\ndrop = "^never$"\n')
    lenient = cli("check", str(disjoint), "--target", TARGET, "--schema", "strip-wrappers", "--schema", str(idle))
    assert lenient.exit_code == 0
    assert f"warning: schema 'idle' ({idle}), rule 1 (drop): touched no key" in " ".join(lenient.stdout.split())
    strict = cli("check", str(disjoint), "--target", TARGET, "--schema", "strip-wrappers", "--schema", str(idle), "--strict")
    assert strict.exit_code == 1
    assert strict.stderr == f"ckpt-migrate: error: {disjoint}: does not load strictly into {TARGET}: 1 schema warning(s)\n"


def test_check_against_a_reference_checkpoint_of_another_format(matched: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.safetensors"
    save_file({k: v.contiguous() for k, v in seeded_lenet_state(1).items()}, str(reference))
    result = cli("check", str(matched), "--target", str(reference), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["kind"] == "checkpoint" and doc["target"] == str(reference) and sorted(doc["matched"]) == sorted(LENET_KEYS)


def test_check_torchvision_target_with_arch_kwargs(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    path = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None, num_classes=3).state_dict(), path)
    fits = cli("check", str(path), "--target", "squeezenet1_1", "--arch-kwargs", '{"num_classes": 3}', "--strict")
    assert fits.exit_code == 0, fits.output
    head = cli("check", str(path), "--target", "torchvision:squeezenet1_1", "--json")
    assert head.exit_code == 0
    doc = json.loads(head.stdout)
    assert doc["mismatched"] == [{"key": "classifier.1.weight", "source": [3, 512, 1, 1], "target": [1000, 512, 1, 1]},
                                 {"key": "classifier.1.bias", "source": [3], "target": [1000]}]
    assert cli("check", str(path), "--target", "squeezenet1_1", "--strict").exit_code == 1


def test_check_usage_errors_are_one_line(matched: Path, tmp_path: Path) -> None:
    bad_json = CliRunner().invoke(main_group, ["check", str(matched), "--target", TARGET, "--arch-kwargs", "{nope"])
    assert bad_json.exit_code == 2
    assert bad_json.stderr.startswith("ckpt-migrate: error: --arch-kwargs is not valid JSON:") and bad_json.stderr.count("\n") == 1
    missing = CliRunner().invoke(main_group, ["check", str(matched), "--target", str(tmp_path / "nope.pth")])
    assert missing.exit_code == 1
    assert missing.stderr.startswith(f"ckpt-migrate: error: {tmp_path / 'nope.pth'}: no such checkpoint file;")
    unknown = CliRunner().invoke(main_group, ["check", str(matched), "--target", "vgg17"])
    assert unknown.exit_code == 1
    assert "has no model builder 'vgg17'" in unknown.stderr and unknown.stderr.count("\n") == 1
    no_target = CliRunner().invoke(main_group, ["check", str(matched)])
    assert no_target.exit_code == 2 and "Missing option '--target'" in no_target.stderr


def test_check_in_a_fresh_process(partial: Path) -> None:
    done = run_cli("check", str(partial), "--target", str(partial), "--strict", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True and done.stderr == ""


# --- targets -------------------------------------------------------------------------------------


def test_architecture_targets_are_built_on_the_meta_device() -> None:
    target = resolve_target("vgg16", arch_kwargs={"num_classes": 7})
    assert target.kind == "architecture" and target.label == "vgg16" and target.kwargs == {"num_classes": 7}
    assert target.shapes["classifier.0.weight"] == (4096, 25088)
    assert target.shapes["classifier.6.weight"] == (7, 4096)
    user = resolve_target(TARGET)
    assert list(user.shapes) == LENET_KEYS and user.shapes["fc1.weight"] == (120, 400)


def test_target_errors(matched: Path) -> None:
    with pytest.raises(UsageError, match="--arch-kwargs applies to an architecture target"):
        resolve_target(str(matched), arch_kwargs={"num_classes": 3})
    with pytest.raises(UsageError, match="--target auto cannot work"):
        resolve_target("auto")
    with pytest.raises(CkptMigrateError, match="no such checkpoint file"):
        resolve_target("missing/model.pt")
    with pytest.raises(ArchitectureError, match="cannot import"):
        resolve_target("no_such_package_xyz:Model")


# --- diff ----------------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A .pth and a .safetensors: fc1.bias changed by 0.5, fc3.weight renamed to head.weight, conv1.bias in fp16."""
    state = seeded_lenet_state()
    a = tmp_path / "a.pth"
    torch.save(state, a)
    changed = OrderedDict((k, v.clone()) for k, v in state.items())
    changed["fc1.bias"] += 0.5
    changed["head.weight"] = changed.pop("fc3.weight")
    changed["conv1.bias"] = changed["conv1.bias"].half()
    b = tmp_path / "b.safetensors"
    save_file(dict(changed), str(b))
    return a, b


def test_diff_across_formats_json(pair: tuple[Path, Path]) -> None:
    a, b = pair
    result = cli("diff", str(a), str(b), "--json")
    assert result.exit_code == 0 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["formats"] == ["torch-zip", "safetensors"]
    assert doc["identical"] is False
    assert doc["only_a"] == ["fc3.weight"] and doc["only_b"] == ["head.weight"]
    assert doc["renamed"] == [{"a": "fc3.weight", "b": "head.weight"}]
    assert [d["key"] for d in doc["value_changes"]] == ["conv1.bias", "fc1.bias"]
    fc1 = doc["value_changes"][1]
    assert abs(fc1["max_abs_diff"] - 0.5) < 1e-6 and fc1["dtype"] == ["float32", "float32"]
    assert doc["dtype_changes"][0]["key"] == "conv1.bias" and doc["dtype_changes"][0]["dtype"] == ["float32", "float16"]
    assert 0 < doc["dtype_changes"][0]["max_abs_diff"] < 1e-3
    assert doc["counts"] == {"only_a": 1, "only_b": 1, "common": 9, "dtype_changes": 1, "shape_changes": 0, "value_changes": 2}


def test_diff_human_output_and_fail_on_difference(pair: tuple[Path, Path]) -> None:
    a, b = pair
    result = cli("diff", str(a), str(b))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"A {a}", f"B {b}"]
    assert "  only in A (1): fc3.weight" in lines and "  only in B (1): head.weight" in lines
    assert "  renamed (same values) (1): fc3.weight → head.weight" in lines
    assert any([c.strip() for c in line.split("│")] == ["fc1.bias", "float32", "[120]", "0.5"] for line in lines)
    assert any([c.strip() for c in line.split("│")][:2] == ["conv1.bias", "float32 → float16"] for line in lines)
    assert cli("diff", str(a), str(b), "--fail-on-difference").exit_code == 1


def test_diff_identical_across_formats(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = pair
    copy = tmp_path / "same.safetensors"
    save_file({k: v.contiguous() for k, v in seeded_lenet_state().items()}, str(copy))
    result = cli("diff", str(a), str(copy), "--fail-on-difference")
    assert result.exit_code == 0
    assert "✓ identical tensors" in result.stdout
    assert json.loads(cli("diff", str(a), str(copy), "--json").stdout)["max_abs_diff"] == 0.0


def test_diff_shape_change_and_unreadable_input(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2, 3)}, tmp_path / "x.pth")
    torch.save({"w": torch.zeros(3, 2)}, tmp_path / "y.pth")
    doc = json.loads(cli("diff", str(tmp_path / "x.pth"), str(tmp_path / "y.pth"), "--json").stdout)
    assert doc["shape_changes"] == [{"key": "w", "dtype": ["float32", "float32"], "shape": [[2, 3], [3, 2]], "max_abs_diff": None}]
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    bad = run_cli("diff", str(tmp_path / "x.pth"), str(tmp_path / "junk.bin"))
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"ckpt-migrate: error: {tmp_path / 'junk.bin'}:") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", ["check", "diff"])
def test_help(command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: ckpt-migrate {command} [OPTIONS]")


def test_python_api_check_and_diff(partial: Path, pair: tuple[Path, Path]) -> None:
    import ckpt_migrate

    result = ckpt_migrate.check(str(partial), TARGET)
    assert result.report.missing == ["conv1.bias"] and result.report.unexpected == ["aux.weight"]
    assert result.failed is False and dataclasses.replace(result, strict=True).failed is True
    assert ckpt_migrate.check(str(partial), TARGET, strict=True).failed is True
    assert result.problems() == ["1 missing", "1 unexpected", "2 shape-mismatched"]
    assert result.target == {"target": TARGET, "kind": "architecture", "keys": 10, "kwargs": {}}
    report = ckpt_migrate.diff(*map(str, pair))
    assert report.formats == ("torch-zip", "safetensors")
    assert report.renamed == [("fc3.weight", "head.weight")] and not report.identical
