"""A small graph holding what PT2E backends have been wrong on, shared by the executorch-xnnpack and torchao-x86
tests."""

from __future__ import annotations

import torch
from torch import nn

from mqbench.layers import ChannelClippedReLU, Conv2dSame
from mqbench.quant.qsim import QuantSim
from tests.unit.test_ort_int8 import _calibrated


class Padded(nn.Module):
    """The convolutions XNNPACK has been wrong on: TF "SAME" (explicit, uneven pads), ``padding="same"`` with an odd
    and an even kernel; a residual add, a per-channel clipped ReLU (as after CLE), the pool and the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.same_odd = nn.Conv2d(8, 8, 3, padding="same", groups=8)
        self.same_even = nn.Conv2d(8, 8, 2, padding="same")
        self.clip = ChannelClippedReLU(8)
        self.clip.upper.copy_(torch.linspace(0.5, 3.0, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.clip(self.same_odd(x))
        x = torch.relu(self.same_even(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def padded_qsim(scheme: str) -> tuple[QuantSim, torch.Tensor]:
    torch.manual_seed(0)
    return _calibrated(Padded().eval(), scheme)
