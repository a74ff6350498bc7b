"""``mse``: the clipping range with the least mean squared quantization error (the "MSE" range
setting of Nagel et al. 2021, "A White Paper on Neural Network Quantization", Section 3.1; Banner et
al. 2019 for the clipping/rounding trade-off).

For each tensor (each output channel with ``-pc``), candidates ``alpha * [min, max]`` with
``alpha = k / K``, ``k = 1..K``, are quantized on the tensor's own integer grid (bits, symmetry,
power-of-two scales), and the candidate with the least squared error wins. Weights are searched on
their exact values; activations on a 2048-bin histogram of the float model's activations over the
calibration images (bin centres weighted by counts). ``targets`` restricts the step to weights or
activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mqbench import hookimpl
from mqbench.methods import Method, MethodConfig, RangeConfig, RangeEstimator
from mqbench.quant.estimators import Estimate, Range, mse_range
from mqbench.quant.qsim import Quantizer
from mqbench.registry import Registry


@dataclass(frozen=True)
class MSEConfig(RangeConfig):
    candidates: int = 100  # K: clipping ratios 1/K .. 1
    bins: int = 2048  # activation histogram bins

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates < 1 or self.bins < 2:
            raise ValueError("candidates must be >= 1 and bins >= 2")


class MSE(RangeEstimator):
    name = "mse"
    description = "ranges with the least squared quantization error (weights and activations)"
    config_type = MSEConfig

    def estimate(self, quantizer: Quantizer, config: MethodConfig) -> Estimate:
        assert isinstance(config, MSEConfig)

        def estimate(values: torch.Tensor, counts: torch.Tensor) -> Range:
            return mse_range(values, counts, quantizer.grid, config.candidates)
        return estimate


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(MSE())
