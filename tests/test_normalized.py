"""The ``normalized`` writer: canonical keys, real optimizer/scheduler/scaler state, plain extras, verification."""

from __future__ import annotations

import json
import argparse
import os
import pathlib
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.api import convert
from ckpt_migrate.cli import main_group
from ckpt_migrate.converters.writers.normalized import compare_structures, strip_wrapper_prefixes
from ckpt_migrate.errors import VerificationError


def decay(epoch: int) -> float:
    return 0.9 ** epoch


class Config:
    """A user's config object: no import needed to keep its attributes as a dict."""

    def __init__(self) -> None:
        self.width = 3
        self.name = "cfg"


def small_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def stepped(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2) -> None:
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(6, 4, generator=generator)).pow(2).sum().backward()
        optimizer.step()


def write(src: Path, dst: Path, *args: str) -> None:
    result = CliRunner().invoke(main_group, ["convert", str(src), str(dst), *args])
    assert result.exit_code == 0, result.output


def test_registered_with_its_suffixes() -> None:
    assert "normalized" in registry.list_writers()
    for suffix in (".pt", ".pth", ".tar", ".ckpt"):
        assert registry.writer_for_destination(f"out{suffix}") == "normalized"


@pytest.mark.parametrize("names,expected,stripped", [
    (["module.a", "module.b"], ["a", "b"], ["module."]),
    (["_orig_mod.module.a", "_orig_mod.module.b"], ["a", "b"], ["_orig_mod.", "module."]),
    (["_forward_module.x"], ["x"], ["_forward_module."]),
    (["module.a", "b"], ["module.a", "b"], []),
    (["module.", "module.a"], ["module.", "module.a"], []),
    ([], [], []),
])
def test_strip_wrapper_prefixes(names: list[str], expected: list[str], stripped: list[str]) -> None:
    assert strip_wrapper_prefixes(names) == (expected, stripped)


def test_dataparallel_prefix_stripped_and_tensors_bit_exact(tmp_path: Path) -> None:
    model = small_model()
    state = OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items())
    src = tmp_path / "ddp.pth"
    torch.save(state, src)
    write(src, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(loaded["model_state_dict"]) == list(model.state_dict())
    assert compare_structures(model.state_dict(), loaded["model_state_dict"]) is None
    assert loaded["meta"]["stripped_prefixes"] == ["module."]
    assert loaded["meta"]["format"] == "ckpt-migrate-normalized"
    assert loaded["meta"]["source"] == src.name and str(tmp_path) not in json.dumps(loaded["meta"], default=str)
    assert len(loaded["meta"]["source_sha256"]) == 64
    assert loaded["meta"]["reader"] == "torch-zip"
    assert "optimizer_state_dict" not in loaded and "extra" not in loaded


def test_whole_optimizer_with_two_groups_equals_its_state_dict(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.Adam([{"params": list(model[0].parameters())},
                                  {"params": list(model[1].parameters()) + list(model[3].parameters()), "lr": 0.01}], lr=0.1)
    stepped(model, optimizer)
    src = tmp_path / "whole.pt"
    torch.save({"net": model, "optim": optimizer, "epoch": torch.tensor(5)}, src)
    write(src, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert compare_structures(optimizer.state_dict(), loaded["optimizer_state_dict"]) is None
    assert loaded["epoch"] == 5 and isinstance(loaded["epoch"], int)
    fresh = small_model()
    again = torch.optim.Adam([{"params": list(fresh[0].parameters())},
                              {"params": list(fresh[1].parameters()) + list(fresh[3].parameters()), "lr": 0.01}], lr=0.1)
    again.load_state_dict(loaded["optimizer_state_dict"])
    assert compare_structures(optimizer.state_dict(), again.state_dict()) is None


@pytest.mark.parametrize("make", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3),
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, decay),
    lambda opt: torch.optim.lr_scheduler.SequentialLR(opt, [torch.optim.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=2),
                                                            torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)], milestones=[2]),
], ids=["steplr", "lambdalr", "sequentiallr"])
def test_whole_scheduler_object_equals_its_state_dict(tmp_path: Path, make) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make(optimizer)
    for _ in range(3):
        stepped(model, optimizer, 1)
        scheduler.step()
    src = tmp_path / "bundle.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer": optimizer, "lr_scheduler": scheduler}, src)
    write(src, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert compare_structures(scheduler.state_dict(), loaded["scheduler_state_dict"]) is None
    assert loaded["meta"]["taken_from"] == {"optimizer_state_dict": "optimizer", "scheduler_state_dict": "lr_scheduler"}
    assert loaded["meta"]["optimizer_param_names"] == [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize("whole", [False, True], ids=["state_dict", "object"])
def test_grad_scaler_state(tmp_path: Path, whole: bool) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for _ in range(2):
        optimizer.zero_grad()
        scaler.scale(model(torch.ones(3, 4)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    src = tmp_path / "amp.pt"
    torch.save({"model_state_dict": model.state_dict(), "scaler": scaler if whole else scaler.state_dict()}, src)
    write(src, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert loaded["scaler_state_dict"] == scaler.state_dict()
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(loaded["scaler_state_dict"])
    assert restored.state_dict() == scaler.state_dict()


def test_extras_become_plain_data_and_the_rest_is_listed(tmp_path: Path) -> None:
    model = small_model()
    src = tmp_path / "odd.pt"
    torch.save({
        "state_dict": model.state_dict(),
        "args": argparse.Namespace(lr=0.1, layers=[1, 2]),
        "config": Config(),
        "history": np.arange(4, dtype=np.float32),
        "best": np.float64(0.25),
        "path": pathlib.PurePosixPath("/data/run1"),
        "tags": {"a", "b"},
        "schedule_fn": decay,
        "device": torch.device("cpu"),
        "dtype": torch.float16,
        "step_tensor": torch.tensor([1, 2, 3]),
        "loss": torch.tensor(0.125),
    }, src)
    write(src, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    extra = loaded["extra"]
    assert extra["args"] == {"lr": 0.1, "layers": [1, 2]}
    assert extra["config"] == {"width": 3, "name": "cfg"}
    assert torch.equal(extra["history"], torch.arange(4, dtype=torch.float32))
    assert extra["best"] == 0.25 and isinstance(extra["best"], float)
    assert extra["path"] == "/data/run1"
    assert extra["tags"] == {"a", "b"}
    assert extra["device"] == torch.device("cpu")
    assert extra["dtype"] is torch.float16
    assert torch.equal(extra["step_tensor"], torch.tensor([1, 2, 3]))
    assert loaded["loss"] == 0.125 and isinstance(loaded["loss"], float)
    assert "schedule_fn" not in extra
    meta = loaded["meta"]
    assert meta["unrepresentable"]["extra.schedule_fn"].startswith("reference to ")
    assert meta["unrepresentable"]["extra.schedule_fn"].endswith(".decay")
    assert meta["converted"]["extra.args"] == "argparse.Namespace → dict"
    assert meta["converted"]["extra.config"].endswith("Config object → dict of its attributes")
    assert meta["converted"]["extra.history"] == "numpy.ndarray → tensor"
    assert meta["converted"]["loss"] == "tensor → float"


def test_lightning_checkpoint_unwraps_single_optimizer_and_scheduler(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    stepped(model, optimizer)
    scheduler.step()
    src = tmp_path / "last.ckpt"
    torch.save({"state_dict": OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items()),
                "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
                "epoch": 3, "global_step": 12, "pytorch-lightning_version": "1.9.0",
                "hyper_parameters": {"lr": 0.1}}, src)
    write(src, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert compare_structures(optimizer.state_dict(), loaded["optimizer_state_dict"]) is None
    assert compare_structures(scheduler.state_dict(), loaded["scheduler_state_dict"]) is None
    assert loaded["epoch"] == 3
    assert loaded["extra"] == {"global_step": 12, "pytorch-lightning_version": "1.9.0", "hyper_parameters": {"lr": 0.1}}


def test_normalized_to_normalized_keeps_layout_and_records_first_meta(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    stepped(model, optimizer)
    src = tmp_path / "bundle.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "epoch": 1, "note": "hello"}, src)
    write(src, tmp_path / "first.pt")
    write(tmp_path / "first.pt", tmp_path / "second.pt")
    first = torch.load(tmp_path / "first.pt", weights_only=True)
    second = torch.load(tmp_path / "second.pt", weights_only=True)
    assert compare_structures({k: v for k, v in first.items() if k != "meta"}, {k: v for k, v in second.items() if k != "meta"}) is None
    assert second["extra"] == {"note": "hello"}
    assert second["meta"]["source_meta"]["source"] == src.name
    assert second["meta"]["source"] == "first.pt"


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = tmp_path / "sd.pth"
    torch.save(small_model().state_dict(), src)
    dst = tmp_path / "out.pt"
    dst.write_bytes(b"keep me")
    result = CliRunner().invoke(main_group, ["convert", str(src), str(dst)])
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.output
    assert dst.read_bytes() == b"keep me"
    write(src, dst, "--force")
    assert "model_state_dict" in torch.load(dst, weights_only=True)


def test_verification_failure_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "sd.pth"
    torch.save(small_model().state_dict(), src)
    real_save = torch.save

    def corrupting_save(obj, path, *args, **kwargs):
        damaged = dict(obj)
        damaged["model_state_dict"] = OrderedDict((k, v + 1 if v.is_floating_point() else v) for k, v in obj["model_state_dict"].items())
        return real_save(damaged, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", corrupting_save)
    dst = tmp_path / "out.pt"
    with pytest.raises(VerificationError, match="tensor model_state_dict.0.weight differs"):
        convert(src, dst)
    assert not dst.exists()
    assert sorted(os.listdir(tmp_path)) == ["sd.pth"]


def test_quantized_tensors_stay_quantized(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(4)
        state = {"w": torch.quantize_per_tensor(torch.randn(4, 3), 0.1, 3, torch.qint8),
                 "c": torch.quantize_per_channel(torch.randn(4, 3), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
                                                 torch.tensor([0, 1, 2, 3]), 0, torch.quint8),
                 "b": torch.randn(3)}
    src = tmp_path / "q.pt"
    torch.save(state, src)
    write(src, tmp_path / "out.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.load(tmp_path / "out.pt", weights_only=True)["model_state_dict"]
        assert compare_structures(state, dict(loaded)) is None
        assert loaded["c"].qscheme() == torch.per_channel_affine
