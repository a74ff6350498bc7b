"""A plain (regular-convolution) CNN: the non-depthwise baseline of the quick suite."""

from __future__ import annotations

import torch
from torch import nn

from mqbench.models.mobilenet_v1 import _init


class PlainCNN(nn.Module):
    """``features``: stages of (conv3x3-BN-ReLU) x ``convs_per_stage`` then 2x2 max pool;
    global average pool; ``classifier`` (Linear)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64), convs_per_stage: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
