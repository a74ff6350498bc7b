"""A plugin module for tests: a tiny model, a method that raises, one that reports NaN, a backend that refuses
schemes, and two transforms that kill the process running them (the Ray executor's worker-death tests)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends.simulated import Simulated
from mqbench.methods import Method
from mqbench.methods.minmax import MinMax
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights
from mqbench.models.mobilenet_v1 import MobileNetV1


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


KILL_DIR_ENV = "MQBENCH_TEST_KILL_DIR"


class KilledOnce(Method):
    """First run: writes its PID to ``$MQBENCH_TEST_KILL_DIR/killed_once.pid`` and waits (up to 300 s) for the test
    to kill it; any later run (Ray's retry) finds the file and leaves the model as it is."""

    name = "killed_once"
    stage = "transform"
    description = "waits to be killed the first time it runs (tests)"

    def transform(self, model, config, ctx):  # type: ignore[no-untyped-def]
        pid_file = Path(os.environ[KILL_DIR_ENV]) / "killed_once.pid"
        if not pid_file.exists():
            pid_file.write_text(str(os.getpid()))
            time.sleep(300)
            raise RuntimeError("killed_once was not killed within 300 s")
        return model


class AlwaysKilled(Method):
    """Kills the process running it, every time (a worker that dies on this cell whatever Ray does)."""

    name = "always_killed"
    stage = "transform"
    description = "kills its own process (tests)"

    def transform(self, model, config, ctx):  # type: ignore[no-untyped-def]
        with (Path(os.environ[KILL_DIR_ENV]) / "always_killed.attempts").open("a") as f:
            f.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
        return model


class Picky(Simulated):
    name = "picky"
    description = "simulated, but refuses per-channel weights"

    def check_scheme(self, scheme):  # type: ignore[no-untyped-def]
        return "per-channel weights are not supported" if scheme.weight_granularity == "channel" else None


@hookimpl
def mqbench_register_models(register):  # type: ignore[no-untyped-def]
    register(ModelSpec("tiny_test_cnn", Tiny, "one-conv test model", "plain_cnn", 32,
                       (TrainedWeights("synthetic", train=TrainConfig(epochs=1)),)))
    register(ModelSpec("tiny_test_mobilenet_v1", tiny_mobilenet_v1, "MobileNetV1 x0.25 with two blocks", "mobilenet_v1",
                       32, (TrainedWeights("synthetic", train=TrainConfig(epochs=1)),)))


def tiny_mobilenet_v1(num_classes: int = 10) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult=0.25, stem_stride=2, blocks=((64, 1), (128, 2)))


@hookimpl
def mqbench_register_methods(register):  # type: ignore[no-untyped-def]
    register(Boom())
    register(NaNNotes())
    register(KilledOnce())
    register(AlwaysKilled())


@hookimpl
def mqbench_register_backends(register):  # type: ignore[no-untyped-def]
    register(Picky())
