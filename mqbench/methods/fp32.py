"""``fp32``: the unquantized reference row. The model runs in float on the backend."""

from __future__ import annotations

from torch import nn

from mqbench import hookimpl
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.registry import Registry


class Fp32(Method):
    name = "fp32"
    stage = "transform"
    description = "no quantization: the float reference every quantized row is compared with"
    quantizes = False

    def transform(self, model: nn.Module, config: MethodConfig, ctx: StepContext) -> nn.Module:
        return model


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(Fp32())
