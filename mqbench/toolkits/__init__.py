"""Toolkits: other projects' quantizers, run as they are, as leaderboard rows beside mqbench's pipelines.

A cell's **quantizer** is who chooses the qparams: an mqbench pipeline (methods on a QuantSim), or a
**toolkit recipe**, written ``toolkit:recipe`` (``ort:minmax``, ``torch.ao:default``, ...). A toolkit is a
plugin kind of its own (``mqbench_register_toolkits``): it names its recipes, each a frozen, versioned
:class:`RecipeConfig` (stored in every record, overridable as ``ort:minmax(calib_batch=16)``), quantizes the
float model on the cell's calibration images with its own API, and hands the result on as an
:class:`~mqbench.backends.Artifact` of the format it names (:attr:`Toolkit.output_format`). Any runtime that
runs that format deploys it; one that does not is a skipped cell with the reason. A recipe may write a format of
its own (:attr:`Recipe.output_format`, :meth:`Toolkit.format_of`).

Nothing of mqbench's QuantSim is involved in a toolkit's row and it has no layer-wise analysis; its whole
quantization (export, calibration, writing the model) is the cell's ``calibrate:<toolkit>`` time. Where the toolkit
has its own simulation of what it made (a QDQ file run unfused, a PT2E graph run by PyTorch), the artifact carries
it (:attr:`~mqbench.backends.Artifact.simulation`): the row's ``sim`` accuracy, and the deployed model's agreement
with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench.backends import Artifact
from mqbench.data import Split
from mqbench.methods import MethodConfig, checked_overrides
from mqbench.progress import Reporter
from mqbench.schemes import QuantScheme


@dataclass(frozen=True)
class RecipeConfig(MethodConfig):
    """Base of toolkit recipe configs: frozen, JSON round-trippable, versioned (as method configs)."""

    version: ClassVar[int] = 1


@dataclass(frozen=True)
class Recipe:
    """A named recipe of a toolkit: what it is (with the toolkit's documentation it follows) and its config."""

    name: str
    description: str
    config: RecipeConfig
    output_format: str = ""  # the Artifact format this recipe writes, where it is not the toolkit's


class Toolkit:
    """Base class of a toolkit plugin. Set the class attributes and implement :meth:`quantize`."""

    name: str = ""  # what the quantizer names: ``<name>:<recipe>``
    description: str = ""
    version: str = "1"
    output_format: str = ""  # the Artifact format :meth:`quantize` returns
    recipes: ClassVar[Mapping[str, Recipe]] = {}
    # Distributions whose installed versions are part of every record's environment (provenance).
    packages: ClassVar[tuple[str, ...]] = ()

    def unavailable(self) -> str | None:
        """Why this toolkit cannot run here (its package is not installed, ...), or None."""
        return None

    def recipe(self, name: str) -> Recipe:
        """The recipe called ``name``; KeyError when there is none (the harness words the error)."""
        return self.recipes[name]

    def format_of(self, recipe: str) -> str:
        """The artifact format ``recipe`` writes (its own, else the toolkit's :attr:`output_format`)."""
        return self.recipe(recipe).output_format or self.output_format

    def make_config(self, recipe: str, overrides: dict[str, Any]) -> RecipeConfig:
        """The recipe's config with ``overrides``; ValueError on an unknown parameter or a wrong type."""
        config = self.recipe(recipe).config
        values = checked_overrides(f"{self.name}:{recipe}", type(config), overrides)
        return dataclasses.replace(config, **values)

    def check_scheme(self, scheme: QuantScheme, config: RecipeConfig) -> str | None:
        """Why the recipe cannot produce ``scheme`` (None when it can); the cell is stored as skipped."""
        return None

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        """The float ``model`` quantized with the toolkit's own API on the calibration images ``calib``."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Facts recorded with every cell (the toolkit's version, the API called, ...)."""
        return {}

    def __repr__(self) -> str:
        return f"<toolkit {self.name}>"


def w8a8_problem(scheme: QuantScheme, bits: str, modes: str) -> str | None:
    """The check the 8-bit peer recipes share: a plain ``w8a8-pc`` or ``w8a8-pt`` scheme (the recipe chooses the rest).
    ``bits``: why 8 bits; ``modes``: why no -sym/-asym/-pow2/-rr."""
    if scheme.weight_bits != 8 or scheme.act_bits != 8 or scheme.first_last_bits is not None:
        return f"{bits} (a w8a8 scheme)"
    if scheme.act_symmetric or not scheme.weight_symmetric or scheme.power_of_two or scheme.reduce_range:
        return f"{modes} (w8a8-pc or w8a8-pt)"
    return None


def module_simulation(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A toolkit's quantized torch model as its own simulation (:attr:`Artifact.simulation`): run without grad."""
    def run(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(inputs.float().contiguous()).detach()
    return run


__all__ = ["Recipe", "RecipeConfig", "Toolkit", "module_simulation", "w8a8_problem"]
