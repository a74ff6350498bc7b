"""``simulated``: the fake-quant reference backend.

Quantizers sit where an int8 runtime quantizes (the default :class:`~mqbench.quant.qsim.Placement`);
nothing is deployed (``deploys = False``): the QuantSim's evaluation is the cell's figure, so this runtime
measures what a method achieves in simulation. Real-kernel runtimes evaluate the same QuantSim and report
their agreement with it.
"""

from __future__ import annotations

from typing import Any

import torch

from mqbench import hookimpl
from mqbench.backends import Artifact, Deployed, Runtime
from mqbench.registry import Registry


class Simulated(Runtime):
    name = "simulated"
    description = "fake-quant simulation in float (any scheme, 2..16 bits)"
    deploys = False

    def load(self, artifact: Artifact) -> Deployed:
        return artifact.payload.eval()  # the float model or the QuantSim

    def info(self) -> dict[str, Any]:
        return {"runtime": f"torch {torch.__version__} (float, fake-quant)"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(Simulated())
