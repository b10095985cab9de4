"""Inference clean-up flags on ``convert``: ``--strip-optimizer``, ``--ema``, ``--dtype fp16|bf16``."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from safetensors.torch import load_file

from ckpt_migrate.cli import main_group
from ckpt_migrate.converters.writers.normalized import same_tensor


class Masked(nn.Module):
    """Float weights, an int64 buffer (BatchNorm's counter) and a bool buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("mask", torch.tensor([True, False, True, True]))
        self.register_buffer("codes", torch.tensor([3, -7, 2**40], dtype=torch.int64))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    torch.manual_seed(21)
    model = Masked()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    model.fc(torch.randn(5, 6)).sum().backward()
    optimizer.step()
    scheduler.step()
    model.bn.num_batches_tracked += 3
    ema = OrderedDict((k, v * 0.5 if v.is_floating_point() else v.clone()) for k, v in model.state_dict().items())
    path = tmp_path_factory.mktemp("flags") / "bundle.pth.tar"
    torch.save({"epoch": 4, "state_dict": model.state_dict(), "state_dict_ema": ema,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0},
                "arch": "masked"}, path)
    return path, model.state_dict(), ema


def convert(*args: str | Path) -> None:
    result = CliRunner().invoke(main_group, ["convert", *(str(a) for a in args)])
    assert result.exit_code == 0, result.output


def test_strip_optimizer_drops_training_state_only(bundle, tmp_path: Path) -> None:
    src, weights, _ = bundle
    convert(src, tmp_path / "infer.pt", "--strip-optimizer")
    loaded = torch.load(tmp_path / "infer.pt", weights_only=True)
    assert sorted(loaded) == ["epoch", "extra", "meta", "model_state_dict"]
    assert loaded["extra"]["arch"] == "masked"
    assert "state_dict_ema" in loaded["extra"]
    assert loaded["meta"]["stripped"] == ["optimizer", "scaler", "scheduler"]
    assert all(same_tensor(weights[k], loaded["model_state_dict"][k]) for k in weights)


def test_without_strip_the_training_state_is_kept(bundle, tmp_path: Path) -> None:
    src, _, _ = bundle
    convert(src, tmp_path / "full.pt")
    loaded = torch.load(tmp_path / "full.pt", weights_only=True)
    assert {"optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict"} <= set(loaded)
    assert loaded["scaler_state_dict"]["scale"] == 512.0


@pytest.mark.parametrize("dst_name", ["ema.safetensors", "ema.pt"])
def test_ema_takes_the_ema_weights(bundle, tmp_path: Path, dst_name: str) -> None:
    src, weights, ema = bundle
    convert(src, tmp_path / dst_name, "--ema", "--strip-optimizer")
    if dst_name.endswith(".safetensors"):
        written = load_file(str(tmp_path / dst_name))
    else:
        written = torch.load(tmp_path / dst_name, weights_only=True)["model_state_dict"]
    assert sorted(written) == sorted(ema)
    assert all(same_tensor(ema[k], written[k]) for k in ema)
    assert not same_tensor(weights["fc.weight"], written["fc.weight"])


def test_ema_without_ema_weights_fails_clearly(tmp_path: Path) -> None:
    src = tmp_path / "plain.pth"
    torch.save({"state_dict": Masked().state_dict(), "epoch": 1}, src)
    result = CliRunner().invoke(main_group, ["convert", str(src), str(tmp_path / "x.safetensors"), "--ema"])
    assert result.exit_code == 1
    assert "--ema: no EMA weights" in result.output
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("flag,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("dst_name", ["cast.safetensors", "cast.pt"])
def test_dtype_casts_floating_tensors_only(bundle, tmp_path: Path, flag: str, dtype: torch.dtype, dst_name: str) -> None:
    src, weights, _ = bundle
    convert(src, tmp_path / dst_name, "--dtype", flag)
    if dst_name.endswith(".safetensors"):
        written = load_file(str(tmp_path / dst_name))
    else:
        loaded = torch.load(tmp_path / dst_name, weights_only=True)
        written = loaded["model_state_dict"]
        momentum = loaded["optimizer_state_dict"]["state"][0]["momentum_buffer"]
        assert momentum.dtype == torch.float32
    assert sorted(written) == sorted(weights)
    for name, tensor in weights.items():
        if tensor.is_floating_point():
            assert written[name].dtype == dtype, name
            assert same_tensor(tensor.to(dtype), written[name]), name
        else:
            assert same_tensor(tensor, written[name]), name
    assert written["mask"].dtype == torch.bool and written["codes"][2].item() == 2**40
    assert written["bn.num_batches_tracked"].dtype == torch.int64


def test_flags_combine(bundle, tmp_path: Path) -> None:
    src, _, ema = bundle
    convert(src, tmp_path / "small.pt", "--ema", "--dtype", "bf16", "--strip-optimizer")
    loaded = torch.load(tmp_path / "small.pt", weights_only=True)
    assert "optimizer_state_dict" not in loaded
    model = loaded["model_state_dict"]
    assert same_tensor(ema["fc.weight"].to(torch.bfloat16), model["fc.weight"])
    assert same_tensor(ema["mask"], model["mask"])
