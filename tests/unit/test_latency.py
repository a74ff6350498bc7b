"""Latency measurement: the statistics, the stopping rule, threads and sizes."""

from __future__ import annotations

import io
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mqbench.metrics.latency import LatencySettings, measure, measure_cell, model_size_bytes, summarize, time_calls


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 10.0), min_size=3, max_size=60), st.integers(1, 64))
def test_summary_is_the_median_and_quartiles_of_the_samples(samples: list[float], batch: int) -> None:
    out = summarize(samples, batch)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="exclusive")
    assert out["median_ms"] == pytest.approx(1e3 * statistics.median(samples))
    assert out["iqr_ms"] == pytest.approx(1e3 * (q3 - q1)) and out["iqr_ms"] >= 0
    assert out["min_ms"] <= out["median_ms"] and out["runs"] == len(samples)
    assert out["images_per_s"] == pytest.approx(batch / statistics.median(samples))


def test_timing_runs_until_both_the_minimum_runs_and_the_minimum_time() -> None:
    calls = []
    assert len(time_calls(lambda: calls.append(1), min_runs=7, min_time_s=0.0, warmup_runs=2)) == 7
    assert len(calls) == 9  # warm-up calls are not timed
    import time
    samples = time_calls(lambda: time.sleep(0.005), min_runs=3, min_time_s=0.1, warmup_runs=0)
    assert sum(samples) >= 0.1 and len(samples) >= 3


def test_settings_reject_too_few_runs_and_bad_batches() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        LatencySettings(min_runs=2)
    with pytest.raises(ValueError, match="batch sizes"):
        LatencySettings(batch_sizes=(0,))


class _Recorder:
    """A fake deployed model that records the batch sizes and thread counts it was called with."""

    def __init__(self, threads: int = 0, log: list[tuple[int, int, int]] | None = None) -> None:
        self.threads, self.log = threads, [] if log is None else log

    def with_threads(self, n: int) -> _Recorder:
        return _Recorder(n, self.log)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append((len(x), self.threads, torch.get_num_threads()))
        return torch.zeros(len(x), 3)


def test_every_batch_and_thread_setting_is_timed_on_a_model_for_that_thread_count() -> None:
    model = _Recorder()
    fast = LatencySettings(batch_sizes=(1, 4), threads=(1, 0), min_runs=3, min_time_s=0.0, warmup_runs=1)
    before = torch.get_num_threads()
    out = measure(model, torch.randn(3, 2), fast)  # fewer images than batch 4: repeated
    from mqbench.metrics.latency import available_cores
    cores = available_cores()
    assert set(out) == {"batch1_threads1", "batch4_threads1", f"batch1_threads{cores}", f"batch4_threads{cores}"}
    assert {(b, t) for b, t, _ in model.log} == {(1, 1), (4, 1), (1, cores), (4, cores)}
    assert all(t == torch_t for _, t, torch_t in model.log)  # torch's pool sized alike during the calls
    assert torch.get_num_threads() == before  # and restored
    assert all(v["runs"] == 3 and v["threads"] in (1, cores) for v in out.values())


def test_cell_latency_has_the_speedup_over_the_float_model_and_sizes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    net(torch.randn(1, 3, 8, 8))
    fast = LatencySettings(batch_sizes=(1,), threads=(1,), min_runs=3, min_time_s=0.0, warmup_runs=0)
    out = measure_cell(_Recorder(), net.eval(), torch.randn(2, 3, 8, 8), fast)
    assert out["speedup"]["batch1_threads1"] == pytest.approx(
        out["float"]["batch1_threads1"]["median_ms"] / out["deployed"]["batch1_threads1"]["median_ms"])
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    assert out["size_bytes"] == {"deployed": None, "float": buffer.getbuffer().nbytes}
    assert model_size_bytes(net) == buffer.getbuffer().nbytes
