"""The registry: built-ins and entry points, duplicate names, and every reader × writer round trip."""

from __future__ import annotations

import importlib.metadata
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.api import convert, load
from ckpt_migrate.model.equality import same_tensor as bytes_equal
from ckpt_migrate.errors import UnsupportedFormatError

from conftest import run_cli

ROUND_TRIP_WRITERS = {"safetensors": "out.safetensors", "normalized": "out.pt", "dcp": "out_dcp"}


def reference_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return {"layer.weight": torch.randn(3, 4, generator=generator), "layer.bias": torch.randn(3, generator=generator),
            "steps": torch.tensor(7)}


class _ScriptedReference(torch.nn.Module):
    """A module whose ``state_dict()`` is :func:`reference_state`, for the TorchScript reader."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.register_buffer("steps", state["steps"].clone())
        with torch.no_grad():
            self.layer.weight.copy_(state["layer.weight"])
            self.layer.bias.copy_(state["layer.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.steps


def write_source(reader: str, folder: Path) -> Path:
    """A file (or folder) that ``reader`` opens, holding :func:`reference_state`."""
    state = reference_state()
    if reader == "torch-zip":
        path = folder / "src.pth"
        torch.save(state, path)
    elif reader == "torch-legacy":
        path = folder / "src.pth"
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif reader == "safetensors":
        path = folder / "src.safetensors"
        save_file(state, str(path))
    elif reader == "safetensors-sharded":
        torch.save(state, folder / "tmp.pth")
        path = folder / "sharded"
        convert(folder / "tmp.pth", path, max_shard_size="40")
        assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
    elif reader == "torch-bin-sharded":
        path = folder / "bin_shards"
        path.mkdir()
        torch.save({"layer.weight": state["layer.weight"]}, path / "pytorch_model-00001-of-00002.bin")
        torch.save({"layer.bias": state["layer.bias"], "steps": state["steps"]}, path / "pytorch_model-00002-of-00002.bin")
        weight_map = {"layer.weight": "pytorch_model-00001-of-00002.bin", "layer.bias": "pytorch_model-00002-of-00002.bin",
                      "steps": "pytorch_model-00002-of-00002.bin"}
        (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 68}, "weight_map": weight_map}))
    elif reader == "dcp":
        torch.save(state, folder / "tmp.pth")
        path = folder / "src_dcp"
        convert(folder / "tmp.pth", path, to="dcp")
    elif reader == "deepspeed":
        from tests.test_deepspeed import write_zero_folder

        path = write_zero_folder(state, folder / "ds_ckpt")
    elif reader == "torchscript":
        path = folder / "src.pt"
        torch.jit.save(torch.jit.script(_ScriptedReference(state)), str(path))
    elif reader == "pickle":
        path = folder / "src.pkl"
        with open(path, "wb") as handle:
            pickle.dump(state, handle, protocol=4)
    else:
        raise AssertionError(f"no sample for reader {reader}; add one when registering a reader")
    return path


READERS_WITH_WEIGHTS = [name for name in registry.list_readers() if name != "torch-tar"]


def test_every_registered_reader_has_a_round_trip_case() -> None:
    assert set(registry.list_readers()) - set(READERS_WITH_WEIGHTS) == {"torch-tar"}
    assert set(registry.list_writers()) - set(ROUND_TRIP_WRITERS) == {"onnx"}


@pytest.mark.parametrize("writer", sorted(ROUND_TRIP_WRITERS))
@pytest.mark.parametrize("reader", READERS_WITH_WEIGHTS)
def test_reader_writer_round_trip_is_bit_exact(tmp_path: Path, reader: str, writer: str) -> None:
    src = write_source(reader, tmp_path)
    assert load(src).meta["reader"] == reader
    dst = tmp_path / ROUND_TRIP_WRITERS[writer]
    convert(src, dst, to=writer)
    back = load(dst).materialize()
    expected = reference_state()
    assert sorted(back) == sorted(expected)
    for key, tensor in expected.items():
        assert bytes_equal(back[key], tensor), (reader, writer, key)


def test_duplicate_name_says_where_the_first_lives() -> None:
    fresh = registry.Registry("reader", dict(registry.BUILTIN_READERS), "ckpt_migrate.test-readers")
    with pytest.raises(registry.DuplicateNameError, match=r"'torch-zip' from tests is already registered by ckpt-migrate \(built-in\) \(ckpt_migrate.converters.readers.torch_zip:TorchZipReader\)"):
        fresh.register("torch-zip", "somewhere:Else", origin="tests")


def test_entry_point_reader_is_found_and_duplicates_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    point = SimpleNamespace(name="my-format", value="mypkg.reader:MyReader", dist=SimpleNamespace(name="mypkg"))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [point] if group == "grp" else [])
    fresh = registry.Registry("reader", {"torch-zip": "x:Y"}, "grp")
    assert fresh.names() == ["torch-zip", "my-format"]
    assert fresh.entries()["my-format"].origin == "entry point my-format of mypkg"
    clash = SimpleNamespace(name="torch-zip", value="evil:Reader", dist=SimpleNamespace(name="other"))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [clash])
    with pytest.raises(registry.DuplicateNameError, match="already registered by ckpt-migrate"):
        registry.Registry("reader", {"torch-zip": "x:Y"}, "grp").entries()


def test_unknown_writer_lists_the_registered_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="registered: safetensors"):
        registry.get_writer("tflite")
    proc = run_cli("convert", "x.pth", str(tmp_path / "y.unknownsuffix"))
    assert proc.returncode == 2 and "--to" in proc.stderr


@pytest.mark.parametrize("command", [["convert", "a.pt", "b.parquet", "--to", "parquet"], ["migrate", ".", "out", "--to", "parquet"],
                                     ["convert", "a.pt", "b.safetensors", "--schema", "no-such-schema"],
                                     ["convert", "a.pt", "b.safetensors", "--arch-kwargs", "{bad"]])
def test_usage_errors_exit_2_with_a_json_document(tmp_path: Path, command: list[str]) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    proc = run_cli(*command, "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    document = json.loads(proc.stdout)
    assert document["exit_code"] == 2 and document["error"]
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("ckpt-migrate: error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "b.safetensors").exists()


@pytest.mark.parametrize("command", ["", "convert", "inspect", "scan", "diff", "check", "migrate", "schema", "formats"])
def test_every_command_has_help(command: str) -> None:
    proc = run_cli(*([command] if command else []), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: ckpt-migrate" in proc.stdout


def test_formats_json_lists_every_reader_and_writer() -> None:
    import json

    proc = run_cli("formats", "--json")
    assert proc.returncode == 0
    document = json.loads(proc.stdout)
    assert [r["name"] for r in document["readers"]] == registry.list_readers()
    assert [w["name"] for w in document["writers"]] == registry.list_writers()
