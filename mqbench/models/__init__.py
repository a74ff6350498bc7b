"""Models: the plugin-facing types.

A model plugin registers a :class:`ModelSpec`: a name, a builder for the float ``nn.Module`` and the
weights it can load. Weights are resolved by :mod:`mqbench.models.weights` (and cached).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mqbench.errors import UnknownNameError, UsageError
from mqbench.train import TrainConfig


@dataclass(frozen=True)
class WeightsSpec:
    """Base class of a named set of weights for one model.

    ``dataset`` is the label space the weights classify; ``preprocess`` the input preset they expect
    (see :mod:`mqbench.data.preprocess`); ``build_kwargs`` the options the model must be built with
    for them (e.g. ``(("tf_same", True),)`` for TensorFlow-trained weights).
    """

    name: str
    description: str = ""
    dataset: str = "synthetic"
    preprocess: str = "native"
    build_kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class CheckpointWeights(WeightsSpec):
    """Common options of weights read from a checkpoint file: where the state dict sits in the file
    (``state_dict_key``, e.g. "state_dict") and key renames applied in order (``rename``, pairs of
    prefixes, e.g. ``(("module.", ""),)``)."""

    sha256: str | None = None  # full sha256, or a prefix of at least 8 hex digits
    state_dict_key: str | None = None
    rename: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FileWeights(CheckpointWeights):
    """A local checkpoint: ``path`` absolute, or relative to the data directory ($MQBENCH_DATA)."""

    path: str = ""


@dataclass(frozen=True)
class UrlWeights(CheckpointWeights):
    """A checkpoint downloaded once into ``$MQBENCH_CACHE/downloads`` and verified by sha256."""

    url: str = ""


@dataclass(frozen=True)
class HubWeights(CheckpointWeights):
    """A checkpoint file in a Hugging Face hub repository (``huggingface_hub.hf_hub_download``)."""

    repo_id: str = ""
    filename: str = ""
    revision: str | None = None


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
    build: Callable[..., nn.Module]  # build(num_classes, **weights.build_kwargs)
    description: str = ""
    family: str = ""
    input_size: int = 32
    weights: tuple[WeightsSpec, ...] = field(default_factory=tuple)

    @property
    def default_weights(self) -> str:
        if not self.weights:
            raise UsageError(f"model {self.name!r} has no weights to load yet (it can be trained or given weights "
                             "by a plugin); choose another model")
        return self.weights[0].name

    def get_weights(self, name: str) -> WeightsSpec:
        for w in self.weights:
            if w.name == name:
                return w
        names = [w.name for w in self.weights]
        raise UnknownNameError(f"weights of {self.name}", name, difflib.get_close_matches(name, names, 3, 0.5), names,
                               listing="`mqbench list models`, which names each model's weights")


__all__ = ["CheckpointWeights", "FileWeights", "HubWeights", "ModelSpec", "TrainConfig", "TrainedWeights", "UrlWeights",
           "WeightsSpec"]
