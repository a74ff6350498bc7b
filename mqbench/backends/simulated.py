"""``simulated``: the fake-quant reference backend.

Quantizers sit where an int8 runtime quantizes (the default :class:`~mqbench.quant.qsim.Placement`);
the "deployed" model is the QuantSim itself, so this backend measures what a method achieves in
simulation. Real-kernel backends reuse the same QuantSim and report their agreement with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Backend, Deployed
from mqbench.quant.qsim import Placement, QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme


class Simulated(Backend):
    name = "simulated"
    description = "fake-quant simulation in float (any scheme, 2..16 bits)"
    simulation_only = True

    def prepare(self, model: nn.Module, scheme: QuantScheme) -> QuantSim:
        return QuantSim.from_float(model, scheme, Placement())

    def convert(self, qsim: QuantSim) -> Deployed:
        return qsim.eval()

    def deploy_float(self, model: nn.Module) -> Deployed:
        return model.eval()

    def info(self) -> dict[str, Any]:
        return {"runtime": f"torch {torch.__version__} (float, fake-quant)"}


@hookimpl
def mqbench_register_backends(register: Registry[Backend]) -> None:
    register(Simulated())
