"""Preprocessing presets against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mqbench.data import Split
from mqbench.data.preprocess import parse_preprocess
from mqbench.errors import UsageError


def test_tf_inception_resizes_shorter_side_crops_centre_and_scales_to_minus_one_one() -> None:
    # A 300x200 (w x h) image: shorter side 200 -> round(8 / 0.875) = 9, longer int(9 * 300 / 200) = 13;
    # centre crop 8 starts at row round(0.5) = 0, column round(2.5) = 2 (round half to even).
    img = Image.fromarray(np.full((200, 300, 3), 255, np.uint8))
    pp = parse_preprocess("tf-inception@8")
    out = pp(img)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8 and (out == 255).all()
    split = Split(torch.from_numpy(out[None]), torch.tensor([0]), pp.mean, pp.std)
    x = split.normalize(split.images)
    assert torch.allclose(x, torch.ones_like(x))  # 255 -> +1
    zero = Split(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.tensor([0]), pp.mean, pp.std)
    assert torch.allclose(zero.normalize(zero.images), -torch.ones(1, 3, 2, 2))  # 0 -> -1


def test_crop_takes_the_centre() -> None:
    # 10x10 gradient image, preset at size 7: resize to round(7/0.875) = 8, crop offset round(0.5) = 0.
    arr = np.zeros((12, 12, 3), np.uint8)
    arr[:, 6:] = 200  # right half bright
    out = parse_preprocess("torchvision-imagenet@7")(Image.fromarray(arr))
    assert out.shape == (3, 7, 7)
    assert out[0, :, 0].max() < 30 and out[0, :, -1].min() > 170


def test_torchvision_and_cifar_statistics() -> None:
    tv, cifar = parse_preprocess("torchvision-imagenet@224"), parse_preprocess("cifar")
    assert tv.mean == (0.485, 0.456, 0.406) and tv.std == (0.229, 0.224, 0.225)
    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    assert cifar(img).shape == (3, 32, 32)  # no resize
    s = Split(torch.from_numpy(cifar(img)[None]), torch.tensor([0]), cifar.mean, cifar.std)
    assert torch.allclose(s.normalize(s.images)[0, 0, 0, 0], torch.tensor((128 / 255 - 0.485) / 0.229))


@pytest.mark.parametrize("bad", ["tf-inception", "tf-inception@x", "cifar@32", "imagenet"])
def test_bad_preset_names(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_preprocess(bad)
