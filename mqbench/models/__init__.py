"""Models: the plugin-facing types.

A model plugin registers a :class:`ModelSpec`: a name, a builder for the float ``nn.Module`` and the
weights it can load. Weights are resolved by :mod:`mqbench.models.weights` (and cached).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from mqbench.errors import UnknownNameError
from mqbench.train import TrainConfig


@dataclass(frozen=True)
class WeightsSpec:
    """Base class of a named set of weights for one model."""

    name: str
    description: str = ""
    dataset: str = "synthetic"  # the dataset (label space) these weights classify


@dataclass(frozen=True)
class TrainedWeights(WeightsSpec):
    """Weights trained by mqbench on first use (``mqbench.train``) and cached in ``$MQBENCH_CACHE``.

    The cache key is the training config; the cached file's sha256 is checked on every load.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    min_test_top1: float | None = None  # training that ends below this is an error, not a cached model


@dataclass(frozen=True)
class ModelSpec:
    """A registered model. ``build(num_classes)`` returns the float model with random weights."""

    name: str
    build: Callable[[int], nn.Module]
    description: str = ""
    family: str = ""
    input_size: int = 32
    weights: tuple[WeightsSpec, ...] = field(default_factory=tuple)

    @property
    def default_weights(self) -> str:
        if not self.weights:
            raise ValueError(f"model {self.name!r} declares no weights")
        return self.weights[0].name

    def get_weights(self, name: str) -> WeightsSpec:
        for w in self.weights:
            if w.name == name:
                return w
        names = [w.name for w in self.weights]
        raise UnknownNameError(f"weights of {self.name}", name, difflib.get_close_matches(name, names, 3, 0.5), names)


__all__ = ["ModelSpec", "TrainConfig", "TrainedWeights", "WeightsSpec"]
