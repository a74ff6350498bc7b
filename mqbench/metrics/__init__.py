"""Per-cell metrics: the plugin-facing types.

After a cell is evaluated, every registered :class:`Metric` computes a JSON-serialisable dict from
the :class:`Evaluation` (logits and labels of the evaluation images); it is stored in the record
under the metric's name, once per evaluated model (``sim``, and ``deployed`` where the backend runs
a real executable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mqbench.errors import NonFiniteOutputError


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Outputs of one model on the evaluation images: ``logits`` (N, C) float, ``labels`` (N,) int64.
    ``name`` says which model of the cell produced them (``sim``, ``deployed``, ``integer sim``).

    Logits holding NaN or inf are refused here (:class:`NonFiniteOutputError`, which fails the cell): every
    comparison with NaN is false, so a NaN model would otherwise rank every label first and score 100%. No
    metric ever sees non-finite logits."""

    logits: torch.Tensor
    labels: torch.Tensor
    name: str = "evaluation"

    def __post_init__(self) -> None:
        finite = torch.isfinite(self.logits).reshape(self.logits.shape[0], -1).all(dim=1)
        bad = int((~finite).sum())
        if bad:
            raise NonFiniteOutputError(
                f"non-finite logits (NaN or inf) on {bad} of {self.logits.shape[0]} images in the {self.name} "
                "evaluation; no accuracy is reported. Check the weights (NaN/inf, a BatchNorm with a negative running "
                "variance), a diverged training step, or the runtime")


class Metric:
    """Base class of a metric plugin."""

    name: str = ""
    description: str = ""
    version: str = "1"

    def compute(self, evaluation: Evaluation) -> dict[str, Any]:
        raise NotImplementedError


__all__ = ["Evaluation", "Metric"]
