"""MobileNetV2 (Sandler et al. 2018) with torchvision's ``mobilenet_v2`` module names.

``features.0`` stem ConvBNReLU6; ``features.1..17`` inverted residual blocks whose ``conv`` holds
[expand ConvBNReLU6,] depthwise ConvBNReLU6, linear pointwise conv and BN; ``features.18`` the 1x1
ConvBNReLU6 to ``last_channel``; ``classifier`` = (Dropout, Linear). Same names as torchvision, so
its checkpoints and the shared TF-converted ones load with ``strict=True``. ``tf_same=True`` pads the
stem and the stride-2 depthwise convs as TensorFlow's "SAME" does (needed by the TF-converted weights).
"""

from __future__ import annotations

import torch
from torch import nn

from mqbench.layers import conv3x3
from mqbench.models.mobilenet_v1 import _init

# (expansion t, channels c, repeats n, first stride s), torchvision / paper Table 2.
IMAGENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNActivation(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 tf_same: bool = False) -> None:
        conv = (conv3x3(c_in, c_out, stride, groups, tf_same) if kernel == 3
                else nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False))
        super().__init__(conv, nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int, tf_same: bool = False) -> None:
        super().__init__()
        hidden = round(c_in * expand_ratio)
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(c_in, hidden, kernel=1))
        layers += [ConvBNActivation(hidden, hidden, stride=stride, groups=hidden, tf_same=tf_same),
                   nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, stem_stride: int = 2,
                 setting: tuple[tuple[int, int, int, int], ...] = IMAGENET_SETTING, last_channel: int = 1280,
                 dropout: float = 0.2, tf_same: bool = False) -> None:
        super().__init__()
        c_in = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNActivation(3, c_in, stride=stem_stride, tf_same=tf_same)]
        for t, c, n, s in setting:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t, tf_same))
                c_in = c_out
        layers.append(ConvBNActivation(c_in, self.last_channel, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
