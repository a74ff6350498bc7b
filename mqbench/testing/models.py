"""The conformance models: a tiny MobileNetV2 (inverted residuals, depthwise convs, ReLU6, residual adds) and a
tiny MobileNetV1 (for methods made for its separable blocks), each trained for one epoch on the synthetic
dataset on first use (seconds). Not built-ins: :class:`mqbench.testing.Project` installs this module as a plugin
of its temp project, so the real CLI finds it through an entry point."""

from __future__ import annotations

from mqbench import hookimpl
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights
from mqbench.models.mobilenet_v1 import MobileNetV1
from mqbench.models.mobilenet_v2 import MobileNetV2
from mqbench.registry import Registry

MODEL = "conformance_mobilenet_v2"
MODEL_V1 = "conformance_mobilenet_v1"  # for methods made for MobileNetV1's separable blocks (qf_sepconv)


def conformance_mobilenet_v2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult=0.25, stem_stride=2, setting=((1, 8, 1, 1), (4, 16, 2, 2)),
                       last_channel=64, dropout=0.0)


def conformance_mobilenet_v1(num_classes: int = 10) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult=0.25, stem_stride=2, blocks=((64, 1), (128, 2)))


@hookimpl
def mqbench_register_models(register: Registry[ModelSpec]) -> None:
    register(ModelSpec(MODEL, conformance_mobilenet_v2, "MobileNetV2 x0.25, two stages, for conformance tests",
                       "mobilenet_v2", 32, (TrainedWeights("synthetic", "one epoch on the synthetic dataset",
                                                           train=TrainConfig(epochs=1)),)))
    register(ModelSpec(MODEL_V1, conformance_mobilenet_v1, "MobileNetV1 x0.25, two blocks, for conformance tests",
                       "mobilenet_v1", 32, (TrainedWeights("synthetic", "one epoch on the synthetic dataset",
                                                           train=TrainConfig(epochs=1)),)))
