"""Files of real frameworks, built in code: non-weight content, several weight sets, EMA, numpy weights, joblib, the storage account."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import ckpt_migrate
from safetensors.torch import load_file

from ckpt_migrate.api import convert, inspect
from ckpt_migrate.model.equality import same_tensor as bytes_equal

from conftest import run_cli
from helpers_frameworks import DetectionModel


def _one_line_failure(src: Path, tmp_path: Path, expected: str) -> None:
    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", str(src), str(out))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "unsafe" not in proc.stderr and not out.exists()


def test_optimizer_only_state_dict_is_not_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    src = tmp_path / "optimizer.pth"
    torch.save(optimizer.state_dict(), src)
    _one_line_failure(src, tmp_path, "holds optimizer state (state, param_groups), no model weights — use --to normalized to keep it")
    report = inspect(src)
    assert report.kind == "optimizer" and report.tensors == []
    assert all(s["status"] == "left out" for s in report.storages["storages"])


def test_rng_state_file_is_not_weights(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    src = tmp_path / "rng_state.pth"
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, src)
    _one_line_failure(src, tmp_path, "holds random-number-generator state (cpu, numpy, python), no model weights")


def test_several_models_in_one_file_are_listed_and_one_selected(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model_a, model_b = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    src = tmp_path / "ab.tar"
    torch.save({"modelA_state_dict": model_a.state_dict(), "modelB_state_dict": model_b.state_dict(),
                "optimizerA_state_dict": opt_a.state_dict(), "optimizerB_state_dict": opt_b.state_dict()}, src)
    _one_line_failure(src, tmp_path, "several weight sets in one file (modelA_state_dict, modelB_state_dict); choose one with --select KEY")
    out = tmp_path / "b.safetensors"
    convert(src, out, select="modelB_state_dict")
    written = load_file(str(out))
    assert sorted(written) == sorted(model_b.state_dict())
    assert all(bytes_equal(written[k], v) for k, v in model_b.state_dict().items())


def test_ultralytics_ema_is_used_when_model_is_none(tmp_path: Path) -> None:
    torch.manual_seed(3)
    ema = DetectionModel().half()
    src = tmp_path / "last.pt"
    torch.save({"epoch": 3, "best_fitness": np.float64(0.5), "model": None, "ema": ema, "updates": 12,
                "optimizer": None, "train_args": {"imgsz": 640}}, src)
    out = tmp_path / "last.safetensors"
    result = convert(src, out)
    written = load_file(str(out))
    assert sorted(written) == sorted(ema.state_dict())
    assert all(bytes_equal(written[k], v) for k, v in ema.state_dict().items())
    account = result.checkpoint.account
    assert not account.unexplained
    assert [e.where for e in account.of_status("left out")] == ["ema.stride"]


def test_ultralytics_model_by_default_and_ema_on_request(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model, ema = DetectionModel().half(), DetectionModel().half()
    src = tmp_path / "best.pt"
    torch.save({"model": model, "ema": ema, "optimizer": None}, src)
    convert(src, tmp_path / "model.safetensors")
    convert(src, tmp_path / "ema.safetensors", ema=True)
    for name, expected in (("model", model), ("ema", ema)):
        written = load_file(str(tmp_path / f"{name}.safetensors"))
        assert all(bytes_equal(written[k], v) for k, v in expected.state_dict().items())


@pytest.mark.parametrize("layout", ["model", "blobs", "top"])
def test_caffe2_style_numpy_pickle_becomes_tensors_exactly(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(5)
    arrays = {"conv1_w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv1_b": rng.standard_normal(4).astype(np.float16),
              "fc_w": rng.standard_normal((2, 5)).astype(">f8"), "steps": np.arange(3, dtype=np.int64),
              "fortran": np.asfortranarray(rng.standard_normal((3, 2)).astype(np.float32))}
    root = {"model": arrays, "__author__": "Detectron"} if layout == "model" else {"blobs": arrays} if layout == "blobs" else arrays
    src = tmp_path / "model_final.pkl"
    with open(src, "wb") as handle:
        pickle.dump(root, handle, protocol=2)
    out = tmp_path / "out.safetensors"
    convert(src, out)
    written = load_file(str(out))
    assert sorted(written) == sorted(arrays)
    for name, array in arrays.items():
        expected = torch.from_numpy(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="))))
        assert bytes_equal(written[name], expected), name


def test_joblib_dump_gets_one_line(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    src = tmp_path / "model.joblib"
    joblib.dump({"coef": np.arange(6.0).reshape(2, 3), "name": "ridge"}, src)
    _one_line_failure(src, tmp_path, "a joblib pickle")


def test_non_persistent_buffer_is_accounted(tmp_path: Path) -> None:
    model = torch.nn.BatchNorm1d(3)
    model.register_buffer("cache", torch.ones(5), persistent=False)
    src = tmp_path / "whole.pt"
    torch.save(model, src)
    report = inspect(src)
    left = [s for s in report.storages["storages"] if s["status"] == "left out"]
    assert [(s["where"], s["reason"]) for s in left] == [("_buffers.cache", "non-persistent buffer (not in state_dict)")]


def test_weight_bearing_bytes_left_out_without_reason_fail(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = torch.nn.Linear(3, 2)
    src = tmp_path / "bundle.pt"
    torch.save({"model": model.state_dict(), "lookup_table": torch.randn(10, 10), "epoch": 1}, src)
    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", str(src), str(out))
    assert proc.returncode == 1
    assert "would leave out 1 weight-bearing storage(s) with no known reason: lookup_table (400 bytes)" in proc.stderr
    assert not out.exists()
    convert(src, tmp_path / "keep.pt")
    kept = torch.load(tmp_path / "keep.pt", weights_only=True)
    assert all(bytes_equal(kept["model_state_dict"][k], v) for k, v in model.state_dict().items())


def test_optimizer_state_of_a_bundle_is_accounted_as_optimizer_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = tmp_path / "bundle.tar"
    torch.save({"epoch": 1, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)
    report = ckpt_migrate.inspect(path).to_dict()
    left_out = [s for s in report["storages"]["storages"] if s["status"] == "left out"]
    assert len(left_out) == 2 and {s["reason"] for s in left_out} == {"optimizer state"}


def test_per_channel_quantized_weights_keep_scales_and_zero_points(tmp_path: Path) -> None:
    import json

    from safetensors import safe_open

    torch.manual_seed(0)
    weight = torch.randn(4, 3)
    scales = torch.tensor([0.1, 0.02, 0.5, 0.003], dtype=torch.float64)
    zero_points = torch.tensor([0, 1, -2, 3], dtype=torch.int64)
    q = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
    per_tensor = torch.quantize_per_tensor(weight, 0.05, 2, torch.quint8)
    path = tmp_path / "q.pt"
    torch.save({"fc.weight": q, "head.weight": per_tensor}, path)
    out = tmp_path / "q.safetensors"
    ckpt_migrate.convert(path, out)
    with safe_open(str(out), "pt") as handle:
        names = set(handle.keys())
        assert names == {"fc.weight", "fc.weight.q_per_channel_scales", "fc.weight.q_per_channel_zero_points", "head.weight"}
        assert torch.equal(handle.get_tensor("fc.weight"), q.int_repr())
        assert torch.equal(handle.get_tensor("fc.weight.q_per_channel_scales"), q.q_per_channel_scales())
        assert torch.equal(handle.get_tensor("fc.weight.q_per_channel_zero_points"), q.q_per_channel_zero_points())
        assert torch.equal(handle.get_tensor("head.weight"), per_tensor.int_repr())
        record = json.loads(handle.metadata()["quantization"])
    assert record["fc.weight"]["params"][:2] == [{"tensor": "fc.weight.q_per_channel_scales"}, {"tensor": "fc.weight.q_per_channel_zero_points"}]
    assert record["fc.weight"]["params"][2] == 0
    assert record["head.weight"]["params"] == [0.05, 2]
