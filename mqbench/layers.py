"""Layers shared by the model definitions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pad(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Zero-pad ``x`` as TensorFlow's "SAME" padding does: output size ceil(input / stride), with the odd
    pixel of padding after (bottom/right), e.g. 0 before and 1 after for a 3x3 stride-2 conv on an
    even size, where PyTorch's symmetric ``padding=1`` pads 1 before and 1 after."""
    pads = []
    for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(kernel), reversed(stride), reversed(dilation), strict=True):
        size = int(size)  # a constant in an exported graph (ONNX Pad with fixed pads), not a shape computation
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (``padding`` must be 0).

    The state-dict keys are those of ``nn.Conv2d``. mqbench's tracer keeps it a leaf module, so
    QuantSim quantizes its weight like any conv and keeps the padding rule.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, self.kernel_size, self.stride, self.dilation)  # type: ignore[arg-type]
        return self._conv_forward(x, self.weight, self.bias)


def conv3x3(c_in: int, c_out: int, stride: int, groups: int = 1, tf_same: bool = False, bias: bool = False) -> nn.Conv2d:
    """A 3x3 conv: TF-SAME padded when ``tf_same`` and strided (where the two conventions differ)."""
    if tf_same and stride > 1:
        return Conv2dSame(c_in, c_out, 3, stride, 0, groups=groups, bias=bias)
    return nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=bias)


class ChannelClippedReLU(nn.Module):
    """``min(relu(x), upper_c)`` with one upper bound per channel (axis 1).

    What ReLU6 becomes when cross-layer equalization rescales the channels of its input by ``1 / s_c``:
    ``relu6(x) / s_c = min(relu(x / s_c), 6 / s_c)``, so equalization stays exact without replacing the
    clip by a plain ReLU. Starts as ReLU6 (every bound 6).
    """

    upper: torch.Tensor

    def __init__(self, channels: int, upper: float = 6.0) -> None:
        super().__init__()
        self.register_buffer("upper", torch.full((channels,), float(upper)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.minimum(torch.relu(x), self.upper.view(shape))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}"
