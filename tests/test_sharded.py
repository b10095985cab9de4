"""Hugging Face sharded safetensors: writing with --max-shard-size, huggingface_hub's own loader, ties, stale shards, the reader."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file

import ckpt_migrate.api as api

import ckpt_migrate.model.dtypes as dtypes
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef
import ckpt_migrate.converters.writers.safetensors.sharded as sharded
from ckpt_migrate.options import parse_shard_size
from ckpt_migrate.errors import CorruptFileError, OutputExistsError, UsageError

from conftest import run_cli


class Tied(torch.nn.Module):
    """A small language-model shape whose output head shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.blocks = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(6)])
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight


def tied_state() -> tuple[Tied, "OrderedDict[str, torch.Tensor]"]:
    torch.manual_seed(6)
    model = Tied()
    return model, model.state_dict()


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def shard_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder))


@pytest.mark.parametrize("stream", [None, False])
def test_shards_load_with_huggingface_hub(tmp_path: Path, stream: bool | None) -> None:
    model, state = tied_state()
    src = tmp_path / "model.pt"
    torch.save(state, src)
    out = tmp_path / "out"
    result = api.convert(str(src), str(out), max_shard_size="2KB", stream=stream)
    names = shard_files(out)
    count = len(names) - 1
    assert count > 2
    assert names == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)] + ["model.safetensors.index.json"]
    assert result.report.details["path"] == ("general" if stream is False else "stream")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert index["weight_map"]["embed.weight"] == index["weight_map"]["head.weight"]

    fresh = Tied()
    missing, unexpected = huggingface_hub.load_torch_model(fresh, out, strict=True)
    assert not missing and not unexpected
    for name, tensor in fresh.state_dict().items():
        assert bits(tensor) == bits(state[name]), name
    loaded: dict[str, torch.Tensor] = {}
    for name in names[:-1]:
        loaded.update(huggingface_hub.load_state_dict_from_file(out / name))
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and bits(loaded[name]) == bits(tensor), name


def test_one_shard_is_a_plain_model_safetensors(tmp_path: Path) -> None:
    _, state = tied_state()
    src = tmp_path / "m.pt"
    torch.save(state, src)
    api.convert(str(src), str(tmp_path / "out"), max_shard_size="10GB")
    assert shard_files(tmp_path / "out") == ["model.safetensors"]
    again = api.load(str(tmp_path / "out"))
    assert again.meta["reader"] == "safetensors-sharded" and set(again.tensors) == set(state)


def test_rewrite_removes_stale_shards_and_keeps_other_files(tmp_path: Path) -> None:
    _, state = tied_state()
    src = tmp_path / "m.pt"
    torch.save(state, src)
    out = tmp_path / "out"
    api.convert(str(src), str(out), max_shard_size="1KB")
    first = shard_files(out)
    (out / "config.json").write_text("{}")
    (out / "model-00009-of-00012.safetensors").write_bytes(b"left over")
    with pytest.raises(OutputExistsError):
        api.convert(str(src), str(out), max_shard_size="3KB")
    denied = run_cli("convert", str(src), str(out), "--max-shard-size", "3KB")
    assert denied.returncode == 1 and "pass --force" in denied.stderr
    api.convert(str(src), str(out), max_shard_size="3KB", force=True)
    second = shard_files(out)
    count = len(second) - 2
    assert len(first) - 1 > count >= 2
    assert second == sorted(["config.json", "model.safetensors.index.json"] + [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)])
    api.convert(str(src), str(out), max_shard_size="1GB", force=True)
    assert shard_files(out) == ["config.json", "model.safetensors"]
    assert not [name for name in os.listdir(tmp_path) if ".ckpt-migrate-tmp-" in name]


def test_failed_write_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_migrate.converters.writers.safetensors.writer as safetensors_writer

    _, state = tied_state()
    src = tmp_path / "m.pt"
    torch.save(state, src)
    calls = []
    honest = safetensors_writer.write_tensors

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise CorruptFileError("disk trouble", path=str(src))
        return honest(*args, **kwargs)

    monkeypatch.setattr(safetensors_writer, "write_tensors", failing)
    with pytest.raises(CorruptFileError, match="disk trouble"):
        api.convert(str(src), str(tmp_path / "out"), max_shard_size="1KB")
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


@pytest.mark.parametrize("target", ["folder", "index"])
def test_reader_opens_folder_or_index_and_streams_back(tmp_path: Path, target: str) -> None:
    _, state = tied_state()
    src = tmp_path / "m.pt"
    torch.save(state, src)
    api.convert(str(src), str(tmp_path / "out"), max_shard_size="2KB")
    path = tmp_path / "out" if target == "folder" else tmp_path / "out" / "model.safetensors.index.json"
    report = api.inspect(str(path))
    assert report.reader == "safetensors-sharded" and len(report.tensors) == len(state)
    back = api.convert(str(path), str(tmp_path / "single.safetensors"))
    assert back.report.details["path"] == "stream"
    single = load_file(str(tmp_path / "single.safetensors"))
    for name, tensor in state.items():
        assert bits(single[name]) == bits(tensor), name
    done = run_cli("convert", str(path), str(tmp_path / "cli.safetensors"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reader"] == "safetensors-sharded"


def write_index(folder: Path, weight_map: dict) -> Path:
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_reader_refuses_broken_indexes(tmp_path: Path) -> None:
    _, state = tied_state()
    src = tmp_path / "m.pt"
    torch.save(state, src)
    out = tmp_path / "out"
    api.convert(str(src), str(out), max_shard_size="2KB")
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
    first = files[0]
    key = next(name for name, filename in weight_map.items() if filename == first)
    cases = {
        "not a shard file name": {**weight_map, "norm.weight": "../escape.safetensors"},
        "does not hold it": {**weight_map, "ghost.weight": first},
        "which the index maps to": {**weight_map, key: files[1]},
    }
    for message, broken in cases.items():
        write_index(out, broken)
        with pytest.raises(CorruptFileError, match=message):
            api.load(str(out))
    (out / "model.safetensors.index.json").write_text("{not json")
    done = run_cli("convert", str(out), str(tmp_path / "x.safetensors"))
    assert done.returncode == 1 and "not valid JSON" in done.stderr and "Traceback" not in done.stderr
    write_index(out, weight_map)
    os.remove(out / first)
    with pytest.raises(CorruptFileError, match="missing"):
        api.load(str(out))


def test_size_and_destination_usage_errors(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(4)}, src)
    bad_size = run_cli("convert", str(src), str(tmp_path / "out"), "--max-shard-size", "2XB")
    assert bad_size.returncode == 2 and "--max-shard-size '2XB'" in bad_size.stderr
    as_file = run_cli("convert", str(src), str(tmp_path / "one.safetensors"), "--max-shard-size", "2GB")
    assert as_file.returncode == 2 and "give a folder" in as_file.stderr
    assert parse_shard_size("2GB") == 2 * 10**9
    assert parse_shard_size("1.5MB") == 1_500_000
    assert parse_shard_size("4GiB") == 4 * 2**30
    assert parse_shard_size("12345") == 12345
    with pytest.raises(UsageError):
        parse_shard_size("0")


def ref(storage: StorageRef, numel: int, offset: int = 0) -> TensorRef:
    return TensorRef(storage, storage.dtype, (numel,), (1,), offset)


def test_split_keeps_tensors_of_one_storage_together_without_torch() -> None:
    f32 = dtypes.get("float32")

    def storage(numel: int) -> StorageRef:
        return StorageRef(str(numel), f32, numel, "cpu", ByteSource("mem", 0, numel * 4, buffer=bytes(numel * 4)))

    shared = storage(100)
    tensors = OrderedDict([("a", ref(storage(100), 100)), ("tied", ref(shared, 100)), ("b", ref(storage(100), 100)),
                           ("c", ref(storage(100), 100)), ("tied_view", ref(shared, 50, 50)), ("big", ref(storage(1000), 1000))])
    split = sharded.plan_shards(tensors, 800)
    assert split.tensor_to_filename["tied"] == split.tensor_to_filename["tied_view"]
    assert split.tensor_to_filename["big"] not in {split.tensor_to_filename[k] for k in ("a", "b", "c", "tied")}
    assert sorted(split.tensor_to_filename) == sorted(tensors)
    assert all(name.startswith("model-") and name.endswith(".safetensors") for name in split.filename_to_tensors)
