"""The PyTorch tutorial's LeNet and a refactored Sequential layout of it, for the warm-start tests.

``LeNet`` is the layout the fixtures save (``conv1, conv2, fc1..fc3``); ``LeNetV2`` computes the same
function with ``features.0``, ``features.3`` and ``classifier.0/2/4``. Importable as
``helpers_lenet:LeNetV2`` with the tests folder on the path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    """conv1, conv2, fc1..fc3, as in the tutorial (and in fixtures/make_fixtures.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, 10) for inputs of shape (batch, 1, 32, 32)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNetV2(nn.Module):
    """The same network refactored into ``features`` and ``classifier`` Sequentials."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes) for inputs of shape (batch, 1, 32, 32)."""
        return self.classifier(torch.flatten(self.features(x), 1))
