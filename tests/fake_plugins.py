"""A plugin module for tests: a tiny model, a method that raises, one that reports NaN, a backend that refuses
schemes."""

from __future__ import annotations

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends.simulated import Simulated
from mqbench.methods import Method
from mqbench.methods.minmax import MinMax
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Boom(Method):
    name = "boom"
    stage = "calibrate"
    description = "raises inside the cell"

    def calibrate(self, qsim, calib, config, ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom: calibration exploded")


class NaNNotes(MinMax):
    name = "nan_notes"
    description = "minmax, then reports a NaN loss in its notes (as a diverging method would)"

    def calibrate(self, qsim, calib, config, ctx):  # type: ignore[no-untyped-def]
        super().calibrate(qsim, calib, config, ctx)
        ctx.notes["nan_notes"] = {"loss": float("nan"), "steps": [1.0, float("inf")]}


class Picky(Simulated):
    name = "picky"
    description = "simulated, but refuses per-channel weights"

    def check_scheme(self, scheme):  # type: ignore[no-untyped-def]
        return "per-channel weights are not supported" if scheme.weight_granularity == "channel" else None


@hookimpl
def mqbench_register_models(register):  # type: ignore[no-untyped-def]
    register(ModelSpec("tiny_test_cnn", Tiny, "one-conv test model", "plain_cnn", 32,
                       (TrainedWeights("synthetic", train=TrainConfig(epochs=1)),)))


@hookimpl
def mqbench_register_methods(register):  # type: ignore[no-untyped-def]
    register(Boom())
    register(NaNNotes())


@hookimpl
def mqbench_register_backends(register):  # type: ignore[no-untyped-def]
    register(Picky())
