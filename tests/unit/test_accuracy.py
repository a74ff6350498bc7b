from __future__ import annotations

import pytest
import torch

from mqbench.metrics import Evaluation
from mqbench.metrics.accuracy import Accuracy, topk_correct, wilson_interval


def test_wilson_interval_known_values() -> None:
    # Reference values (Wilson 1927; e.g. statsmodels proportion_confint(method="wilson")).
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_topk_and_metric() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
    labels = torch.tensor([1, 2, 2])
    assert topk_correct(logits, labels, 1).tolist() == [True, False, False]
    assert topk_correct(logits, labels, 2).tolist() == [True, True, False]
    out = Accuracy().compute(Evaluation(logits, labels))
    assert out["n"] == 3 and out["top1"]["value"] == pytest.approx(1 / 3) and out["top5"]["value"] == 1.0
    lo, hi = out["top1"]["ci95"]
    assert lo < 1 / 3 < hi
