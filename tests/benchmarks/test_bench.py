"""Speed benchmarks (pytest-benchmark). Run: python -m pytest tests/benchmarks --benchmark-only

They measure, not assert: the fake-quant kernel, QuantSim's overhead over the float model, and
record-store and leaderboard throughput (the harness's own cost)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mqbench.data.synthetic import generate
from mqbench.metrics.layerwise import analyze
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.quant import functional as Q
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantSim
from mqbench.report import leaderboard
from mqbench.schemes import parse_scheme
from mqbench.store import SCHEMA, SCHEMA_VERSION, Store, new_record_id


def test_fake_quantize_per_channel(benchmark) -> None:
    w = torch.randn(256, 256, 3, 3)
    scale, zp = Q.qparams_from_range(w.amin((1, 2, 3)), w.amax((1, 2, 3)), bits=8, symmetric=True, signed=True)
    benchmark(Q.fake_quantize, w, scale, zp, qmin=-128, qmax=127, axis=0)


def test_fake_quantize_per_tensor_activation(benchmark) -> None:
    """A MobileNetV2 activation at batch 32 (32 x 96 x 112 x 112), as the QuantSim's activation quantizers run it."""
    x = torch.randn(32, 96, 112, 112)
    benchmark(Q.fake_quantize, x, torch.tensor(0.05), torch.tensor(3), qmin=0, qmax=255, check_finite=False)


@pytest.mark.parametrize("which", ["float", "qsim", "integer_sim"])
def test_forward_batch32_mobilenet_v2_224(benchmark, which: str) -> None:
    """A full-size MobileNetV2 (random weights, 224x224, batch 32): the float model, its QuantSim (the fake-quant
    evaluation) and ONNX Runtime's integer simulation, per batch of the harness's evaluation."""
    from mqbench.backends.ort.integer_sim import IntegerSimulation
    from mqbench.backends.ort.runtime import OrtQDQ
    from mqbench.data import Split
    from mqbench.models.mobilenet_v2 import MobileNetV2

    torch.manual_seed(0)
    model = MobileNetV2(1000).eval()
    images = (torch.rand(32, 3, 224, 224) * 255).to(torch.uint8)
    data = Split(images, torch.zeros(32, dtype=torch.int64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = data.normalize(images)
    if which != "float":
        qsim = OrtQDQ().quantsim(model, parse_scheme("w8a8-pc"))
        calibrate_weights(qsim, minmax_observer)
        calibrate_activations(qsim, data, minmax_observer)
        model = qsim.eval() if which == "qsim" else IntegerSimulation(qsim.eval())
    with torch.inference_mode():
        benchmark.pedantic(model, args=(x,), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("which", ["float", "qsim"])
def test_forward_batch256(benchmark, which: str) -> None:
    torch.manual_seed(0)
    model = quick_mobilenet_v2(10).eval()
    data = generate(0, "calib", 256)
    x = data.normalize(data.images)
    if which == "qsim":
        qsim = QuantSim.from_float(model, parse_scheme("w8a8-pc"))
        calibrate_weights(qsim, minmax_observer)
        calibrate_activations(qsim, data, minmax_observer)
        model = qsim.eval()
    with torch.inference_mode():
        benchmark(model, x)


def test_layerwise_analysis_quick_mobilenet_v2(benchmark) -> None:
    """The layer-wise analysis against one QuantSim forward pass of the same 256 images (it costs about three
    forward passes plus the statistics; the MobileNetV2 figure is in the README)."""
    torch.manual_seed(0)
    data = generate(0, "calib", 256)
    qsim = QuantSim.from_float(quick_mobilenet_v2(10).eval(), parse_scheme("w8a8-pt"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, data, minmax_observer)
    benchmark.pedantic(analyze, args=(qsim.eval(), data.normalize(data.images)), rounds=3, iterations=1)


def _record(i: int) -> dict:
    acc = {"n": 2000, "top1": {"value": 0.9, "ci95": [0.88, 0.92]}, "top5": {"value": 0.99, "ci95": [0.98, 1.0]}}
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": new_record_id(),
            "created": f"2026-01-01T00:00:{i % 60:02d}.{i:06d}+00:00", "config_hash": f"{i:064d}", "status": "ok",
            "config": {"dataset": "d", "model": f"m{i % 7}", "weights": "w", "pipeline": "minmax", "backend": "b",
                       "scheme": f"w{2 + i % 7}a8-pt", "seed": i, "eval_limit": None},
            "metrics": {"sim": {"accuracy": acc}}}


def test_store_append(benchmark, tmp_path: Path) -> None:
    store = Store(tmp_path)
    counter = iter(range(10**9))
    benchmark(lambda: store.append(_record(next(counter))))


def test_load_and_render_500_records(benchmark, tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(500):
        store.append(_record(i))
    benchmark(lambda: leaderboard.render_markdown(store.load()))


def test_machine_reference(benchmark) -> None:
    """A fixed workload of torch and plain Python alone (no mqbench code, never changed): scripts/bench_compare.py
    divides every benchmark's change by this one's, so the machine's own drift between two runs (a shared machine's
    load, a slower spell) is not read as a regression of mqbench. A depthwise and a pointwise convolution of a
    MobileNet block at batch 32, and JSON round trips of a record-sized dict."""
    import json

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 96, 28, 28, generator=g)
    dw, pw = torch.randn(96, 1, 3, 3, generator=g), torch.randn(96, 96, 1, 1, generator=g)
    record = {"config": {f"k{i}": i for i in range(50)}, "metrics": [float(i) for i in range(200)]}

    def workload() -> None:
        with torch.inference_mode():
            torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, dw, padding=1, groups=96), pw)
        for _ in range(200):
            json.loads(json.dumps(record))

    benchmark(workload)
