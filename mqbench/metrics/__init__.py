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


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Outputs of one model on the evaluation images: ``logits`` (N, C) float, ``labels`` (N,) int64."""

    logits: torch.Tensor
    labels: torch.Tensor


class Metric:
    """Base class of a metric plugin."""

    name: str = ""
    description: str = ""
    version: str = "1"

    def compute(self, evaluation: Evaluation) -> dict[str, Any]:
        raise NotImplementedError


__all__ = ["Evaluation", "Metric"]
