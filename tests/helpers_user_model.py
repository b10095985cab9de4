"""A tiny user model for the ``--arch package.module:Class`` path of the architecture tests."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear head; ``num_classes`` and ``width`` are constructor arguments."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
