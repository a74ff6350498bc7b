"""A cell, and the cell resolved: every name looked up and the quantizer parsed, once.

A cell is (model, weights, dataset, quantizer, runtime, scheme, seed, sizes). Its record's ``config`` keeps the
first wave's keys, so the hash of every cell that existed then is unchanged: ``pipeline`` holds the quantizer's
text and ``backend`` the runtime's name; a toolkit recipe's config is under ``quantizer``, a pipeline's steps
under ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from mqbench.backends import Runtime
from mqbench.harness.quantizer import Pipeline, Quantizer, parse_quantizer
from mqbench.plugins import Plugins
from mqbench.record_schema import config_hash
from mqbench.schemes import QuantScheme, parse_scheme


@dataclass(frozen=True)
class Cell:
    """One (model, weights, dataset, quantizer, runtime, scheme, seed) with its data sizes."""

    model: str
    weights: str
    dataset: str
    quantizer: str  # a pipeline (``cle+mse``) or a toolkit recipe (``ort:minmax``)
    runtime: str
    scheme: str
    seed: int = 0
    calib_size: int = 256
    eval_limit: int | None = None
    suite: str | None = None
    # Layer-wise analysis on the first N evaluation images (None: none). A measurement added to the cell, not
    # part of its config: a stored record without it is rerun (adding a newer record) when it is asked for.
    layerwise_images: int | None = None
    # Wall-clock budget (seconds) of each training step of the pipeline (None: none). Set only on cells whose
    # pipeline has a step that trains; part of the cell's config when set.
    train_budget_s: float | None = None


@dataclass(frozen=True)
class ResolvedCell:
    """A cell with its quantizer parsed, its runtime and scheme looked up and its data keys known."""

    cell: Cell
    quantizer: Quantizer
    runtime: Runtime
    scheme: QuantScheme
    preprocess: str

    @property
    def pipeline(self) -> Pipeline | None:
        return self.quantizer if isinstance(self.quantizer, Pipeline) else None

    @property
    def split_keys(self) -> list[tuple[str, str, int | None, str]]:
        """The (dataset, split, limit, preprocess) of the calibration, evaluation and (for a pipeline that trains)
        train splits, in that order."""
        c = self.cell
        keys: list[tuple[str, str, int | None, str]] = [(c.dataset, "calib", c.calib_size, self.preprocess),
                                                         (c.dataset, "test", c.eval_limit, self.preprocess)]
        if self.quantizer.trainers():
            keys.append((c.dataset, "train", None, self.preprocess))
        return keys

    @cached_property
    def config(self) -> dict[str, Any]:
        """The full configuration of the cell (what its hash keys)."""
        c = self.cell
        return {
            "model": c.model, "weights": c.weights, "dataset": c.dataset, "pipeline": c.quantizer,
            **self.quantizer.record_config(),
            "backend": c.runtime, "scheme": c.scheme, "seed": c.seed, "calib_size": c.calib_size,
            "eval_limit": c.eval_limit,
            **({"train_budget_s": c.train_budget_s} if c.train_budget_s is not None else {}),
        }

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def resolve(cell: Cell, plugins: Plugins) -> ResolvedCell:
    """``cell`` with every name looked up (UnknownNameError / UsageError for a bad one)."""
    preprocess = plugins.models.get(cell.model).get_weights(cell.weights).preprocess
    return ResolvedCell(cell, parse_quantizer(cell.quantizer, plugins), plugins.runtimes.get(cell.runtime),
                        parse_scheme(cell.scheme), preprocess)


def cell_config(cell: Cell, plugins: Plugins) -> dict[str, Any]:
    """The full configuration of ``cell`` (what its hash keys)."""
    return resolve(cell, plugins).config


__all__ = ["Cell", "ResolvedCell", "cell_config", "resolve"]
