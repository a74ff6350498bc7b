"""The data README's reference figures, reproduced through the CLI on the real data.

Float references are checked in two parts: the committed full-split ``fp32`` record in ``results/`` holds the
figure, and a fresh run on the split's first images gives exactly that record's per-image outcomes there
(``MQBENCH_FULL_REFERENCE=1`` evaluates the whole split).

Skips when the data directory ($MQBENCH_DATA, or ../shared/data beside the checkout) is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from mqbench.data.paths import data_dir
from tests.helpers import cli_env, mqbench, mqbench_in_process

DATA = data_dir()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DATA is None or not (DATA / "imagenet" / "val-1300.parquet").exists(),
                                 reason="real data not found (set MQBENCH_DATA or put ../shared/data beside the checkout)")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = os.environ.get("MQBENCH_CACHE") or str(tmp_path_factory.mktemp("cache"))
    return cli_env(Path(cache), MQBENCH_DATA=str(DATA))


def _rows(results: Path, env: dict[str, str]) -> dict[tuple[str, str, str], dict]:
    board = json.loads(mqbench_in_process("leaderboard", "--format", "json", "--results", str(results), env=env).stdout)
    return {(r["model"] + ":" + r["weights"], r["pipeline"], r["scheme"]): r for r in board["rows"]}


def _errors(results: Path, env: dict[str, str]) -> dict[tuple[str, str, str], dict]:
    board = json.loads(mqbench_in_process("leaderboard", "--format", "json", "--results", str(results), env=env).stdout)
    return {(r["model"] + ":" + r["weights"], r["pipeline"], r["scheme"]): r for r in board["error_accumulation"]}


def _records_by_cell(results: Path) -> dict[tuple[str, str], dict]:
    from mqbench.store import Store

    return {(r["config"]["pipeline"], r["config"]["scheme"]): r for r in Store(results).load().records}


IMAGENET_REFERENCES = {"mobilenet_v2:tf2ptq": 0.7900, "mobilenet_v2:qat": 0.8008, "mobilenet_v1:qat-1.0-224": 0.7846}
# As for CIFAR-10 below: the fresh evaluation covers the first 400 val-1300 images (all with MQBENCH_FULL_REFERENCE=1),
# whose outcomes must equal the committed full-split record's (0 of 400 differ for each model, 2026-12-03).
IMAGENET_PREFIX = None if os.environ.get("MQBENCH_FULL_REFERENCE") == "1" else 400


def test_imagenet_float_top1_matches_the_reference(env: dict[str, str], tmp_path: Path) -> None:
    from mqbench.store import Store

    models = [arg for model in IMAGENET_REFERENCES for arg in ("--model", model)]
    limit = ["--limit", str(IMAGENET_PREFIX)] if IMAGENET_PREFIX else []
    res = mqbench("run", "--suite", "imagenet", *models, "--method", "fp32", *limit, "--results", str(tmp_path),
                  "--quiet", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    fresh = {r["config"]["model"] + ":" + r["config"]["weights"]: r for r in Store(tmp_path).load().records}
    committed = _committed_fp32("imagenet")
    for model, expected in IMAGENET_REFERENCES.items():
        accuracy = committed[model]["metrics"]["sim"]["accuracy"]
        assert accuracy["n"] == 1300 and abs(accuracy["top1"]["value"] - expected) <= 0.002, (model, accuracy["top1"])
        _same_outcomes_as_committed(fresh[model], committed[model], IMAGENET_PREFIX or 1300)


def test_per_tensor_collapse_and_per_channel_recovery_of_mobilenet_v2(env: dict[str, str], tmp_path: Path) -> None:
    """The field's central observation on the tf2ptq weights (first 300 val-1300 images): naive per-tensor
    W8A8 collapses the model, per-channel weights recover it. Measured on the full 1300: 0.0800 and 0.7877
    against float 0.7900 (README reference with a simpler placement: 0.074 and 0.755)."""
    res = mqbench("run", "--suite", "imagenet", "--model", "mobilenet_v2:tf2ptq", "--method", "minmax",
                  "--scheme", "w8a8-pt", "--scheme", "w8a8-pc", "--limit", "300", "--layerwise", "32",
                  "--results", str(tmp_path), "--quiet", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path, env)
    assert rows[("mobilenet_v2:tf2ptq", "minmax", "w8a8-pt")]["top1"] < 0.2
    assert rows[("mobilenet_v2:tf2ptq", "minmax", "w8a8-pc")]["top1"] > 0.7
    # Where it breaks (issue 6; measured on 128 images: final SQNR -3.7 dB per tensor, 21.1 dB per channel): the
    # first depthwise layer drops the accumulated SQNR most, and depthwise layers have the widest channel spread.
    errors = _errors(tmp_path, env)
    pt, pc = errors[("mobilenet_v2:tf2ptq", "minmax", "w8a8-pt")], errors[("mobilenet_v2:tf2ptq", "minmax", "w8a8-pc")]
    assert pt["largest_drop_layer"] == "features.1.conv.0.0" and pt["worst_local_layer"].endswith("(depthwise)")
    assert pt["final_sqnr_db"] < 2 and pc["final_sqnr_db"] > pt["final_sqnr_db"] + 15
    kinds = _records_by_cell(tmp_path)[("minmax", "w8a8-pt")]["layerwise"]["weight_range_ratio_median_by_kind"]
    assert kinds["depthwise"] == max(kinds.values()) and kinds["depthwise"] > 2 * kinds["pointwise"]


def test_bias_correction_and_equalization_repair_per_tensor_mobilenet_v2(env: dict[str, str], tmp_path: Path) -> None:
    """Issue 4's repair on the tf2ptq weights at W8A8 per-tensor (first 300 val-1300 images, 512 calibration
    images). Measured on all 1300: minmax 0.0823, minmax+bias_correction 0.7069, cle+mse+bias_correction 0.7854
    (float 0.7900); see the closing note of issue 4 for the commands."""
    res = mqbench("run", "--suite", "imagenet", "--model", "mobilenet_v2:tf2ptq", "--method", "minmax+bias_correction",
                  "--method", "cle+mse+bias_correction", "--scheme", "w8a8-pt", "--limit", "300", "--layerwise", "32",
                  "--results", str(tmp_path), "--quiet", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path, env)
    assert rows[("mobilenet_v2:tf2ptq", "minmax+bias_correction", "w8a8-pt")]["top1"] > 0.55
    assert rows[("mobilenet_v2:tf2ptq", "cle+mse+bias_correction", "w8a8-pt")]["top1"] > 0.72
    # the repair in SQNR (issue 6): naive minmax ends below 2 dB (test above); the repaired pipeline far above
    errors = _errors(tmp_path, env)
    assert errors[("mobilenet_v2:tf2ptq", "cle+mse+bias_correction", "w8a8-pt")]["final_sqnr_db"] > 6


def test_adaround_recovers_4_bit_mobilenet_v2(env: dict[str, str], tmp_path: Path) -> None:
    """Issue 4's W4A8 per-channel recovery on the tf2ptq weights, on a budget: 60 Adam steps per layer on 64
    images, first 300 val-1300 images (measured: mse 0.003, mse+adaround 0.403). On all 1300 with the
    defaults (1000 steps, 256 images): mse 0.004, mse+adaround 0.755 (float 0.790); see issue 4's note."""
    res = mqbench("run", "--suite", "imagenet", "--model", "mobilenet_v2:tf2ptq", "--method", "mse",
                  "--method", "mse+adaround(iterations=60,images=64)", "--scheme", "w4a8-pc", "--limit", "300",
                  "--results", str(tmp_path), "--quiet", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path, env)
    assert rows[("mobilenet_v2:tf2ptq", "mse", "w4a8-pc")]["top1"] < 0.05
    assert rows[("mobilenet_v2:tf2ptq", "mse+adaround(images=64,iterations=60)", "w4a8-pc")]["top1"] > 0.30  # measured 0.403



def _minmax_qsim(runtime: Any, model: str, weights: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    """``model`` calibrated for ``runtime`` with minmax w8a8-pc on 128 calib-1000 images; the workspace and its
    preprocessing, to read test images with."""
    from mqbench.data.paths import DATA_ENV
    from mqbench.harness import Workspace
    from mqbench.plugins import get_plugins
    from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
    from mqbench.schemes import parse_scheme

    monkeypatch.setenv(DATA_ENV, str(DATA))
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get(model).get_weights(weights).preprocess
    float_model, _ = ws.float_model(model, weights)
    qsim = runtime.quantsim(float_model, parse_scheme("w8a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, ws.split("imagenet", "calib", 128, preprocess), minmax_observer)
    qsim.eval()
    return qsim, ws, preprocess


@pytest.mark.parametrize(("model", "weights"), [("mobilenet_v2", "tf2ptq"), ("mobilenet_v1", "qat-1.0-224")])
def test_the_integer_simulation_predicts_onnx_runtime_on_every_image(model: str, weights: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 5: the simulation in ONNX Runtime's own arithmetic gives the logits of its integer kernels, bit for
    bit, on the real MobileNets (minmax w8a8-pc, 128 calibration and 128 val-1300 images here; on all 1300
    images with the suite's 512 calibration images: 100.00% top-1 agreement, where fake quantization agrees on
    98.46% (V2) and 99.15% (V1); README, "simulation against real kernels")."""
    pytest.importorskip("onnxruntime")
    from mqbench.backends.ort import mlas
    from mqbench.backends.ort.integer_sim import IntegerSimulation
    from mqbench.backends.ort.runtime import OrtQDQ, cpu_isa

    if mlas.supported_isa(cpu_isa()) is not None:
        pytest.skip(str(mlas.supported_isa(cpu_isa())))
    backend = OrtQDQ(threads=2)
    qsim, ws, preprocess = _minmax_qsim(backend, model, weights, monkeypatch)
    deployed, exact = backend.deploy(qsim), IntegerSimulation(qsim)
    for images, _ in ws.split("imagenet", "test", 128, preprocess).batches(64):
        assert torch.equal(exact(images), deployed(images))


def test_the_xnnpack_simulation_predicts_litert_and_executorch_on_mobilenet_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: XNNPACK's arithmetic (``XnnpackSimulation``: ONNX Runtime's on int8 codes with the converter's int32
    biases) gives LiteRT's and ExecuTorch's logits bit for bit on MobileNetV1 (minmax w8a8-pc, 128 calibration and
    32 val-1300 images), where ONNX Runtime's own bias codes miss (measured: 140 codes of the first convolution
    differ, `scripts/xnnpack_ops.py`)."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("executorch.runtime")
    from mqbench.backends.executorch import ExecuTorchXnnpack
    from mqbench.backends.litert import LiteRtXnnpack
    from mqbench.backends.ort.integer_sim import IntegerSimulation
    from mqbench.backends.xnnpack import XnnpackSimulation, simulation_unsupported

    if simulation_unsupported() is not None:
        pytest.skip(str(simulation_unsupported()))
    qsim, ws, preprocess = _minmax_qsim(LiteRtXnnpack(), "mobilenet_v1", "qat-1.0-224", monkeypatch)
    images = next(iter(ws.split("imagenet", "test", 32, preprocess).batches(32)))[0]
    with torch.no_grad():
        exact, onnx_runtime = XnnpackSimulation(qsim)(images), IntegerSimulation(qsim, signed_activations=True)(images)
    for runtime in (LiteRtXnnpack(threads=2), ExecuTorchXnnpack(threads=2)):
        deployed = runtime.deploy(qsim)(images)
        assert torch.equal(exact, deployed), runtime.name
        assert not torch.equal(onnx_runtime, deployed), runtime.name  # the bias codes matter


def test_the_channels_last_simulation_is_within_its_stated_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25: the harness evaluates the fake-quant simulation in channels-last memory format (a third faster), not
    bit for bit: on MobileNetV2 tf2ptq minmax w8a8-pc, per-image top-1 outcomes may differ from the contiguous
    evaluation's on at most 1.5% of the images (7 of 1300 with the suite's 512 calibration images; here 128
    calibration and 512 evaluation images: 7 of 512 on an AVX2 machine, whose float kernels round otherwise),
    top-1 by at most 1 point (0.59 there)."""
    from mqbench.backends.ort.runtime import OrtQDQ
    from mqbench.data.paths import DATA_ENV
    from mqbench.harness import Workspace, evaluate
    from mqbench.harness.flows import channels_last
    from mqbench.metrics.accuracy import topk_correct
    from mqbench.plugins import get_plugins
    from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
    from mqbench.quant.inference import for_inference
    from mqbench.schemes import parse_scheme

    monkeypatch.setenv(DATA_ENV, str(DATA))
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get("mobilenet_v2").get_weights("tf2ptq").preprocess
    float_model, _ = ws.float_model("mobilenet_v2", "tf2ptq")
    qsim = OrtQDQ().quantsim(float_model, parse_scheme("w8a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, ws.split("imagenet", "calib", 128, preprocess), minmax_observer)
    split = ws.split("imagenet", "test", 512, preprocess)
    contiguous = evaluate(qsim.eval(), split, 32)
    last = evaluate(channels_last(for_inference(qsim)), split, 32)  # as the harness evaluates the sim
    assert not torch.equal(contiguous.logits, last.logits)  # another kernel: the tolerance is needed
    a, b = (topk_correct(e.logits, split.labels, 1) for e in (contiguous, last))
    assert int((a != b).sum()) <= 0.015 * len(split)
    assert abs(float(a.float().mean() - b.float().mean())) <= 0.01


PUBLISHED_CIFAR = ["mobilenet_v1_cifar:mqbench-x0.5", "mobilenet_v2_cifar:mqbench-x0.5",
                   "mobilenet_v2_cifar:mqbench-8ep-x0.5", "mobilenet_v1_cifar:mqbench-tf-x0.5",
                   "qf_mobilenet_v1_cifar:mqbench-x0.5", "dwscnn_s:mqbench", "cnn_s:mqbench", "dwscnn_m:mqbench",
                   "cnn_m:mqbench"]
CIFAR_REFERENCES = {"resnet20:cifar10": 0.8103, "resnet56:cifar10": 0.8320}  # the data README's figures
# The fresh evaluation covers the first CIFAR_PREFIX test images (all 10000 with MQBENCH_FULL_REFERENCE=1): their
# per-image outcomes must equal those of the committed full-split record, whose top-1 is checked against the
# reference. Measured: 0 of 2000 outcomes differ for each of the 11 models (2026-12-03), a run of 28 s where the
# whole split took 126 s.
CIFAR_PREFIX = None if os.environ.get("MQBENCH_FULL_REFERENCE") == "1" else 2000


def _committed_fp32(dataset: str) -> dict[str, dict]:
    """The newest committed ``fp32`` record on ``simulated`` per model:weights of ``dataset`` (``results/``)."""
    from mqbench.store import Store
    from tests.helpers import REPO

    newest: dict[str, dict] = {}
    for r in sorted(Store(REPO / "results").load().records, key=lambda r: r["created"]):
        c = r["config"]
        if (c["dataset"], c["pipeline"], c["backend"], r["status"]) == (dataset, "fp32", "simulated", "ok"):
            newest[c["model"] + ":" + c["weights"]] = r
    return newest


@pytest.fixture(scope="module")
def fresh_cifar_fp32(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The fp32 cells of every published CIFAR model and of the reference ResNets on the first CIFAR_PREFIX test
    images, run by one ``mqbench run`` (one process, the data loaded once): records by model:weights."""
    from mqbench.store import Store

    results = tmp_path_factory.mktemp("cifar-fp32")
    models = [arg for model in [*PUBLISHED_CIFAR, *CIFAR_REFERENCES] for arg in ("--model", model)]
    limit = ["--limit", str(CIFAR_PREFIX)] if CIFAR_PREFIX else []
    res = mqbench("run", "--suite", "cifar10", *models, "--method", "fp32", *limit, "--results", str(results),
                  "--quiet", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return {r["config"]["model"] + ":" + r["config"]["weights"]: r for r in Store(results).load().records}


def _same_outcomes_as_committed(fresh: dict, committed: dict, images: int) -> None:
    """The fresh record's per-image top-1 outcomes (``images`` of them) are the committed record's first ones."""
    from mqbench.metrics.accuracy import unpack_bits

    new, old = fresh["metrics"]["sim"]["accuracy"], committed["metrics"]["sim"]["accuracy"]
    assert new["n"] == images <= old["n"]
    a, b = unpack_bits(new["top1_outcomes"], new["n"]), unpack_bits(old["top1_outcomes"], old["n"])[:new["n"]]
    assert sum(x != y for x, y in zip(a, b, strict=True)) == 0


@pytest.mark.parametrize("model", list(CIFAR_REFERENCES))
def test_cifar10_float_top1_matches_the_reference(model: str, fresh_cifar_fp32: dict) -> None:
    committed = _committed_fp32("cifar10")[model]
    accuracy = committed["metrics"]["sim"]["accuracy"]
    assert accuracy["n"] == 10000 and abs(accuracy["top1"]["value"] - CIFAR_REFERENCES[model]) <= 0.002
    _same_outcomes_as_committed(fresh_cifar_fp32[model], committed, CIFAR_PREFIX or 10000)


@pytest.mark.parametrize("model", PUBLISHED_CIFAR)
def test_published_cifar_weights_reproduce_the_top1_of_their_training(model: str, fresh_cifar_fp32: dict) -> None:
    from mqbench.models.weights import sha256_file
    from mqbench.plugins import get_plugins

    name, _, weights = model.partition(":")
    path = Path(get_plugins().models.get(name).get_weights(weights).path)  # type: ignore[attr-defined]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sha256_file(path) == sidecar["sha256"]
    # Trained under a 30-minute budget, which stops at an epoch boundary (an epoch that started inside it may end a
    # few seconds past it: mobilenet_v1_cifar:mqbench-tf-x0.5 took 1804 s, its epochs 3-5 slowed by other work).
    assert sidecar["time_budget_s"] <= 1800 and sidecar["train_seconds"] <= 1800 + 60
    assert sidecar["command"].startswith("mqbench train")
    committed = _committed_fp32("cifar10")[model]
    assert committed["weights"]["sha256"] == sidecar["sha256"] and committed["metrics"]["sim"]["accuracy"]["n"] == 10000
    assert abs(committed["metrics"]["sim"]["accuracy"]["top1"]["value"] - sidecar["test_top1"]) <= 0.001
    _same_outcomes_as_committed(fresh_cifar_fp32[model], committed, CIFAR_PREFIX or 10000)
