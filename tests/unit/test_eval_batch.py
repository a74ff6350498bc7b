"""The evaluation batch changes no logit between the harness's default (``EVAL_BATCH_SIZE``, 32) and the first
wave's (256): every model mqbench evaluates (the float model, the QuantSim, the integer simulation, and what each
runtime deploys) computes each image on its own, bit for bit, at those sizes, so the harness evaluates in small
batches (faster on a CPU) and every published figure stays what it was. (Batches of one or two images are not
covered: oneDNN runs some of their convolutions with other kernels, different at float rounding.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mqbench.data.synthetic import generate
from mqbench.harness.workspace import EVAL_BATCH_SIZE, evaluate
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.schemes import parse_scheme
from tests.unit.test_ort_int8 import _trained_like

BATCHES = (EVAL_BATCH_SIZE, 48, 100)  # against 256, the first wave's evaluation batch
RUNTIMES = ("simulated", "ort-qdq", "ort-qdq-s8s8", "ort-qoperator", "torch-x86", "torch-fbgemm", "torch-qnnpack")


def _models(runtime_name: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    runtime = get_plugins().runtimes.get(runtime_name)
    if runtime.unavailable():
        pytest.skip(f"{runtime_name}: {runtime.unavailable()}")
    torch.manual_seed(0)
    model = _trained_like(quick_mobilenet_v2(10)).eval()
    scheme = parse_scheme("w8a8-pc-rr" if runtime_name.startswith("torch") else "w8a8-pc")
    qsim = runtime.quantsim(model, scheme)
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, generate(0, "calib", 64), minmax_observer)
    qsim.eval()
    models = {"float": runtime.deploy_float(model), "sim": qsim}
    if runtime.deploys:
        models["deployed"] = runtime.deploy(qsim)
    exact = runtime.integer_simulation(qsim)
    if exact is not None:
        models["integer sim"] = exact
    return models


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_logits_do_not_depend_on_the_evaluation_batch(runtime_name: str) -> None:
    split = generate(0, "test", 256)
    for name, model in _models(runtime_name).items():
        reference = evaluate(model, split, 256, name=name).logits
        for batch in BATCHES:
            logits = evaluate(model, split, batch, name=name).logits
            assert torch.equal(logits, reference), f"{runtime_name} {name}: batch {batch} differs from batch 256"
