"""Resume-exact: 4 epochs straight == 2 epochs → legacy bundle → ``convert`` → normalized → 2 more epochs, bit for bit."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

from ckpt_migrate.cli import main_group

SAMPLES = 32
BATCH = 16


class LeNet(nn.Module):
    """The LeNet of the PyTorch CIFAR-10 tutorial."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(SAMPLES, 3, 32, 32, generator=generator), torch.randint(0, 10, (SAMPLES,), generator=generator)


def make_sgd(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)


def make_adam(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
          epochs: range) -> torch.Tensor:
    inputs, labels = dataset()
    criterion = nn.CrossEntropyLoss()
    loss = torch.tensor(0.0)
    for epoch in epochs:
        order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, SAMPLES, BATCH):
            index = order[start:start + BATCH]
            optimizer.zero_grad()
            loss = criterion(model(inputs[index]), labels[index])
            loss.backward()
            optimizer.step()
        scheduler.step()
    return loss


def fresh(make: Callable) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = LeNet()
    return (model, *make(model))


@functools.cache
def straight_run(make: Callable) -> dict[str, torch.Tensor]:
    """Parameters after 4 uninterrupted epochs (computed once per optimizer for the whole module)."""
    model, optimizer, scheduler = fresh(make)
    train(model, optimizer, scheduler, range(4))
    return {k: v.clone() for k, v in model.state_dict().items()}


def convert_cli(src: Path, dst: Path) -> None:
    result = CliRunner().invoke(main_group, ["convert", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "verified bit-exact" in result.output


def resume_from(normalized: Path, make: Callable) -> dict[str, torch.Tensor]:
    torch.manual_seed(99)
    model = LeNet()
    optimizer, scheduler = make(model)
    checkpoint = torch.load(normalized, weights_only=True)
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    start = checkpoint["epoch"]
    train(model, optimizer, scheduler, range(start, 4))
    return model.state_dict()


def assert_bit_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert list(expected) == list(actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


@pytest.mark.parametrize("make", [make_sgd, make_adam], ids=["sgd-momentum-steplr", "adam-steplr"])
def test_tutorial_bundle_resumes_bit_exact(tmp_path: Path, make: Callable) -> None:
    expected = straight_run(make)
    model, optimizer, scheduler = fresh(make)
    loss = train(model, optimizer, scheduler, range(2))
    bundle = tmp_path / "bundle.tar"
    torch.save({"epoch": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "loss": loss, "scheduler": scheduler.state_dict()}, bundle, _use_new_zipfile_serialization=False)
    normalized = tmp_path / "normalized.pt"
    convert_cli(bundle, normalized)

    checkpoint = torch.load(normalized, weights_only=True)
    assert checkpoint["epoch"] == 2
    assert isinstance(checkpoint["loss"], float) and checkpoint["loss"] == loss.item()
    assert_bit_identical(expected, resume_from(normalized, make))


def test_whole_objects_bundle_resumes_bit_exact(tmp_path: Path) -> None:
    expected = straight_run(make_sgd)
    model, optimizer, scheduler = fresh(make_sgd)
    train(model, optimizer, scheduler, range(2))
    bundle = tmp_path / "whole.pt"
    torch.save({"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": 2}, bundle)
    normalized = tmp_path / "normalized.pth"
    convert_cli(bundle, normalized)

    checkpoint = torch.load(normalized, weights_only=True)
    assert checkpoint["meta"]["optimizer_param_names"] == [n for n, _ in model.named_parameters()]
    assert checkpoint["meta"]["converted"]["optimizer"] == "torch.optim.sgd.SGD object → state_dict"
    assert_bit_identical(expected, resume_from(normalized, make_sgd))


def test_whole_adam_object_resumes_bit_exact(tmp_path: Path) -> None:
    expected = straight_run(make_adam)
    model, optimizer, scheduler = fresh(make_adam)
    train(model, optimizer, scheduler, range(2))
    bundle = tmp_path / "whole_adam.tar"
    torch.save({"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": 2}, bundle,
               _use_new_zipfile_serialization=False)
    normalized = tmp_path / "normalized.ckpt"
    convert_cli(bundle, normalized)
    assert_bit_identical(expected, resume_from(normalized, make_adam))


def test_resume_without_optimizer_state_differs(tmp_path: Path) -> None:
    """The control: the same loop that drops momentum does not land on the straight run's weights."""
    expected = straight_run(make_sgd)
    model, optimizer, scheduler = fresh(make_sgd)
    train(model, optimizer, scheduler, range(2))
    resumed = LeNet()
    resumed.load_state_dict(model.state_dict())
    new_optimizer, new_scheduler = make_sgd(resumed)
    new_scheduler.load_state_dict(scheduler.state_dict())
    train(resumed, new_optimizer, new_scheduler, range(2, 4))
    assert not all(torch.equal(expected[k], v) for k, v in resumed.state_dict().items())


def test_normalized_opens_with_weights_only_in_a_fresh_process(tmp_path: Path) -> None:
    model, optimizer, scheduler = fresh(make_adam)
    loss = train(model, optimizer, scheduler, range(1))
    bundle = tmp_path / "bundle.tar"
    torch.save({"epoch": 1, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "loss": loss, "scheduler": scheduler.state_dict()}, bundle, _use_new_zipfile_serialization=False)
    normalized = tmp_path / "normalized.pt"
    convert_cli(bundle, normalized)
    code = (
        "import sys, torch\n"
        "d = torch.load(sys.argv[1], weights_only=True)\n"
        "print(sorted(d))\n"
        "print(d['meta']['format'], d['epoch'], type(d['loss']).__name__, len(d['optimizer_state_dict']['state']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(normalized)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['epoch', 'loss', 'meta', 'model_state_dict', 'optimizer_state_dict', 'scheduler_state_dict']",
        "ckpt-migrate-normalized 1 float 10",
    ]
