"""Quantization-friendly MobileNetV1 (Sheng et al. 2018, "A Quantization-Friendly Separable
Convolution for MobileNets", arXiv 1803.08607).

Each depthwise-separable block is, in this module's key layout (``features.N``)::

    0  depthwise 3x3 conv (no bias)
    1  pointwise 1x1 conv (no bias)          <- directly after the depthwise conv
    2  BatchNorm
    3  ReLU

against MobileNetV1's {depthwise, BN, ReLU6, pointwise, BN, ReLU6}. The paper's reasoning (Section 3):

* **No BatchNorm and no activation after the depthwise conv.** Folding a BN into a depthwise conv
  multiplies each channel's 3x3 kernel by ``gamma / sigma``; channels whose variance is tiny get huge
  folded weights, so one per-tensor 8-bit scale must cover weight ranges that differ by orders of
  magnitude across channels and most channels round to a handful of levels. Without that BN the
  depthwise weights keep comparable ranges. Without an activation in between, the depthwise and
  pointwise convs form one linear separable filter whose output the following BN normalises.
* **ReLU instead of ReLU6.** ReLU6's clipping at 6 fixes the activation range at [0, 6] whatever the
  data; the paper found it hurts (the fixed range does not match the learned distribution) and that
  plain ReLU with ranges taken from the data quantizes better.
* **L2 regularisation of the depthwise weights** during training keeps their range small and even
  across channels (``depthwise_l2_penalty``; the training issue uses it).

The stem (conv3x3, BN, ReLU), pooling and classifier are MobileNetV1's.
"""

from __future__ import annotations

import torch
from torch import nn

from mqbench.layers import conv3x3
from mqbench.models.mobilenet_v1 import MobileNetV1


class QFMobileNetV1(MobileNetV1):
    """MobileNetV1 with the quantization-friendly block and ReLU (see the module docstring)."""

    def activation(self) -> nn.Module:
        return nn.ReLU(inplace=True)

    def separable_block(self, c_in: int, c_out: int, stride: int, tf_same: bool) -> nn.Sequential:
        """{0 depthwise 3x3, 1 pointwise 1x1, 2 BN, 3 ReLU}."""
        return nn.Sequential(conv3x3(c_in, c_in, stride, groups=c_in, tf_same=tf_same),
                             nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out), self.activation())

    def depthwise_weights(self) -> list[torch.Tensor]:
        """The depthwise kernels, for the paper's L2 regulariser."""
        out = []
        for block in list(self.features)[1:]:
            assert isinstance(block, nn.Sequential) and isinstance(block[0].weight, torch.Tensor)
            out.append(block[0].weight)
        return out

    def depthwise_l2_penalty(self) -> torch.Tensor:
        """Sum of squared depthwise weights (multiply by the regularisation strength and add to the loss)."""
        return sum((w * w).sum() for w in self.depthwise_weights())  # type: ignore[return-value]
