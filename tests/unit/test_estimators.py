"""Range estimators: each one's defining property, on weighted samples and streaming histograms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mqbench.quant.estimators import (
    Grid,
    HistogramObserver,
    MinMaxObserver,
    SampleObserver,
    entropy_range,
    minmax_range,
    mse_range,
    percentile_range,
    quantization_error,
)

INT8 = Grid(8, symmetric=True, signed=True)
UINT8 = Grid(8, symmetric=False, signed=False)
INT4 = Grid(4, symmetric=True, signed=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), grid=st.sampled_from([INT8, UINT8, INT4,
                                                                                    Grid(4, True, True, True)]))
def test_mse_range_has_the_least_error_among_its_candidates(seed: int, rows: int, grid: Grid) -> None:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, 300, generator=g) * torch.rand(rows, 1, generator=g) * 3
    values[:, 0] *= 8  # an outlier per row: clipping it is worth it at low bit widths
    counts = torch.ones_like(values)
    lo, hi = mse_range(values, counts, grid, candidates=50)
    best = quantization_error(values, counts, lo, hi, grid)
    full_lo, full_hi = minmax_range(values, counts)
    full_lo, full_hi = full_lo.clamp(max=0), full_hi.clamp(min=0)
    for k in range(1, 51):
        err = quantization_error(values, counts, full_lo * k / 50, full_hi * k / 50, grid)
        assert bool((best <= err + 1e-6 * err.abs().clamp_min(1)).all())


def test_mse_clips_outliers_at_4_bits_but_not_a_uniform_tensor_at_8() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 10_000, generator=g)
    x[0, 0] = 30.0
    _, hi = mse_range(x, torch.ones_like(x), INT4)
    assert float(hi[0]) < 10.0  # far below the outlier
    u = torch.rand(1, 10_000, generator=g) * 2 - 1
    _, hi = mse_range(u, torch.ones_like(u), INT8)
    assert float(hi[0]) > 0.97


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.floats(90.0, 100.0))
def test_percentile_range_matches_torch_quantile(seed: int, p: float) -> None:
    x = torch.randn(3, 501, generator=torch.Generator().manual_seed(seed))
    lo, hi = percentile_range(x, torch.ones_like(x), p)
    # the smallest sample whose cumulative share reaches p (the "higher" sample quantile, up to rounding)
    for row in range(3):
        srt = x[row].sort().values
        k_hi = max(int(torch.ceil(torch.tensor(p / 100 * 501 - 1e-9))) - 1, 0)
        assert abs(float(hi[row]) - float(srt[k_hi])) <= float(srt[min(k_hi + 1, 500)] - srt[max(k_hi - 1, 0)])
        assert float(lo[row]) <= float(torch.quantile(x[row], 1 - p / 100 + 0.01))


def test_weighted_percentile_uses_the_counts() -> None:
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    counts = torch.tensor([[97.0, 1.0, 1.0, 1.0]])
    assert float(percentile_range(values, counts, 97.0)[1][0]) == 0.0
    assert float(percentile_range(values, counts, 99.5)[1][0]) == 3.0


def test_entropy_clips_a_heavy_tail_and_keeps_a_uniform_range() -> None:
    g = torch.Generator().manual_seed(1)
    heavy = torch.distributions.Laplace(0.0, 1.0).sample((1, 200_000)).abs()
    heavy[0, 0] = 80.0
    _, hi = entropy_range(heavy, torch.ones_like(heavy), UINT8)
    assert 5.0 < float(hi[0]) < 40.0
    uniform = torch.rand(1, 200_000, generator=g) * 4
    _, hi = entropy_range(uniform, torch.ones_like(uniform), UINT8)
    assert float(hi[0]) > 3.8


def test_histogram_observer_streams_and_rebins_without_losing_counts() -> None:
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(1000, generator=g) * s for s in (0.5, 1.0, 4.0)]  # each batch widens the range
    seen: list[torch.Tensor] = []

    def capture(values: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(counts)
        return percentile_range(values, counts, 99.0)

    obs = HistogramObserver(capture, bins=2048)
    for b in batches:
        obs.observe(b)
    lo, hi = obs.compute_range()
    allx = torch.cat(batches)
    assert float(seen[0].sum()) == allx.numel()
    assert abs(float(hi) - float(torch.quantile(allx, 0.99))) < 0.1
    assert abs(float(lo) - float(torch.quantile(allx, 0.01))) < 0.1
    assert float(obs.lo) == float(allx.min()) and float(obs.hi) == float(allx.max())


def test_sample_observer_is_per_channel_along_its_axis() -> None:
    w = torch.zeros(3, 2, 2, 2)
    for c in range(3):
        w[c] = torch.linspace(-(c + 1), c + 1, 8).view(2, 2, 2)
    obs = SampleObserver(minmax_range, axis=0)
    obs.observe(w)
    lo, hi = obs.compute_range()
    assert lo.tolist() == [-1.0, -2.0, -3.0] and hi.tolist() == [1.0, 2.0, 3.0]
    per_tensor = SampleObserver(minmax_range, axis=None)
    per_tensor.observe(w)
    assert per_tensor.compute_range()[1].dim() == 0


@pytest.mark.parametrize("make", [lambda: MinMaxObserver(), lambda: MinMaxObserver(1),
                                  lambda: HistogramObserver(lambda v, c: minmax_range(v, c)),
                                  lambda: SampleObserver(lambda v, c: minmax_range(v, c))])
def test_every_observer_refuses_a_tensor_holding_one_nan(make) -> None:  # type: ignore[no-untyped-def]
    observer = make()
    observer.observe(torch.randn(4, 3, 5, 5))
    x = torch.randn(4, 3, 5, 5)
    x[2, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="containing NaN"):
        observer.observe(x)
