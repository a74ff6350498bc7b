"""Top-1 / top-5 accuracy with 95% Wilson score intervals (the built-in ``accuracy`` metric)."""

from __future__ import annotations

import math
from typing import Any

import torch

from mqbench import hookimpl
from mqbench.metrics import Evaluation, Metric
from mqbench.registry import Registry

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,): whether the label is among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)


class Accuracy(Metric):
    name = "accuracy"
    description = "top-1 and top-5 accuracy with 95% Wilson confidence intervals"

    def compute(self, evaluation: Evaluation) -> dict[str, Any]:
        n = int(evaluation.labels.numel())
        out: dict[str, Any] = {"n": n}
        for k in (1, 5):
            hits = int(topk_correct(evaluation.logits, evaluation.labels, k).sum())
            lo, hi = wilson_interval(hits, n)
            out[f"top{k}"] = {"value": hits / n if n else float("nan"), "ci95": [lo, hi], "correct": hits}
        return out


@hookimpl
def mqbench_register_metrics(register: Registry[Metric]) -> None:
    register(Accuracy())
