"""``percentile``: clip each range at a percentile of the observed values (Wu et al. 2020, "Integer
Quantization for Deep Learning Inference: Principles and Empirical Evaluation", Section 4.2; the
99.99th percentile is among their best 8-bit activation calibrations).

Activations: a streaming 2048-bin histogram over the calibration images (float model); the range is
``[q(100 - p), q(p)]`` (post-ReLU data has only the upper one). Weights: the exact percentile of each
weight tensor, or of each output channel with ``-pc``. ``targets`` restricts the step to weights or
activations (another calibrate step then sets the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mqbench import hookimpl
from mqbench.methods import Method, MethodConfig, RangeConfig, RangeEstimator
from mqbench.quant.estimators import Estimate, Range, percentile_range
from mqbench.quant.qsim import Quantizer
from mqbench.registry import Registry


@dataclass(frozen=True)
class PercentileConfig(RangeConfig):
    percentile: float = 99.99  # in (50, 100]
    bins: int = 2048  # activation histogram bins

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")


class Percentile(RangeEstimator):
    name = "percentile"
    description = "ranges clipped at a percentile (default 99.99) of weights and activations"
    config_type = PercentileConfig

    def estimate(self, quantizer: Quantizer, config: MethodConfig) -> Estimate:
        assert isinstance(config, PercentileConfig)

        def estimate(values: torch.Tensor, counts: torch.Tensor) -> Range:
            return percentile_range(values, counts, config.percentile)
        return estimate


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(Percentile())
