"""MobileNetV1 (Howard et al. 2017) with width multiplier and configurable strides.

Key layout (matches ``../shared/data/imagenet/weights/mobilenet_v1_*``, so they load ``strict=True``):
``features.0`` = {0 conv3x3, 1 BN, 2 ReLU6}; ``features.1..13`` = {0 depthwise 3x3, 1 BN, 2 ReLU6,
3 pointwise 1x1, 4 BN, 5 ReLU6}; global average pool; ``classifier`` (Linear). ``tf_same=True`` pads the stride-2 3x3 convs as
TensorFlow's "SAME" does (needed by TF-trained weights such as the shared ones).
"""

from __future__ import annotations

import torch
from torch import nn

from mqbench.layers import conv3x3

# (output channels at width 1.0, stride) of the 13 depthwise-separable blocks, ImageNet layout.
IMAGENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _channels(c: int, width: float) -> int:
    return max(8, int(c * width))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, stem_stride: int = 2,
                 blocks: tuple[tuple[int, int], ...] = IMAGENET_BLOCKS, dropout: float = 0.0,
                 tf_same: bool = False) -> None:
        super().__init__()
        c_in = _channels(32, width_mult)
        layers: list[nn.Module] = [nn.Sequential(
            conv3x3(3, c_in, stem_stride, tf_same=tf_same), nn.BatchNorm2d(c_in), self.activation())]
        for c, stride in blocks:
            c_out = _channels(c, width_mult)
            layers.append(self.separable_block(c_in, c_out, stride, tf_same))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)
        _init(self)

    def activation(self) -> nn.Module:
        return nn.ReLU6(inplace=True)

    def separable_block(self, c_in: int, c_out: int, stride: int, tf_same: bool) -> nn.Sequential:
        """{0 depthwise 3x3, 1 BN, 2 ReLU6, 3 pointwise 1x1, 4 BN, 5 ReLU6}."""
        return nn.Sequential(
            conv3x3(c_in, c_in, stride, groups=c_in, tf_same=tf_same), nn.BatchNorm2d(c_in), self.activation(),
            nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out), self.activation())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
