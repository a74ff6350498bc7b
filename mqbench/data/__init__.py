"""Datasets: the plugin-facing types.

A dataset plugin registers a :class:`DatasetSpec` whose ``load_split`` returns a decoded
:class:`Split` (uint8 images and int64 labels held in memory). Methods calibrate on the ``calib``
split, the harness evaluates on the ``test`` split, and training uses ``train``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mqbench.progress import SILENT, Reporter

NORMALIZED_CACHE_BYTES = 4 << 30  # a split's normalised float32 images are kept in memory up to this size


@dataclass(frozen=True, eq=False)
class Split:
    """Decoded images of one split: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Split.images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"Split.labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all of them when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        return Split(self.images[:limit], self.labels[:limit], self.mean, self.std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the float model input (``(x / 255 - mean) / std`` per channel)."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    @functools.cached_property
    def _normalized(self) -> torch.Tensor | None:
        """Every image normalised once, kept for the process's later passes over this split (the evaluation of
        the simulation and of each backend); None above ``NORMALIZED_CACHE_BYTES`` (then per batch)."""
        if 4 * self.images.numel() > NORMALIZED_CACHE_BYTES:
            return None
        out = torch.empty(self.images.shape, dtype=torch.float32)
        for start in range(0, len(self), 256):
            out[start:start + 256] = self.normalize(self.images[start:start + 256])
        return out

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (inputs, labels) batches in order. The inputs are views of the split's normalised images,
        kept for later passes (copying them would cost more than a fast int8 model's own evaluation): read
        them, never modify them in place (``x = x.clone()`` first). A split too large to keep is normalised
        one batch at a time."""
        cached = self._normalized
        for start in range(0, len(self), batch_size):
            end = start + batch_size
            inputs = cached[start:end] if cached is not None else self.normalize(self.images[start:end])
            yield inputs, self.labels[start:end]

    @functools.cached_property
    def _digest(self) -> str:
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """sha256 of the decoded images and labels: identical data, identical fingerprint."""
        return self._digest


@dataclass(frozen=True)
class DatasetSpec:
    """Base class of a registered dataset. Subclasses set the fields and implement ``load_split``."""

    name: str
    description: str
    num_classes: int
    image_size: int
    version: str = "1"  # bump when the data a spec produces changes (keys cached trained weights)

    def check(self, splits: tuple[str, ...] = ("calib", "test")) -> None:
        """Raise UsageError (naming what is expected where) if ``splits`` cannot be loaded; cheap, no decoding.
        The harness calls it before any work starts."""

    def split_size(self, split: str) -> int | None:
        """How many examples ``split`` holds, when that is known without decoding (None: unknown). The harness
        uses it to make ``--limit`` at or above the size the same cell as no limit."""
        return None

    def load_split(self, split: str, limit: int | None = None, preprocess: str = "native",
                   reporter: Reporter = SILENT) -> Split:
        """Decode and return ``split`` (``train``, ``calib`` or ``test``), its first ``limit`` examples,
        with the preprocessing preset ``preprocess`` (see :mod:`mqbench.data.preprocess`)."""
        raise NotImplementedError


__all__ = ["DatasetSpec", "Split"]
