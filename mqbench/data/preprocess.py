"""Preprocessing presets: decoded PIL image -> uint8 (3, size, size) array, plus the per-channel mean
and std that ``Split.normalize`` applies (``(x / 255 - mean) / std``).

============================  ==================================================================
``tf-inception@SIZE``         RGB; shorter side resized to ``round(SIZE / 0.875)`` (PIL bilinear);
                              centre crop SIZE; inputs scaled to [-1, 1] (mean 0.5, std 0.5).
                              TensorFlow / TFLite MobileNets (the shared ImageNet weights).
``torchvision-imagenet@SIZE``  RGB; shorter side to ``round(SIZE / 0.875)`` (256 for 224), bilinear;
                              centre crop SIZE; ImageNet mean (0.485, 0.456, 0.406), std
                              (0.229, 0.224, 0.225). torchvision's checkpoints.
``cifar``                     RGB at native size (32x32), no resize; CIFAR mean/std as torchvision's
                              ``ToTensor`` + ``Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))``
                              used by the shared CIFAR ResNets.
``native``                    RGB at native size, mean 0.5 std 0.25 (the synthetic dataset).
============================  ==================================================================

Resizing follows torchvision's conventions (the shorter side to the target, the longer side
truncated ``int(target * long / short)``; crop offsets ``round((h - size) / 2)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mqbench.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """A preset with its target size (None: native size)."""

    kind: str
    size: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.size is None else f"{self.kind}@{self.size}"

    @property
    def mean(self) -> tuple[float, float, float]:
        return {"tf-inception": (0.5, 0.5, 0.5), "torchvision-imagenet": IMAGENET_MEAN, "cifar": IMAGENET_MEAN,
                "native": (0.5, 0.5, 0.5)}[self.kind]

    @property
    def std(self) -> tuple[float, float, float]:
        return {"tf-inception": (0.5, 0.5, 0.5), "torchvision-imagenet": IMAGENET_STD, "cifar": IMAGENET_STD,
                "native": (0.25, 0.25, 0.25)}[self.kind]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """uint8 array (3, H, W)."""
        image = image.convert("RGB")
        if self.kind in ("tf-inception", "torchvision-imagenet"):
            assert self.size is not None
            image = center_crop(resize_shorter(image, round(self.size / 0.875)), self.size)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


PRESETS = ("tf-inception", "torchvision-imagenet", "cifar", "native")


def parse_preprocess(text: str) -> Preprocess:
    """``tf-inception@224``, ``torchvision-imagenet@224``, ``cifar``, ``native``."""
    kind, _, size = text.partition("@")
    if kind not in PRESETS:
        raise UsageError(f"unknown preprocessing {text!r}; presets: {', '.join(PRESETS)} (with @SIZE for the ImageNet ones)")
    if kind in ("tf-inception", "torchvision-imagenet"):
        if not size.isdigit() or int(size) <= 0:
            raise UsageError(f"preprocessing {text!r} needs a size, e.g. {kind}@224")
        return Preprocess(kind, int(size))
    if size:
        raise UsageError(f"preprocessing {kind!r} takes no size")
    return Preprocess(kind)


def resize_shorter(image: Image.Image, target: int) -> Image.Image:
    w, h = image.size
    if w <= h:
        new = (target, int(target * h / w))
    else:
        new = (int(target * w / h), target)
    if new == (w, h):
        return image
    return image.resize(new, Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"image of {w}x{h} is smaller than the crop {size}")
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
