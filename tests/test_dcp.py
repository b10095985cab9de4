"""torch.distributed.checkpoint folders: read without torch's unpickling, written with torch's own writer."""

from __future__ import annotations

import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from click.testing import CliRunner
from safetensors.torch import load_file

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.api import load
from ckpt_migrate.cli import main_group
from ckpt_migrate.converters.readers.dcp import unflatten
from ckpt_migrate.converters.writers.normalized import compare_structures


class Evil:
    """Pickles as a call to os.system: must be refused, never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 4, 4, generator=generator)).sum().backward()
        optimizer.step()
    return model, optimizer


def torch_dcp_save(state: dict, folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)


def cli(*args: str):
    return CliRunner().invoke(main_group, [str(a) for a in args])


def test_registered() -> None:
    assert "dcp" in registry.list_readers()
    assert "dcp" in registry.list_writers()


def test_torch_file_to_dcp_to_safetensors_equals_source(tmp_path: Path) -> None:
    model, optimizer = trained()
    src = tmp_path / "bundle.pth"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 2}, src)
    folder = tmp_path / "ckpt_dcp"
    result = cli("convert", src, folder, "--to", "dcp")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(folder)) == [".metadata", "__0_0.distcp"]
    assert sorted(os.listdir(tmp_path)) == ["bundle.pth", "ckpt_dcp"]

    result = cli("convert", folder, tmp_path / "model.safetensors")
    assert result.exit_code == 0, result.output
    written = load_file(str(tmp_path / "model.safetensors"))
    expected = model.state_dict()
    assert sorted(written) == sorted(expected)
    assert compare_structures(dict(expected), {k: written[k] for k in expected}) is None


def test_dcp_to_normalized_restores_optimizer(tmp_path: Path) -> None:
    model, optimizer = trained()
    src = tmp_path / "bundle.pth"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 2,
                "loss": 0.5}, src)
    folder = tmp_path / "out.dcp"
    assert cli("convert", src, folder, "--to", "dcp").exit_code == 0
    assert cli("convert", folder, tmp_path / "resumed.pt").exit_code == 0
    loaded = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert loaded["epoch"] == 2 and loaded["loss"] == 0.5
    assert compare_structures(model.state_dict(), loaded["model_state_dict"]) is None
    assert compare_structures(optimizer.state_dict(), loaded["optimizer_state_dict"]) is None
    fresh = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    again = torch.optim.Adam(fresh.parameters(), lr=0.01)
    again.load_state_dict(loaded["optimizer_state_dict"])
    assert compare_structures(optimizer.state_dict(), again.state_dict()) is None


def test_folder_written_by_torch_itself(tmp_path: Path) -> None:
    model, optimizer = trained()
    folder = tmp_path / "torch_dcp"
    torch_dcp_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7,
                    "tags": ["a", "b"]}, folder)
    checkpoint = load(folder)
    assert checkpoint.format == "dcp"
    assert checkpoint.meta["reader"] == "dcp"
    assert len(checkpoint.meta["source_sha256"]) == 64
    assert list(checkpoint.tensors) == list(model.state_dict())
    assert compare_structures(dict(model.state_dict()), dict(checkpoint.materialize())) is None
    assert cli("convert", folder / ".metadata", tmp_path / "n.pt").exit_code == 0
    loaded = torch.load(tmp_path / "n.pt", weights_only=True)
    assert compare_structures(optimizer.state_dict(), loaded["optimizer_state_dict"]) is None
    assert loaded["epoch"] == 7
    assert loaded["extra"] == {"tags": ["a", "b"]}


def test_inspect_a_folder(tmp_path: Path) -> None:
    model, _ = trained()
    folder = tmp_path / "sd_dcp"
    torch_dcp_save(OrderedDict(model.state_dict()), folder)
    result = cli("inspect", folder, "--json")
    assert result.exit_code == 0, result.output
    assert '"format": "dcp"' in result.output
    assert '"kind": "state_dict"' in result.output


def test_refuses_a_gadget_in_metadata(tmp_path: Path) -> None:
    model, _ = trained()
    folder = tmp_path / "evil_meta"
    torch_dcp_save(model.state_dict(), folder)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    result = cli("convert", folder, tmp_path / "out.safetensors")
    assert result.exit_code == 3, result.output
    assert "os.system" in result.output or "posix.system" in result.output
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_refuses_a_gadget_in_a_non_tensor_item(tmp_path: Path) -> None:
    model, _ = trained()
    folder = tmp_path / "evil_item"
    marker = tmp_path / "pwned"
    torch_dcp_save({"model": model.state_dict(), "payload": Evil(marker)}, folder)
    assert not marker.exists()
    result = cli("convert", folder, tmp_path / "out.pt")
    assert result.exit_code == 3, result.output
    assert "system" in result.output
    assert not marker.exists()


def test_item_outside_the_folder_is_refused(tmp_path: Path) -> None:
    model, _ = trained()
    folder = tmp_path / "escape"
    metadata = torch_dcp_save(model.state_dict(), folder)
    for info in metadata.storage_data.values():
        info.relative_path = "../secret.distcp"
    (tmp_path / "secret.distcp").write_bytes((folder / "__0_0.distcp").read_bytes())
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    result = cli("convert", folder, tmp_path / "out.safetensors")
    assert result.exit_code == 1
    assert "which is not a file inside the folder" in result.output
    assert "Traceback" not in result.output


def test_truncated_distcp_is_a_clear_error(tmp_path: Path) -> None:
    model, _ = trained()
    folder = tmp_path / "short"
    torch_dcp_save(model.state_dict(), folder)
    data = (folder / "__0_0.distcp").read_bytes()
    (folder / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    result = cli("convert", folder, tmp_path / "out.safetensors")
    assert result.exit_code == 1
    assert "runs past the end of __0_0.distcp" in result.output
    assert not (tmp_path / "out.safetensors").exists()


def test_unflatten_builds_dicts_and_lists() -> None:
    flat = OrderedDict([("m.w", 1), ("o.state.0.buf", 2), ("o.groups.0.lr", 3), ("o.groups.1.lr", 4), ("e", 5)])
    paths = {"m.w": ("m", "w"), "o.state.0.buf": ("o", "state", "0", "buf"), "o.groups.0.lr": ("o", "groups", 0, "lr"),
             "o.groups.1.lr": ("o", "groups", 1, "lr"), "e": ("e",)}
    assert unflatten(flat, paths) == {"m": {"w": 1}, "o": {"state": {"0": {"buf": 2}}, "groups": [{"lr": 3}, {"lr": 4}]}, "e": 5}


def test_tensor_saved_in_chunks_is_assembled(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, MetadataIndex, TensorStorageMetadata

    full = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    folder = tmp_path / "chunked"
    saved = torch_dcp_save({"top": full[:2].clone(), "bottom": full[2:].clone()}, folder)
    info = {index.fqn: item for index, item in saved.storage_data.items()}
    properties = saved.state_dict_metadata["top"].properties
    chunks = [ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=torch.Size([2, 6])),
              ChunkStorageMetadata(offsets=torch.Size([2, 0]), sizes=torch.Size([2, 6]))]
    metadata = Metadata(
        state_dict_metadata={"w": TensorStorageMetadata(properties, torch.Size([4, 6]), chunks)},
        planner_data={"w": ("w",)},
        storage_data={MetadataIndex("w", torch.Size([0, 0]), 0): info["top"],
                      MetadataIndex("w", torch.Size([2, 0]), 1): info["bottom"]},
    )
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    result = cli("convert", folder, tmp_path / "w.safetensors")
    assert result.exit_code == 0, result.output
    assert same_bits(load_file(str(tmp_path / "w.safetensors"))["w"], full)

    metadata.state_dict_metadata["w"].chunks.pop()
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    result = cli("convert", folder, tmp_path / "w2.safetensors")
    assert result.exit_code == 1
    assert "chunks of tensor 'w' cover 12 of its 24 elements" in result.output


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return compare_structures(a, b) is None
