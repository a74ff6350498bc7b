"""Model definitions: TF-SAME padding, key layouts, QuantSim keeps the padding rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mqbench.layers import Conv2dSame, tf_same_pad
from mqbench.models.mobilenet_v1 import MobileNetV1
from mqbench.models.mobilenet_v2 import MobileNetV2
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme


def test_tf_same_pads_after_on_even_sizes_and_both_sides_on_odd() -> None:
    x = torch.ones(1, 1, 4, 4)
    y = tf_same_pad(x, (3, 3), (2, 2))
    assert y.shape == (1, 1, 5, 5) and y[0, 0, 0, 0] == 1 and y[0, 0, -1, -1] == 0  # 0 before, 1 after
    z = tf_same_pad(torch.ones(1, 1, 5, 5), (3, 3), (2, 2))
    assert z.shape == (1, 1, 7, 7) and z[0, 0, 0, 0] == 0 and z[0, 0, -1, -1] == 0  # 1 before, 1 after
    assert tf_same_pad(x, (3, 3), (1, 1)).shape == (1, 1, 6, 6)


def test_conv2d_same_matches_explicit_padding_and_differs_from_pytorch_padding() -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, 3, 2, 0, bias=False)
    x = torch.randn(2, 3, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1), atol=1e-3)


@pytest.mark.parametrize(("cls", "expected"), [
    (MobileNetV2, ["features.0.0", "features.2.conv.1.0", "features.4.conv.1.0", "features.7.conv.1.0",
                   "features.14.conv.1.0"]),
    (MobileNetV1, ["features.0.0", "features.2.0", "features.4.0", "features.6.0", "features.12.0"]),
])
def test_tf_same_layers_are_those_of_the_tf_checkpoints(cls, expected) -> None:
    m = cls(1000, tf_same=True)
    assert [n for n, x in m.named_modules() if isinstance(x, Conv2dSame)] == expected


def test_imagenet_layouts_parameter_counts() -> None:
    assert sum(p.numel() for p in MobileNetV2(1000).parameters()) == 3_504_872
    assert sum(p.numel() for p in MobileNetV1(1000).parameters()) == 4_231_976
    keys = list(MobileNetV2(1000).state_dict())
    assert keys[0] == "features.0.0.weight" and keys[-1] == "classifier.1.bias" and len(keys) == 314


def test_quantsim_keeps_tf_same_padding() -> None:
    torch.manual_seed(0)
    model = MobileNetV1(10, width_mult=0.25, tf_same=True).eval()
    qsim = QuantSim.from_float(model, parse_scheme("w8a8"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), qsim.float_mode():
        assert torch.allclose(qsim(x), model(x), atol=1e-4)


def test_cifar_variants_end_at_4x4_and_every_registered_model_builds() -> None:
    from mqbench.plugins import Plugins

    p = Plugins(entry_points=False, disable=set())
    for spec in p.models:
        kwargs = dict(spec.weights[0].build_kwargs) if spec.weights else {}
        model = spec.build(10, **kwargs).eval()
        size = spec.input_size if spec.input_size <= 64 else 96
        with torch.no_grad():
            assert model(torch.zeros(1, 3, size, size)).shape == (1, 10), spec.name
    v1 = p.models.get("mobilenet_v1_cifar").build(10)
    assert v1.features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4  # 32 / 2 / 2 / 2
    v2 = p.models.get("mobilenet_v2_cifar").build(10)
    assert v2.features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4  # 32 / 2 / 2 / 2


def test_a_dataset_cannot_calibrate_on_its_evaluation_images() -> None:
    from mqbench.data.images import ImageDataset, ImageSource

    same = ImageSource("parquet", ("x.parquet",))
    with pytest.raises(ValueError, match="calibrate on its evaluation images"):
        ImageDataset("bad", "bad", 10, 32, splits=(("calib", same), ("test", same)))


def test_quantization_friendly_block_has_no_bn_or_activation_between_dw_and_pw() -> None:
    from torch import nn

    from mqbench.models.qf_mobilenet_v1 import QFMobileNetV1

    m = QFMobileNetV1(10, width_mult=0.25)
    block = m.features[1]
    assert [type(x) for x in block] == [nn.Conv2d, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert block[0].groups == block[0].in_channels and block[1].kernel_size == (1, 1)
    assert not any(isinstance(x, nn.ReLU6) for x in m.modules())
    assert len(m.depthwise_weights()) == 13
    penalty = m.depthwise_l2_penalty()
    assert torch.isclose(penalty, sum((w * w).sum() for w in m.depthwise_weights()))
    penalty.backward()
    assert block[0].weight.grad is not None
