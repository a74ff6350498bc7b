"""``minmax``: naive post-training quantization.

Weights: the min and max of each weight tensor (per tensor, or per output channel when the scheme
says ``-pc``). Activations: the running min and max of every activation quantization point over the
calibration images, observed with the float model (all quantizers off), as torch.ao's
MinMaxObserver does. This is the baseline under which MobileNets collapse.
"""

from __future__ import annotations

from mqbench import hookimpl
from mqbench.methods import Method, MethodConfig, RangeEstimator
from mqbench.quant.estimators import MinMaxObserver, Observer
from mqbench.quant.qsim import Quantizer
from mqbench.registry import Registry


class MinMax(RangeEstimator):
    name = "minmax"
    description = "naive PTQ: min/max ranges for weights and activations"

    def weight_observer(self, quantizer: Quantizer, config: MethodConfig) -> Observer:
        return MinMaxObserver(quantizer.axis)

    def activation_observer(self, quantizer: Quantizer, config: MethodConfig) -> Observer:
        return MinMaxObserver(None)


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(MinMax())
