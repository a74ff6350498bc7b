"""A third-party plugin in one file: a new runtime and a new toolkit, nothing of mqbench's core edited.

* runtime ``channels-last``: the float model and the calibrated QuantSim run by torch in the channels-last
  memory format (the layout mobile runtimes use): a real second execution of the same arithmetic, whose
  agreement with the simulation the harness measures;
* toolkit ``absmax`` (recipe ``absmax:default``): its own range choice, symmetric max-abs for weights and
  activations, handed on as a QuantSim artifact to any runtime that runs QuantSims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime
from mqbench.quant.calibration import calibrate_activations, calibrate_weights
from mqbench.quant.estimators import Observer
from mqbench.quant.qsim import QuantSim
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit


class ChannelsLast(Runtime):
    name = "channels-last"
    description = "torch in the channels-last memory format (test plugin)"
    formats = frozenset({FLOAT, QUANTSIM})

    def load(self, artifact: Artifact) -> Deployed:
        module = artifact.payload.eval().to(memory_format=torch.channels_last)
        return lambda x: module(x.contiguous(memory_format=torch.channels_last))

    def info(self) -> dict[str, object]:
        return {"runtime": f"torch {torch.__version__} (channels-last)"}


class AbsMaxObserver(Observer):
    def __init__(self, axis: int | None = None) -> None:
        super().__init__(axis=axis)
        self.bound = torch.tensor(0.0)

    def observe(self, x: torch.Tensor) -> None:
        self.bound = torch.maximum(self.bound, self._reduce(x.abs(), "amax"))

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return -self.bound, self.bound


@dataclass(frozen=True)
class AbsMaxConfig(RecipeConfig):
    batch_size: int = 64


class AbsMax(Toolkit):
    name = "absmax"
    description = "symmetric max-abs ranges (test plugin)"
    output_format = QUANTSIM
    recipes = {"default": Recipe("default", "max |x| of weights and activations", AbsMaxConfig())}  # noqa: RUF012

    def quantize(self, model, scheme, calib, config, reporter):  # type: ignore[no-untyped-def]
        qsim = QuantSim.from_float(model, scheme)
        calibrate_weights(qsim, lambda q: AbsMaxObserver(q.axis))
        calibrate_activations(qsim, calib, lambda q: AbsMaxObserver(None), config.batch_size, reporter)
        return Artifact(QUANTSIM, qsim, {"ranges": "symmetric max-abs"})


@hookimpl
def mqbench_register_runtimes(register):  # type: ignore[no-untyped-def]
    register(ChannelsLast())


@hookimpl
def mqbench_register_toolkits(register):  # type: ignore[no-untyped-def]
    register(AbsMax())
