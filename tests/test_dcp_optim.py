"""DCP output keys optimizer state by parameter name, so ``dcp.load`` into ``get_state_dict(model, optimizer)`` works.

A bundle saved after two steps is converted to a DCP folder; a fresh model and optimizer load it
through ``get_state_dict``/``set_state_dict`` and two more steps give parameters bit-identical to
four uninterrupted steps (SGD with momentum, Adam). The folder converts back to a normalized file
whose integer-keyed optimizer state ``optimizer.load_state_dict`` accepts.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import pytest
import torch

from ckpt_migrate.api import convert

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv1(x))).flatten(1))


OPTIMIZERS: dict[str, Callable] = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
}


def steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, start: int, stop: int) -> None:
    generator = torch.Generator().manual_seed(4)
    data = [(torch.randn(2, 1, 6, 6, generator=generator), torch.randint(0, 3, (2,), generator=generator)) for _ in range(stop)]
    model.train()
    for x, y in data[start:stop]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def fresh(kind: str, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = ConvNet()
    return model, OPTIMIZERS[kind](model.parameters())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_dcp_load_into_get_state_dict_resumes_bit_exactly(tmp_path: Path, kind: str, legacy: bool) -> None:
    model, optimizer = fresh(kind, 0)
    steps(model, optimizer, 0, 2)
    torch.save({"epoch": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               tmp_path / "bundle.tar", _use_new_zipfile_serialization=not legacy)
    result = convert(tmp_path / "bundle.tar", tmp_path / "ckpt_dcp", to="dcp")
    assert "optimizer" not in result.report.details

    resumed, resumed_optimizer = fresh(kind, 123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_sd, optim_sd = get_state_dict(resumed, resumed_optimizer)
        target = {"model_state_dict": model_sd, "optimizer_state_dict": optim_sd}
        dcp.load(target, checkpoint_id=str(tmp_path / "ckpt_dcp"), no_dist=True)
        set_state_dict(resumed, resumed_optimizer, model_state_dict=target["model_state_dict"],
                       optim_state_dict=target["optimizer_state_dict"])
    assert set(optim_sd["state"]) == {name for name, _ in resumed.named_parameters()}
    steps(resumed, resumed_optimizer, 2, 4)

    straight, straight_optimizer = fresh(kind, 0)
    steps(straight, straight_optimizer, 0, 4)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name

    convert(tmp_path / "ckpt_dcp", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    again, again_optimizer = fresh(kind, 7)
    again.load_state_dict(back["model_state_dict"])
    again_optimizer.load_state_dict(back["optimizer_state_dict"])
    steps(again, again_optimizer, 2, 4)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_unmatched_names_keep_ids_and_say_so(tmp_path: Path) -> None:
    model, optimizer = fresh("adam", 0)
    steps(model, optimizer, 0, 1)
    state = model.state_dict()
    state.pop("fc.bias")
    torch.save({"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()}, tmp_path / "bundle.pt")
    result = convert(tmp_path / "bundle.pt", tmp_path / "ckpt_dcp", to="dcp")
    assert "kept keyed by id" in result.report.details["optimizer"]
