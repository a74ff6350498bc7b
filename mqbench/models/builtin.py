"""The built-in models of the ``quick`` suite: small MobileNetV1, MobileNetV2 and a plain CNN for
32x32 inputs, trained on the ``synthetic`` dataset on first use (about 25-60 s each on 2 cores).
"""

from __future__ import annotations

from mqbench import hookimpl
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights
from mqbench.models.mobilenet_v1 import MobileNetV1
from mqbench.models.mobilenet_v2 import MobileNetV2
from mqbench.models.plain_cnn import PlainCNN
from mqbench.registry import Registry

QUICK_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1))
QUICK_V2_SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2), (4, 96, 1, 1))


def quick_mobilenet_v1(num_classes: int = 10) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult=0.25, stem_stride=1, blocks=QUICK_V1_BLOCKS)


def quick_mobilenet_v2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult=0.5, stem_stride=1, setting=QUICK_V2_SETTING, last_channel=256,
                       dropout=0.0)


def quick_cnn(num_classes: int = 10) -> PlainCNN:
    return PlainCNN(num_classes, widths=(16, 32, 64), convs_per_stage=2)


QUICK_MODELS = (
    ModelSpec("quick_mobilenet_v1", quick_mobilenet_v1, "MobileNetV1 x0.25, 8 blocks, 32x32 input",
              "mobilenet_v1", 32, (TrainedWeights("synthetic", "trained on the synthetic dataset", train=TrainConfig(epochs=10),
                                                  min_test_top1=0.9),)),
    ModelSpec("quick_mobilenet_v2", quick_mobilenet_v2, "MobileNetV2 x0.5, expansion 4, 8 blocks, 32x32 input",
              "mobilenet_v2", 32, (TrainedWeights("synthetic", "trained on the synthetic dataset", train=TrainConfig(epochs=8),
                                                  min_test_top1=0.9),)),
    ModelSpec("quick_cnn", quick_cnn, "plain CNN, 6 conv3x3-BN-ReLU, 32x32 input",
              "plain_cnn", 32, (TrainedWeights("synthetic", "trained on the synthetic dataset", train=TrainConfig(epochs=8),
                                               min_test_top1=0.9),)),
)


@hookimpl
def mqbench_register_models(register: Registry[ModelSpec]) -> None:
    for spec in QUICK_MODELS:
        register(spec)
