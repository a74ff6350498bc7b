"""Depthwise-separable CNNs and regular CNNs of matching depth and width for 32x32 inputs, for the
DWSCNN-vs-regular-CNN study (Yun & Wong 2021, "Do All MobileNets Quantize Poorly?").

Both families share the layout: a 3x3 stem conv (BN, ReLU), then ``depth`` blocks in three stages of
widths ``(w, 2w, 4w)`` (the first block of stages 2 and 3 has stride 2), global average pool and a
linear classifier. A DWSCNN block is {depthwise 3x3, BN, ReLU, pointwise 1x1, BN, ReLU}; the regular
block is {conv 3x3, BN, ReLU}. Sizes: ``s`` (w=16, 6 blocks), ``m`` (w=32, 9 blocks), ``l`` (w=64,
12 blocks).
"""

from __future__ import annotations

import torch
from torch import nn

from mqbench.models.mobilenet_v1 import _init

SIZES: dict[str, tuple[int, int]] = {"s": (16, 6), "m": (32, 9), "l": (64, 12)}


class FamilyCNN(nn.Module):
    def __init__(self, separable: bool, width: int, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                                 nn.ReLU(inplace=True))]
        c_in = width
        per_stage = depth // 3
        for stage, c in enumerate((width, 2 * width, 4 * width)):
            for i in range(per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                if separable:
                    block = nn.Sequential(
                        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                        nn.ReLU(inplace=True), nn.Conv2d(c_in, c, 1, 1, 0, bias=False), nn.BatchNorm2d(c),
                        nn.ReLU(inplace=True))
                else:
                    block = nn.Sequential(nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c),
                                          nn.ReLU(inplace=True))
                layers.append(block)
                c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
