"""``entropy``: the clipping threshold minimising the KL divergence between the float and the
quantized distributions (Migacz 2017, "8-bit Inference with TensorRT"; the entropy calibration of
TensorRT and of Wu et al. 2020, Section 4.2).

The histogram of ``|x|`` (2048 bins) is clipped at candidate thresholds ``t`` (outliers folded into
the last kept bin) and compared with itself merged onto the grid's levels on one side of zero (128
for signed int8, 256 after ReLU with uint8); the ``t`` with the least KL divergence gives the range
``[max(min, -t), min(max, t)]``. Activations use a streaming histogram over the calibration images;
weights a histogram of each tensor or output channel. ``targets`` restricts the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mqbench import hookimpl
from mqbench.methods import Method, MethodConfig, RangeConfig, RangeEstimator
from mqbench.quant.estimators import Estimate, Range, entropy_range
from mqbench.quant.qsim import Quantizer
from mqbench.registry import Registry


@dataclass(frozen=True)
class EntropyConfig(RangeConfig):
    bins: int = 2048  # histogram bins of |x| (TensorRT: 2048)
    candidates: int = 128  # thresholds tried between the grid's level count and ``bins``

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bins < 2 or self.candidates < 1:
            raise ValueError("bins must be >= 2 and candidates >= 1")


class Entropy(RangeEstimator):
    name = "entropy"
    description = "ranges minimising the KL divergence of quantized vs float histograms (TensorRT)"
    config_type = EntropyConfig

    def estimate(self, quantizer: Quantizer, config: MethodConfig) -> Estimate:
        assert isinstance(config, EntropyConfig)

        def estimate(values: torch.Tensor, counts: torch.Tensor) -> Range:
            return entropy_range(values, counts, quantizer.grid, config.bins, config.candidates)
        return estimate


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(Entropy())
