"""Importable stand-ins for framework classes pickled by the framework fixtures (Ultralytics-shaped models)."""

from __future__ import annotations

import torch


class DetectionModel(torch.nn.Module):
    """Shaped like ``ultralytics.nn.tasks.DetectionModel``: a Sequential of layers plus plain attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.names = {0: "person", 1: "car"}
