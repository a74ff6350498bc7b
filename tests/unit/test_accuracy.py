from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=5, max_size=5), min_size=1, max_size=20),
       st.data())
def test_tied_logits_rank_by_class_index_so_top1_is_argmax(rows: list[list[int]], data: st.DataObject) -> None:
    # Few distinct values: ties everywhere, as on quantized logits.
    logits = torch.tensor(rows, dtype=torch.float32)
    labels = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=len(rows), max_size=len(rows))))
    assert topk_correct(logits, labels, 1).tolist() == (logits.argmax(1) == labels).tolist()
    for k in (2, 3):
        for row, label, hit in zip(rows, labels.tolist(), topk_correct(logits, labels, k).tolist(), strict=True):
            order = sorted(range(5), key=lambda c: (-row[c], c))  # stable: equal logits by class index
            assert hit == (label in order[:k])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=40))
def test_outcome_bits_round_trip(outcomes: list[bool]) -> None:
    from mqbench.metrics.accuracy import pack_bits, unpack_bits
    assert unpack_bits(pack_bits(torch.tensor(outcomes, dtype=torch.bool)), len(outcomes)) == outcomes


def test_mcnemar_exact_values() -> None:
    from mqbench.metrics.accuracy import mcnemar_p
    a = [True] * 10 + [False] * 5
    b = [False] * 10 + [False] * 5
    assert abs(mcnemar_p(a, b) - 2 / 2**10) < 1e-12  # 10 discordant, all one way
    assert mcnemar_p(a, a) == 1.0
    # 6 vs 2 discordant: p = 2 * P(X <= 2 | n=8) = 2 * 37/256
    c = [True] * 6 + [False] * 2 + [True] * 5
    d = [False] * 6 + [True] * 2 + [True] * 5
    assert abs(mcnemar_p(c, d) - 2 * 37 / 256) < 1e-12 and mcnemar_p(c, d) == mcnemar_p(d, c)
