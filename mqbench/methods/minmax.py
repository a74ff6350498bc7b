"""``minmax``: naive post-training quantization.

Weights: the min and max of each weight tensor (per tensor, or per output channel when the scheme
says ``-pc``). Activations: the running min and max of every activation quantization point over the
calibration images, observed with the float model (all quantizers off), as torch.ao's
MinMaxObserver does. This is the baseline under which MobileNets collapse.
"""

from __future__ import annotations

from mqbench import hookimpl
from mqbench.data import Split
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.quant.calibration import calibrate_activations, calibrate_weights
from mqbench.quant.estimators import MinMaxObserver
from mqbench.quant.qsim import QuantSim
from mqbench.registry import Registry


class MinMax(Method):
    name = "minmax"
    stage = "calibrate"
    description = "naive PTQ: min/max ranges for weights and activations"

    def calibrate(self, qsim: QuantSim, calib: Split, config: MethodConfig, ctx: StepContext) -> None:
        calibrate_weights(qsim, MinMaxObserver)
        calibrate_activations(qsim, calib, MinMaxObserver, ctx.batch_size, ctx.reporter)


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(MinMax())
