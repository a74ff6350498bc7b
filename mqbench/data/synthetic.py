"""The embedded synthetic image-classification dataset of the ``quick`` suite.

Ten classes of 32x32 RGB images, generated deterministically from a seed in a few seconds with no
files and no network. Each image is one foreground shape on a cluttered background:

====  ====================  ====================================================
 0    disc                  filled circle
 1    square                filled square
 2    triangle              filled triangle pointing up
 3    ring                  annulus
 4    plus                  "+" cross
 5    x                     diagonal "x" cross
 6    hstripes              square patch of horizontal stripes
 7    vstripes              square patch of vertical stripes
 8    checker               square patch of a checkerboard
 9    frame                 hollow square
====  ====================  ====================================================

Every image draws its own position, size (radius 5..11 px), rotation (+-25 degrees), stripe period,
foreground colour, background colour with a random linear gradient, two low-contrast distractor
blobs and Gaussian pixel noise. Telling a disc from a square, a ring from a frame or stripes from a
checkerboard under rotation, scale and colour changes needs real local features (edges, corners,
periodic texture); a linear classifier on pixels does poorly. Horizontal flips preserve every
class, so flip augmentation is valid.

The generator is vectorised torch code; a split is a function of ``(seed, split name, size)`` only,
so the data's fingerprint identifies it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mqbench import hookimpl
from mqbench.data import DatasetSpec, Split
from mqbench.errors import UsageError
from mqbench.progress import SILENT, Reporter
from mqbench.registry import Registry

CLASSES = (
    "disc",
    "square",
    "triangle",
    "ring",
    "plus",
    "x",
    "hstripes",
    "vstripes",
    "checker",
    "frame",
)
GENERATOR_VERSION = 1
IMAGE_SIZE = 32
# Normalisation applied by ``Split.inputs()``: uint8 -> roughly zero mean, unit variance.
MEAN = 0.5
STD = 0.25

_SPLIT_OFFSETS = {"train": 1, "calib": 2, "test": 3}


def _shape_masks(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                 period: torch.Tensor) -> torch.Tensor:
    """Boolean foreground masks (N, H, W) for rotated, centred coordinates u (right), v (down)."""
    d = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()
    half = r * 0.8
    in_patch = (au <= half) & (av <= half)
    width = torch.clamp(r * 0.28, min=1.2)
    masks = torch.zeros_like(u, dtype=torch.bool)

    def put(cls: int, m: torch.Tensor) -> None:
        sel = (label == cls).view(-1, 1, 1)
        masks.copy_(torch.where(sel, m, masks))

    put(0, d <= r)
    put(1, in_patch)
    # Triangle: apex at v = -r, base at v = 0.75 r with half-width r.
    tri = (v <= 0.75 * r) & (v >= -r) & (au <= (v + r) / 1.75)
    put(2, tri)
    put(3, (d <= r) & (d >= r * 0.55))
    put(4, ((au <= width) & (av <= r)) | ((av <= width) & (au <= r)))
    p, q = (u + v) / math.sqrt(2.0), (u - v) / math.sqrt(2.0)
    put(5, ((p.abs() <= width) & (q.abs() <= r)) | ((q.abs() <= width) & (p.abs() <= r)))
    put(6, in_patch & (torch.sin(v * 2 * math.pi / period) > 0))
    put(7, in_patch & (torch.sin(u * 2 * math.pi / period) > 0))
    checker = (torch.floor(u / (period / 2)) + torch.floor(v / (period / 2))).remainder(2) == 0
    put(8, in_patch & checker)
    put(9, in_patch & ((au >= half - width * 1.1) | (av >= half - width * 1.1)))
    return masks


def generate(seed: int, split: str, size: int) -> Split:
    """Generate one split deterministically: ``size`` images with balanced labels.

    Raises ValueError for an unknown split name or a non-positive size.
    """
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; the synthetic dataset has {sorted(_SPLIT_OFFSETS)}")
    if size <= 0:
        raise ValueError(f"split size must be positive, got {size}")
    g = torch.Generator().manual_seed(seed * 1000 + _SPLIT_OFFSETS[split])
    n = size
    label = torch.arange(n) % len(CLASSES)
    label = label[torch.randperm(n, generator=g)]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    radius = 5.0 + 6.0 * rand(n)
    margin = radius + 1.0
    cx = margin + (IMAGE_SIZE - 1 - 2 * margin) * rand(n)
    cy = margin + (IMAGE_SIZE - 1 - 2 * margin) * rand(n)
    theta = (rand(n) * 2 - 1) * math.radians(25)
    period = 3.0 + 3.0 * rand(n)

    ys, xs = torch.meshgrid(torch.arange(IMAGE_SIZE, dtype=torch.float32),
                            torch.arange(IMAGE_SIZE, dtype=torch.float32), indexing="ij")
    dx = xs.unsqueeze(0) - cx.view(-1, 1, 1)
    dy = ys.unsqueeze(0) - cy.view(-1, 1, 1)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    mask = _shape_masks(label, u, v, radius.view(-1, 1, 1), period.view(-1, 1, 1))

    # Background: random colour plus a random linear gradient.
    bg = 0.15 + 0.7 * rand(n, 3)
    grad = (rand(n, 3, 2) * 2 - 1) * 0.25
    gx = (xs / (IMAGE_SIZE - 1) - 0.5).view(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    gy = (ys / (IMAGE_SIZE - 1) - 0.5).view(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    img = bg.view(n, 3, 1, 1) + grad[..., 0].view(n, 3, 1, 1) * gx + grad[..., 1].view(n, 3, 1, 1) * gy

    # Two low-contrast distractor blobs.
    for _ in range(2):
        bx, by = rand(n) * IMAGE_SIZE, rand(n) * IMAGE_SIZE
        br = 2.0 + 3.0 * rand(n)
        blob = ((xs.unsqueeze(0) - bx.view(-1, 1, 1)) ** 2 + (ys.unsqueeze(0) - by.view(-1, 1, 1)) ** 2
                <= br.view(-1, 1, 1) ** 2)
        shade = (rand(n, 3) * 2 - 1) * 0.15
        img = img + blob.unsqueeze(1) * shade.view(n, 3, 1, 1)

    # Foreground colour: the background colour moved by at least 0.4 in a random direction.
    direction = torch.nn.functional.normalize(rand(n, 3) * 2 - 1, dim=1)
    fg = bg + direction * (0.4 + 0.3 * rand(n, 1))
    fg = fg.clamp(0.0, 1.0)
    img = torch.where(mask.unsqueeze(1), fg.view(n, 3, 1, 1), img)
    img = img + torch.randn(img.shape, generator=g) * 0.06
    images = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Split(images=images, labels=label.to(torch.int64), mean=(MEAN,) * 3, std=(STD,) * 3)


@dataclass(frozen=True)
class SyntheticShapes(DatasetSpec):
    """The ``synthetic`` dataset: see the module docstring."""

    name: str = "synthetic"
    description: str = "embedded 10-class 32x32 synthetic shapes (generated from a seed, no files)"
    num_classes: int = len(CLASSES)
    image_size: int = IMAGE_SIZE
    version: str = str(GENERATOR_VERSION)
    sizes: tuple[tuple[str, int], ...] = (("train", 8000), ("calib", 512), ("test", 2000))
    seed: int = 0

    def split_size(self, split: str) -> int | None:
        return dict(self.sizes).get(split)

    def load_split(self, split: str, limit: int | None = None, preprocess: str = "native",
                   reporter: Reporter = SILENT) -> Split:
        if preprocess != "native":
            raise UsageError(f"the synthetic dataset is 32x32 with its own normalisation; weights expecting "
                             f"{preprocess!r} preprocessing cannot run on it")
        size = dict(self.sizes).get(split)
        if size is None:
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; it has {[s for s, _ in self.sizes]}")
        data = generate(self.seed, split, size)
        return data.head(limit)



@hookimpl
def mqbench_register_datasets(register: Registry[DatasetSpec]) -> None:
    register(SyntheticShapes())
