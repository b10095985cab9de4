"""Every reader and kind of issue 2: safetensors output equals ``model.state_dict()`` bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ckpt_migrate
from ckpt_migrate.api import convert, load
from ckpt_migrate.model.equality import same_tensor as bytes_equal

from conftest import run_cli

FIXTURE_FILES = [
    ("lenet_state_dict.pth", "torch-zip", "state_dict"),
    ("lenet_whole_model.pt", "torch-zip", "full_model"),
    ("lenet_legacy_state_dict.pth", "torch-legacy", "state_dict"),
    ("lenet_legacy_whole_model.pkl", "torch-legacy", "full_model"),
    ("lenet_protocol2.pth", "torch-zip", "state_dict"),
    ("lenet_protocol3.pth", "torch-zip", "state_dict"),
    ("lenet_protocol4.pth", "torch-zip", "state_dict"),
    ("lenet_protocol5.pth", "torch-zip", "state_dict"),
    ("checkpoint.tar", "torch-zip", "bundle"),
    ("checkpoint_4_epoch.pkl", "torch-legacy", "bundle"),
    ("dataparallel_state_dict.pth", "torch-zip", "state_dict"),
    ("dataparallel_whole_model.pt", "torch-zip", "full_model"),
    ("nested_whole_model.pt", "torch-zip", "full_model"),
    ("nested_legacy_whole_model.pt", "torch-legacy", "full_model"),
    ("lightning.ckpt", "torch-zip", "lightning"),
    ("every_dtype.pth", "torch-zip", "state_dict"),
    ("every_dtype_legacy.pth", "torch-legacy", "state_dict"),
    ("tied_weights.pth", "torch-zip", "state_dict"),
]


def expected_state(fixture_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    path = fixture_dir / "expected" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        order = json.loads(handle.metadata()["order"])
    return load_file(str(path)), order


@pytest.mark.parametrize("name,fmt,kind", FIXTURE_FILES)
def test_safetensors_output_equals_state_dict(fixture_dir: Path, tmp_path: Path, name: str, fmt: str, kind: str) -> None:
    src = fixture_dir / "models" / name
    before = src.read_bytes()
    checkpoint = load(src)
    expected, order = expected_state(fixture_dir, name)
    assert checkpoint.format == fmt
    assert checkpoint.kind == kind
    assert list(checkpoint.tensors) == order
    for key, ref in checkpoint.tensors.items():
        assert ref.dtype.name == str(expected[key].dtype).removeprefix("torch."), key
        assert ref.shape == tuple(expected[key].shape), key
    dst = tmp_path / "out.safetensors"
    result = convert(src, dst)
    assert result.report.verified
    written = load_file(str(dst))
    assert sorted(written) == sorted(expected)
    for key, tensor in expected.items():
        assert bytes_equal(written[key], tensor), key
    assert src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_whole_model_opens_in_fresh_process_without_the_class(fixture_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "lenet.safetensors"
    proc = run_cli("convert", str(fixture_dir / "models" / "lenet_whole_model.pt"), str(dst), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected, _ = expected_state(fixture_dir, "lenet_whole_model.pt")
    written = load_file(str(dst))
    assert sorted(written) == sorted(expected)
    assert all(bytes_equal(written[k], v) for k, v in expected.items())
    with safe_open(str(dst), framework="pt") as handle:
        assert "__main__.LeNet" not in dir(__import__("__main__"))
        meta = handle.metadata()
    assert meta["format"] == "pt"
    assert meta["reader"] == "torch-zip"
    assert meta["source_sha256"] == __import__("hashlib").sha256((fixture_dir / "models" / "lenet_whole_model.pt").read_bytes()).hexdigest()


def test_non_persistent_buffers_are_not_weights(fixture_dir: Path) -> None:
    checkpoint = load(fixture_dir / "models" / "nested_whole_model.pt")
    assert "cache" not in checkpoint.tensors
    assert "scale" in checkpoint.tensors
    assert "branches.b.0.weight" in checkpoint.tensors
    assert "heads.1.bias" in checkpoint.tensors


def test_dataparallel_whole_model_keeps_module_prefix(fixture_dir: Path) -> None:
    checkpoint = load(fixture_dir / "models" / "dataparallel_whole_model.pt")
    assert all(k.startswith("module.") for k in checkpoint.tensors)


def test_bundle_extras_are_inert_data(fixture_dir: Path) -> None:
    checkpoint = load(fixture_dir / "models" / "checkpoint_4_epoch.pkl")
    assert checkpoint.extras["epoch"] == 4
    assert set(checkpoint.extras) >= {"optimizer_state_dict", "loss", "scheduler"}
    assert checkpoint.extras["scheduler"]["last_epoch"] == 4
    assert checkpoint.extras["optimizer_state_dict"]["param_groups"][0]["momentum"] == 0.9


def test_tied_tensors_written_under_every_name(fixture_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "tied.safetensors"
    convert(fixture_dir / "models" / "tied_weights.pth", dst)
    written = load_file(str(dst))
    assert torch.equal(written["embed"], written["lm_head"])


def test_lightning_metadata_and_scalars(fixture_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "l.safetensors"
    convert(fixture_dir / "models" / "lightning.ckpt", dst)
    with safe_open(str(dst), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["epoch"]) == 3
    assert json.loads(meta["global_step"]) == 120
    assert meta["kind"] == "lightning"


def test_bundle_loss_tensor_becomes_metadata(fixture_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "b.safetensors"
    convert(fixture_dir / "models" / "checkpoint.tar", dst)
    reference = torch.load(fixture_dir / "models" / "checkpoint.tar", weights_only=True)
    with safe_open(str(dst), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["loss"]) == pytest.approx(float(reference["loss"]))
    assert json.loads(meta["epoch"]) == reference["epoch"]


def test_select_and_ambiguous_bundles(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(3, 3)
    path = tmp_path / "two.pth"
    torch.save({"model": first.state_dict(), "state_dict": second.state_dict(), "epoch": 1}, path)
    with pytest.raises(ckpt_migrate.errors.SelectionError, match="ambiguous bundle.*state_dict, model"):
        load(path)
    chosen = load(path, select="model")
    assert bytes_equal(chosen.materialize()["weight"], first.weight.detach())
    proc = run_cli("convert", str(path), str(tmp_path / "x.safetensors"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "two.pth" in proc.stderr and "--select" in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_ema_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    path = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 9}, path)
    assert bytes_equal(load(path).materialize()["weight"], model.weight.detach())
    assert bytes_equal(load(path, ema=True).materialize()["weight"], ema.weight.detach())
    with pytest.raises(ckpt_migrate.errors.SelectionError, match="--ema"):
        load(_save(tmp_path, {"state_dict": model.state_dict()}), ema=True)


def _save(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "plain.pth"
    torch.save(obj, path)
    return path


def test_inert_extras_of_every_kind(tmp_path: Path) -> None:
    import argparse
    import collections
    import datetime
    import pathlib

    import numpy

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    values = {
        "args": argparse.Namespace(lr=0.1, name="run"),
        "array": numpy.arange(6, dtype=numpy.float32).reshape(2, 3),
        "np_scalar": numpy.float64(0.25),
        "when": datetime.datetime(2019, 5, 4, 12, 30),
        "where": pathlib.PurePosixPath("/data/run1"),
        "tags": {"a", "b"},
        "window": slice(1, 5, 2),
        "z": complex(1, -2),
        "counts": collections.defaultdict(list, {"x": [1, 2]}),
    }
    path = tmp_path / "extras.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 5, **values}, path, _use_new_zipfile_serialization=False)
    checkpoint = load(path)
    extras = checkpoint.extras
    assert vars(extras["args"]) == {"lr": 0.1, "name": "run"}
    assert numpy.array_equal(extras["array"], values["array"])
    assert extras["np_scalar"] == 0.25
    assert extras["when"] == values["when"]
    assert str(extras["where"]) == "/data/run1"
    assert set(extras["tags"]) == {"a", "b"}
    assert extras["window"] == slice(1, 5, 2)
    assert extras["z"] == complex(1, -2)
    assert dict(extras["counts"]) == {"x": [1, 2]}
    report = ckpt_migrate.api.inspect(path)
    assert report.epoch == 5
    assert report.extras["args"] == {"namespace": {"lr": 0.1, "name": "run"}}
    assert report.extras["window"] == {"slice": [1, 5, 2]}


def test_cuda_saved_file_opens_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.serialization as serialization

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    monkeypatch.setattr(serialization, "location_tag", lambda storage: "cuda:0")
    path = tmp_path / "gpu.pth"
    torch.save(model.state_dict(), path)
    monkeypatch.undo()
    checkpoint = load(path)
    assert {ref.storage.location for ref in checkpoint.tensors.values()} == {"cuda:0"}
    dst = tmp_path / "gpu.safetensors"
    convert(path, dst)
    written = load_file(str(dst))
    assert bytes_equal(written["weight"], model.weight.detach())


def test_torchscript_archive_weights_without_running_code(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    checkpoint = load(path)
    assert checkpoint.format == "torchscript"
    assert checkpoint.kind == "torchscript"
    state = model.state_dict()
    got = checkpoint.materialize()
    assert sorted(got) == sorted(state)
    assert all(bytes_equal(got[k], v) for k, v in state.items())


def test_safetensors_input_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"a": torch.arange(6, dtype=torch.int16).reshape(2, 3), "b": torch.randn(2, generator=torch.Generator().manual_seed(1)).bfloat16()}
    src = tmp_path / "in.safetensors"
    save_file(tensors, str(src), metadata={"note": "kept"})
    dst = tmp_path / "out.safetensors"
    convert(src, dst)
    written = load_file(str(dst))
    assert all(bytes_equal(written[k], v) for k, v in tensors.items())
    with safe_open(str(dst), framework="pt") as handle:
        assert handle.metadata()["note"] == "kept"


def test_sniffing_ignores_the_extension(fixture_dir: Path, tmp_path: Path) -> None:
    disguised = tmp_path / "weights.safetensors.bin"
    disguised.write_bytes((fixture_dir / "models" / "lenet_legacy_state_dict.pth").read_bytes())
    assert load(disguised).format == "torch-legacy"


def test_existing_output_needs_force(fixture_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    proc = run_cli("convert", str(fixture_dir / "models" / "lenet_state_dict.pth"), str(dst))
    assert proc.returncode == 1
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert dst.read_bytes() == b"precious"
    proc = run_cli("convert", str(fixture_dir / "models" / "lenet_state_dict.pth"), str(dst), "--force")
    assert proc.returncode == 0, proc.stderr
    assert len(load_file(str(dst))) == 10


def test_failed_verification_leaves_nothing_general_path(fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_migrate.converters.writers.safetensors.writer as safetensors_writer

    monkeypatch.setattr(safetensors_writer, "same_tensor", lambda a, b: False)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(ckpt_migrate.errors.VerificationError):
        convert(fixture_dir / "models" / "lenet_state_dict.pth", dst, stream=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_leaves_nothing_stream_path(fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_migrate.converters.writers.safetensors.stream as stream

    real_write = stream._pwrite_all

    def corrupting_write(fd: int, view: memoryview, offset: int) -> None:
        data = bytearray(view)
        if len(data) > 64:
            data[-1] ^= 0xFF
        real_write(fd, memoryview(data), offset)

    monkeypatch.setattr(stream, "_pwrite_all", corrupting_write)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(ckpt_migrate.errors.VerificationError):
        convert(fixture_dir / "models" / "lenet_state_dict.pth", dst, stream=True)
    assert list(tmp_path.iterdir()) == []


def test_complex128_is_refused_clearly_for_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({"z": torch.zeros(2, dtype=torch.complex128)}, path)
    proc = run_cli("convert", str(path), str(tmp_path / "c.safetensors"))
    assert proc.returncode == 1
    assert "complex128" in proc.stderr and "c.pth" in proc.stderr
    assert not (tmp_path / "c.safetensors").exists()


def test_untyped_storage_dtypes_float8_and_uint16(tmp_path: Path) -> None:
    state = {
        "f8": torch.tensor([0.5, -1.0, 2.0]).to(torch.float8_e4m3fn),
        "f8b": torch.tensor([1.0, 4.0]).to(torch.float8_e5m2),
        "u16": torch.tensor([1, 2, 65535], dtype=torch.int32).to(torch.uint16),
    }
    src = tmp_path / "new_dtypes.pth"
    torch.save(state, src)
    dst = tmp_path / "new_dtypes.safetensors"
    convert(src, dst)
    written = load_file(str(dst))
    for key, tensor in state.items():
        assert bytes_equal(written[key], tensor), key
