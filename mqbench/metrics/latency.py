"""Latency of a deployed model: batch 1 and batch 32, with 1 thread and with every core, median and
interquartile range of repeated calls after warm-up, the float model on the same runtime for the
speedup, and the model's size in bytes.

The harness knows a deployed model only as ``deployed(inputs) -> logits`` (MLPerf loadgen's rule), plus
two optional methods a backend's executable may have:

* ``with_threads(n)``: the same model running on ``n`` threads (ONNX Runtime fixes the thread count when
  a session is made). Without it the model is timed under ``torch.set_num_threads(n)``, which sizes the
  thread pools of torch's float and quantized kernels alike.
* ``size_bytes()``: the serialised size of what the runtime loads (an ONNX file, a packed state dict).
  Without it an ``nn.Module``'s ``state_dict`` is serialised with ``torch.save`` and measured.

Statistics are the standard library's (``statistics.median`` and ``statistics.quantiles``, exclusive
method); every call is timed with ``time.perf_counter`` around a complete forward pass, the output
materialised.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mqbench.progress import SILENT, Reporter

Deployed = Callable[[torch.Tensor], torch.Tensor]


MAX_TIME_S = 600.0  # the longest timed stretch per setting (a cell times 8 settings)


@dataclass(frozen=True)
class LatencySettings:
    """What to time. ``threads`` of 0 means every core this process may use.

    The stopping rule is pytest-benchmark's defaults (at least 5 calls, timed for at least 1 s), after 2 untimed
    calls: on ONNX Runtime the first call at a new batch size allocates its arena and the second is still about
    20% slow (MobileNetV2, batch 32, one thread: 624, 475, then 380-410 ms); from the third the calls are steady.
    """

    batch_sizes: tuple[int, ...] = (1, 32)
    threads: tuple[int, ...] = (1, 0)
    min_runs: int = 5
    min_time_s: float = 1.0
    warmup_runs: int = 2

    def __post_init__(self) -> None:
        if self.min_runs < 3:
            raise ValueError(f"latency needs at least 3 timed runs for quartiles, got min_runs={self.min_runs}")
        if not 0 <= self.min_time_s <= MAX_TIME_S:  # also false for NaN; inf would time forever
            raise ValueError(f"latency min_time_s must be a number of seconds from 0 to {MAX_TIME_S:g}, got "
                             f"{self.min_time_s}")
        if self.warmup_runs < 0:
            raise ValueError("latency warmup_runs must not be negative")
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise ValueError(f"latency batch sizes must be positive, got {self.batch_sizes}")
        if not self.threads or any(t < 0 for t in self.threads):
            raise ValueError(f"latency thread counts must be >= 0 (0: every core), got {self.threads}")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), the meaning of "all cores"."""
    return len(os.sched_getaffinity(0))


def summarize(samples_s: list[float], batch_size: int) -> dict[str, Any]:
    """Median, quartiles and IQR (milliseconds) of per-call times, and the median throughput."""
    if len(samples_s) < 3:
        raise ValueError(f"need at least 3 timed calls, got {len(samples_s)}")
    q1, median, q3 = statistics.quantiles(samples_s, n=4, method="exclusive")  # the middle cut is the median
    return {"batch_size": batch_size, "runs": len(samples_s), "median_ms": 1e3 * median, "q1_ms": 1e3 * q1,
            "q3_ms": 1e3 * q3, "iqr_ms": 1e3 * (q3 - q1), "min_ms": 1e3 * min(samples_s),
            "images_per_s": batch_size / median if median > 0 else None}


def time_calls(fn: Callable[[], Any], min_runs: int, min_time_s: float, warmup_runs: int) -> list[float]:
    """Call ``fn`` ``warmup_runs`` times untimed, then until at least ``min_runs`` calls and ``min_time_s``
    seconds were timed; the per-call times in seconds."""
    for _ in range(warmup_runs):
        fn()
    samples: list[float] = []
    total = 0.0
    while len(samples) < min_runs or total < min_time_s:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        total += elapsed
    return samples


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the duration, the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_size_bytes(deployed: Any) -> int | None:
    """What the runtime loads, in bytes (module docstring); None when the model says nothing about it."""
    if hasattr(deployed, "size_bytes"):
        return int(deployed.size_bytes())
    module = deployed if isinstance(deployed, nn.Module) else getattr(deployed, "module", None)
    if isinstance(module, nn.Module):
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        return buffer.getbuffer().nbytes
    return None


def _key(batch: int, threads: int) -> str:
    return f"batch{batch}_threads{threads}"


def measure(deployed: Deployed, images: torch.Tensor, settings: LatencySettings, reporter: Reporter = SILENT,
            label: str = "timing") -> dict[str, dict[str, Any]]:
    """Per (batch size, threads): the timing summary of ``deployed`` on the first images of ``images``
    (repeated when there are fewer than the batch size)."""
    cores = available_cores()
    out: dict[str, dict[str, Any]] = {}
    configs = [(threads or cores, batch) for threads in settings.threads for batch in settings.batch_sizes]
    models: dict[int, Deployed] = {}
    for n, batch in reporter.track(configs, label, total=len(configs)):
        if n not in models:
            models[n] = deployed.with_threads(n) if hasattr(deployed, "with_threads") else deployed
        x = images[torch.arange(batch) % len(images)].contiguous()

        def call(model: Deployed = models[n], x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model(x)

        with torch_threads(n):
            samples = time_calls(call, settings.min_runs, settings.min_time_s, settings.warmup_runs)
        out[_key(batch, n)] = {**summarize(samples, batch), "threads": n}
    return out


def measure_float(float_model: Deployed, images: torch.Tensor, settings: LatencySettings,
                  reporter: Reporter = SILENT) -> dict[str, Any]:
    """The float model's figures that :func:`measure_cell` compares with (its timings and size)."""
    return {"timings": measure(float_model, images, settings, reporter, "timing (float)"),
            "size_bytes": model_size_bytes(float_model)}


def measure_cell(deployed: Deployed, float_model: Deployed | None, images: torch.Tensor,
                 settings: LatencySettings, reporter: Reporter = SILENT,
                 float_figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """A cell's latency figures: the deployed model, the float model on the same runtime (when given, or its
    ``float_figures`` from :func:`measure_float` measured earlier) and the speedup (float median / deployed
    median), and both sizes."""
    result: dict[str, Any] = {"settings": asdict(settings), "cores": available_cores(),
                              "deployed": measure(deployed, images, settings, reporter, "timing (deployed)"),
                              "size_bytes": {"deployed": model_size_bytes(deployed)}}
    if float_figures is None and float_model is not None:
        float_figures = measure_float(float_model, images, settings, reporter)
    if float_figures is not None:
        result["float"] = float_figures["timings"]
        result["size_bytes"]["float"] = float_figures["size_bytes"]
        result["speedup"] = {key: result["float"][key]["median_ms"] / timing["median_ms"]
                             for key, timing in result["deployed"].items() if timing["median_ms"] > 0}
    return result


__all__ = ["LatencySettings", "available_cores", "measure", "measure_cell", "measure_float", "model_size_bytes", "summarize",
           "time_calls", "torch_threads"]
