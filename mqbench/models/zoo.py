"""The real models and their named weights (a built-in plugin).

ImageNet weights come from ``$MQBENCH_DATA/imagenet/weights`` (Google's TFLite MobileNets,
dequantized; BN folded, TF "SAME" padding, ``tf-inception`` preprocessing) or from torchvision's
published URLs (verified by the sha256 prefix in their file names, as torch.hub does). CIFAR ResNets
come from ``$MQBENCH_DATA/cifar10/weights``. The CIFAR MobileNets' weights were trained here (``mqbench train``)
and are published in ``results/models``. Models without weights (the DWSCNN / regular-CNN families,
ResNet-32/44) are registered for training.
"""

from __future__ import annotations

import functools
from pathlib import Path

from torch import nn

from mqbench import hookimpl
from mqbench.models import FileWeights, ModelSpec, UrlWeights, WeightsSpec
from mqbench.models.families import SIZES, FamilyCNN
from mqbench.models.mobilenet_v1 import IMAGENET_BLOCKS, MobileNetV1
from mqbench.models.mobilenet_v2 import IMAGENET_SETTING, MobileNetV2
from mqbench.models.qf_mobilenet_v1 import QFMobileNetV1
from mqbench.models.resnet_cifar import CifarResNet
from mqbench.registry import Registry

TF = (("tf_same", True),)
# 32x32 inputs: no stride in the stem and one fewer downsampling (32 -> 16 -> 8 -> 4).
CIFAR_V1_BLOCKS = tuple((c, 1 if i == 1 else s) for i, (c, s) in enumerate(IMAGENET_BLOCKS))
CIFAR_V2_SETTING = tuple((t, c, n, 1 if i == 1 else s) for i, (t, c, n, s) in enumerate(IMAGENET_SETTING))


def _tf_file(name: str, file: str, sha256: str, size: int = 224, width: float | None = None,
             description: str = "") -> FileWeights:
    kwargs = TF + ((("width_mult", width),) if width is not None else ())
    return FileWeights(name, description, "imagenet", f"tf-inception@{size}", kwargs, sha256,
                       path=f"imagenet/weights/{file}")


MOBILENET_V2_WEIGHTS: tuple[WeightsSpec, ...] = (
    _tf_file("tf2ptq", "mobilenet_v2_1.0_224_tf2ptq.pth",
             "89d665b8a27080cac045cb275f2662e27a1a5d785f94f0f6db32d4a7250b1210",
             description="Google TF2 post-training int8 model, per-channel int8 weights dequantized"),
    _tf_file("qat", "mobilenet_v2_1.0_224_qat.pth", "f1fb6e0c35b3e0110ab6cd5f1a71bccba3e098ad6ffaf800a801bd1ebe469368",
             description="Google quantization-aware-trained uint8 model (per-tensor weights), dequantized"),
    UrlWeights("torchvision-v1", "torchvision IMAGENET1K_V1", "imagenet", "torchvision-imagenet@224", (), "b0353104",
               url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
    UrlWeights("torchvision-v2", "torchvision IMAGENET1K_V2", "imagenet", "torchvision-imagenet@224", (), "7ebf99e0",
               url="https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth"),
)

MOBILENET_V1_WEIGHTS: tuple[WeightsSpec, ...] = (
    _tf_file("qat-1.0-224", "mobilenet_v1_1.0_224_qat.pth",
             "f993f6ac442fa956806898012255b25c8aa871ae134fc4bd791afb3fa0119119", description="Google QAT uint8, 1.0/224"),
    _tf_file("qat-0.5-160", "mobilenet_v1_0.5_160_qat.pth",
             "e86edf294a12b77a6cef90f537b628d381b4c7e0916374465692bfded1a575bd", 160, 0.5, "Google QAT uint8, 0.5/160"),
    _tf_file("qat-0.25-128", "mobilenet_v1_0.25_128_qat.pth",
             "d13665d984d9db9374592102812727c424edb0db0aea7ca590ee661c5740fdff", 128, 0.25, "Google QAT uint8, 0.25/128"),
)


def _resnet_weights(depth: int, file: str, sha256: str) -> FileWeights:
    return FileWeights("cifar10", f"akamaster/pytorch_resnet_cifar10 ResNet-{depth}", "cifar10", "cifar", (), sha256,
                       "state_dict", (("module.", ""),), path=f"cifar10/weights/{file}")


# Weights trained with `mqbench train` and published in this repository (results/models, beside each file a JSON
# sidecar with its sha256, training config, command and per-epoch history): present in a checkout only.
PUBLISHED_MODELS = Path(__file__).resolve().parents[2] / "results" / "models"


def _published(name: str, file: str, sha256: str, width: float | None, description: str) -> FileWeights:
    """Weights in ``results/models``; ``width``: the ``width_mult`` the model was built with (None: no such argument)."""
    build = (("width_mult", width),) if width is not None else ()
    return FileWeights(name, description, "cifar10", "native", build, sha256, path=str(PUBLISHED_MODELS / file))


def _resnet(depth: int, num_classes: int = 10) -> nn.Module:
    return CifarResNet(depth, num_classes)


def _family(separable: bool, width: int, depth: int, num_classes: int = 10) -> nn.Module:
    return FamilyCNN(separable, width, depth, num_classes)


# The DWSCNN / regular-CNN families (Yun & Wong's study), trained here on CIFAR-10 with `mqbench train`'s defaults.
FAMILY_WEIGHTS: dict[str, tuple[FileWeights, ...]] = {
    "dwscnn_s": (_published("mqbench", "dwscnn_s-cifar10-8436c27541ae.pt",
                            "596ae7ea60b4d9a19dd9ef15200cca6b0bf66a9c0ce0faa3715ed616874d6839", None,
                            "trained here: 15 epochs, CIFAR-10 test top-1 0.7386"),),
    "cnn_s": (_published("mqbench", "cnn_s-cifar10-8e723145f5c6.pt",
                         "f2d18c197da47a8ce2f3d08040dd16fdd68301a000e0263dfe70180151e8ee1f", None,
                         "trained here: 15 epochs, CIFAR-10 test top-1 0.7886"),),
    "dwscnn_m": (_published("mqbench", "dwscnn_m-cifar10-eda1489f9164.pt",
                            "6ccccab50f0eb6d3ed56582bf9d1edd6705633693b236dd86584f421a7655a94", None,
                            "trained here: 10 epochs, CIFAR-10 test top-1 0.8033"),),
    "cnn_m": (_published("mqbench", "cnn_m-cifar10-d29bab380dc9.pt",
                         "071b3d4a95cfc3b50c079b8f3003887f9870580eda799748470849d8c18ad32c", None,
                         "trained here: 8 epochs, CIFAR-10 test top-1 0.8261"),),
}

MODELS = (
    ModelSpec("mobilenet_v2", MobileNetV2, "MobileNetV2 1.0 (torchvision layout)", "mobilenet_v2", 224,
              MOBILENET_V2_WEIGHTS),
    ModelSpec("mobilenet_v1", MobileNetV1, "MobileNetV1 (width from the weights)", "mobilenet_v1", 224,
              MOBILENET_V1_WEIGHTS),
    ModelSpec("mobilenet_v1_cifar", functools.partial(MobileNetV1, stem_stride=1, blocks=CIFAR_V1_BLOCKS),
              "MobileNetV1 for 32x32 inputs (stem stride 1, three stride-2 blocks)", "mobilenet_v1", 32,
              (_published("mqbench-x0.5", "mobilenet_v1_cifar-cifar10-06b8608c0d7e.pt",
                          "18376c496c6259a2531cc5c9f162d735bf4131537b5557e18d4d0cd052ffddb6", 0.5,
                          "width 0.5, trained here: 8 epochs, 23 min on 2 cores, CIFAR-10 test top-1 0.8276"),
               _published("mqbench-tf-x0.5", "mobilenet_v1_cifar-cifar10-07c8a8cbaa38.pt",
                          "d90d0eaf5f2034b37a0eae014a15be455d5ceb4b22a929180197cd79fdf82f1c", 0.5,
                          "width 0.5, TensorFlow's recipe (no weight decay on the depthwise weights), the baseline of "
                          "Sheng et al.'s study: 8 epochs, 30 min on 2 cores, CIFAR-10 test top-1 0.8201"))),
    ModelSpec("mobilenet_v2_cifar", functools.partial(MobileNetV2, stem_stride=1, setting=CIFAR_V2_SETTING),
              "MobileNetV2 for 32x32 inputs (stem stride 1, stride 1 in the second stage)", "mobilenet_v2", 32,
              (_published("mqbench-8ep-x0.5", "mobilenet_v2_cifar-cifar10-e78341fb1820.pt",
                          "6ca14abd627c4aa961f7eb3525d9cb5748dcf379d34a73c16f2ad7c745a01a07", 0.5,
                          "width 0.5, trained here: 8 epochs at batch 64, 28 min on 2 cores, CIFAR-10 test top-1 0.8116"),
               _published("mqbench-x0.5", "mobilenet_v2_cifar-cifar10-48eb6403f9e2.pt",
                          "2277f5c8cd791fc02c121ca8a545eb5788d8df206ba0a3abbebb7a8301750535", 0.5,
                          "width 0.5, trained here: 6 epochs at batch 128, 28 min on 2 cores, CIFAR-10 test top-1 "
                          "0.7944 (the Bae et al. table's model)"))),
    ModelSpec("qf_mobilenet_v1_cifar", functools.partial(QFMobileNetV1, stem_stride=1, blocks=CIFAR_V1_BLOCKS),
              "quantization-friendly MobileNetV1 for 32x32 inputs", "qf_mobilenet_v1", 32,
              (_published("mqbench-x0.5", "qf_mobilenet_v1_cifar-cifar10-36be7ade0817.pt",
                          "572d64894a0666b711986115e101c17d041bfbb1de7d4eaff271e81a633eee6e", 0.5,
                          "width 0.5, trained here from scratch: 8 epochs, 23 min on 2 cores, CIFAR-10 test top-1 "
                          "0.8279"),)),
    ModelSpec("qf_mobilenet_v1", QFMobileNetV1, "quantization-friendly MobileNetV1 (Sheng et al. 2018)",
              "qf_mobilenet_v1", 224),
    ModelSpec("resnet20", functools.partial(_resnet, 20), "CIFAR ResNet-20 (option A)", "resnet_cifar", 32,
              (_resnet_weights(20, "resnet20-12fca82f.th",
                               "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),)),
    ModelSpec("resnet32", functools.partial(_resnet, 32), "CIFAR ResNet-32 (option A)", "resnet_cifar", 32),
    ModelSpec("resnet44", functools.partial(_resnet, 44), "CIFAR ResNet-44 (option A)", "resnet_cifar", 32),
    ModelSpec("resnet56", functools.partial(_resnet, 56), "CIFAR ResNet-56 (option A)", "resnet_cifar", 32,
              (_resnet_weights(56, "resnet56-4bfd9763.th",
                               "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),)),
    *(ModelSpec(f"{'dwscnn' if sep else 'cnn'}_{size}", functools.partial(_family, sep, width, depth),
                f"{'depthwise-separable' if sep else 'regular'} CNN, width {width}, {depth} blocks (32x32)",
                "dwscnn" if sep else "cnn", 32, FAMILY_WEIGHTS.get(f"{'dwscnn' if sep else 'cnn'}_{size}", ()))
      for size, (width, depth) in SIZES.items() for sep in (True, False)),
)


@hookimpl
def mqbench_register_models(register: Registry[ModelSpec]) -> None:
    for spec in MODELS:
        register(spec)
