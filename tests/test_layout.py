"""The package's shape: public API callable whatever is imported, one options object, one folder digest, a light CLI."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

import ckpt_migrate
from ckpt_migrate.converters import registry
from ckpt_migrate.errors import OutputExistsError, UsageError
from ckpt_migrate.io.source import Source
from ckpt_migrate.io.trees import Tree
from ckpt_migrate.options import ConvertOptions

from conftest import ROOT, run_cli

PUBLIC = ("load", "convert", "inspect", "scan", "diff", "check", "migrate")


def _import_every_submodule() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(ckpt_migrate.__path__, "ckpt_migrate."):
        if info.name.endswith("__main__") or info.name.endswith("build_index"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def test_public_functions_stay_callable_after_every_submodule_is_imported(tmp_path: Path) -> None:
    imported = _import_every_submodule()
    assert "ckpt_migrate.batch.runner" in imported and "ckpt_migrate.reports.scan" in imported
    for name in PUBLIC:
        assert callable(getattr(ckpt_migrate, name)), name
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    torch.manual_seed(0)
    state = {"w": torch.randn(3, 4), "b": torch.randn(4)}
    torch.save(state, src_dir / "a.pt")
    assert sorted(ckpt_migrate.load(src_dir / "a.pt").tensors) == ["b", "w"]
    assert ckpt_migrate.convert(src_dir / "a.pt", tmp_path / "a.safetensors").report.verified
    assert ckpt_migrate.inspect(src_dir / "a.pt").kind == "state_dict"
    assert ckpt_migrate.scan([str(src_dir / "a.pt")]).exit_code == 0
    assert ckpt_migrate.diff(src_dir / "a.pt", tmp_path / "a.safetensors").identical
    assert not ckpt_migrate.check(src_dir / "a.pt", str(tmp_path / "a.safetensors")).failed
    report = ckpt_migrate.migrate(src_dir, tmp_path / "out", to="safetensors", executor="inline")
    assert report.exit_code == 0 and (tmp_path / "out" / "a.safetensors").is_file()


def test_batch_package_is_importable_beside_the_migrate_function() -> None:
    import ckpt_migrate.batch.runner as runner

    assert ckpt_migrate.migrate is runner.migrate


def test_folder_digest_is_the_same_for_convert_and_migrate(tmp_path: Path) -> None:
    folder = tmp_path / "tree" / "ckpt"
    (folder / "nested").mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"meta")
    (folder / "__0_0.distcp").write_bytes(b"\x00" * 1000)
    (folder / "nested" / "b.bin").write_bytes(b"b")
    assert Source(str(folder)).sha256() == Tree(str(tmp_path / "tree")).sha256("ckpt")


def test_convert_options_reject_unknown_keywords_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="inputshape"):
        ckpt_migrate.convert(tmp_path / "a.pt", tmp_path / "a.onnx", inputshape="1,3,8,8")
    with pytest.raises(TypeError, match="jbos"):
        ckpt_migrate.migrate(tmp_path, tmp_path / "out", jbos=2)
    for bad in ({"dtype": "fp8"}, {"max_shard_size": "2XB"}, {"arch_kwargs": "[1]"}, {"opset": 3}, {"input_shape": "a,b"}):
        with pytest.raises(UsageError):
            ConvertOptions(**bad)
    options = ConvertOptions(schemas="strip-wrappers", arch_kwargs='{"num_classes": 3}', input_shape="1,3,8,8")
    assert options.schemas == ("strip-wrappers",) and options.arch_kwargs == {"num_classes": 3} and options.input_shape == (1, 3, 8, 8)


def test_every_convert_flag_is_a_migrate_flag() -> None:
    from ckpt_migrate.commands.convert import command as convert_command
    from ckpt_migrate.commands.migrate import command as migrate_command

    convert_flags = {opt for param in convert_command.params if isinstance(param, click.Option) for opt in param.opts}
    migrate_flags = {opt for param in migrate_command.params if isinstance(param, click.Option) for opt in param.opts}
    assert convert_flags - migrate_flags == set()
    fields = {spec.metadata["decl"] for spec in dataclasses.fields(ConvertOptions) if spec.metadata}
    assert fields <= convert_flags


def test_migrate_passes_onnx_flags_to_each_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.ones(2)}, src / "a.pt")
    result = run_cli("migrate", str(src), str(tmp_path / "out"), "--to", "onnx", "--input-shape", "x", "--json")
    assert result.returncode == 2 and "--input-shape 'x'" in result.stderr


@pytest.mark.parametrize("writer", sorted(registry.list_writers()))
def test_existing_output_needs_force_for_every_writer(tmp_path: Path, writer: str) -> None:
    src = tmp_path / "a.pt"
    torch.save({"w": torch.ones(2)}, src)
    dst = tmp_path / f"out-{writer}"
    dst.mkdir() if writer == "dcp" else dst.write_bytes(b"keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputExistsError, match="--force"):
        ckpt_migrate.convert(src, dst, to=writer)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if writer != "dcp":
        assert dst.read_bytes() == b"keep me"


@pytest.mark.parametrize("args", [["--help"], ["formats"], ["formats", "--json"], ["convert", "--help"], ["migrate", "--help"]])
def test_cli_help_and_formats_import_no_torch(args: list[str]) -> None:
    code = ("import sys\nfrom ckpt_migrate.cli import main\ncode = 0\n"
            "try:\n    main(" + repr(args) + ")\nexcept SystemExit as stop:\n    code = stop.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "NO-TORCH 0", result.stderr


def test_migrate_dry_run_predicts_strict_calls(tmp_path: Path) -> None:
    import helpers_calls

    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.ones(2), "mode": helpers_calls.InterpolationMode.BILINEAR}, src / "a.pt")
    relaxed = ckpt_migrate.migrate(src, tmp_path / "out", to="safetensors", dry_run=True)
    strict = ckpt_migrate.migrate(src, tmp_path / "out", to="safetensors", dry_run=True, strict_calls=True)
    assert [f.kind for f in relaxed.files] == ["state_dict"]
    assert [f.kind for f in strict.files] == ["refused"] and "InterpolationMode" in (strict.files[0].reason or "")
