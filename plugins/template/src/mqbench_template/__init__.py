"""A template mqbench plugin: a model, a method, a runtime and a toolkit, registered through the public API only.

Everything a plugin author needs is imported from ``mqbench`` and its plugin-facing modules; the
hook functions below are found by name (see ``mqbench/hookspecs.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime
from mqbench.data import Split
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights
from mqbench.progress import Reporter
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.estimators import Observer
from mqbench.quant.qsim import QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit

__version__ = "0.1.0"


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MeanStdObserver(Observer):
    """Range = mean +- k * std of everything observed, clipped to the observed min/max."""

    def __init__(self, k: float) -> None:
        super().__init__(axis=None)
        self.k = k
        self.total = self.total_sq = 0.0
        self.n = 0
        self.lo, self.hi = float("inf"), float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.total += float(x.sum())
        self.total_sq += float((x * x).sum())
        self.n += x.numel()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise RuntimeError("MeanStdObserver saw no data")
        mean = self.total / self.n
        std = max(self.total_sq / self.n - mean * mean, 0.0) ** 0.5
        return torch.tensor(max(self.lo, mean - self.k * std)), torch.tensor(min(self.hi, mean + self.k * std))


@dataclass(frozen=True)
class MeanStdConfig(MethodConfig):
    k: float = 6.0


class MeanStd(Method):
    name = "template_meanstd"
    stage = "calibrate"
    description = "template plugin: activation ranges mean +- k std, weights min/max"
    version = __version__
    config_type = MeanStdConfig

    def calibrate(self, qsim: QuantSim, calib: Split, config: MethodConfig, ctx: StepContext) -> None:
        assert isinstance(config, MeanStdConfig)
        calibrate_weights(qsim, minmax_observer)
        calibrate_activations(qsim, calib, lambda q: MeanStdObserver(config.k), ctx.batch_size, ctx.reporter)


@hookimpl
def mqbench_register_models(register: Registry[ModelSpec]) -> None:
    weights = TrainedWeights("synthetic", "trained on the synthetic dataset", train=TrainConfig(epochs=5))
    register(ModelSpec("template_tinycnn", TinyCNN, "template plugin: three-conv CNN for 32x32 inputs", "plain_cnn", 32,
                       (weights,)))


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(MeanStd())


class BFloat16(Runtime):
    """A runtime: the float model run in bfloat16 (what OpenVINO does by default on AVX-512 machines, for one).
    It declares the one artifact format it runs, so quantizing pipelines and toolkits are skipped on it with the
    reason, and the fp32 row measures bfloat16's accuracy and speed against the float32 runtimes."""

    name = "template-bf16"
    description = "template plugin: the float model in bfloat16 on torch's CPU kernels"
    version = __version__
    formats = frozenset({FLOAT})

    def load(self, artifact: Artifact) -> Deployed:
        module = artifact.payload.eval().to(torch.bfloat16)
        return lambda x: module(x.to(torch.bfloat16)).float()

    def info(self) -> dict[str, Any]:
        return {"runtime": f"torch {torch.__version__} (bfloat16)", "precision": "bf16"}


@dataclass(frozen=True)
class MeanStdRecipe(RecipeConfig):
    k: float = 6.0
    batch_size: int = 64


class TemplateToolkit(Toolkit):
    """A toolkit: a quantizer of another project, run as that project recommends. A real one calls its project's
    API (nncf.quantize, quantize_static, ...) and returns the format it writes (``onnx-qdq`` for a QDQ ONNX model);
    this one stands in with its own mean +- k std ranges, handed on as a calibrated QuantSim."""

    name = "template"
    description = "template plugin: mean +- k std activation ranges, min/max weights, as a toolkit"
    version = __version__
    output_format = QUANTSIM
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "meanstd": Recipe("meanstd", "activation ranges mean +- 6 std, weights min/max", MeanStdRecipe())}

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        assert isinstance(config, MeanStdRecipe)
        qsim = QuantSim.from_float(model, scheme)
        calibrate_weights(qsim, minmax_observer)
        calibrate_activations(qsim, calib, lambda q: MeanStdObserver(config.k), config.batch_size, reporter)
        return Artifact(QUANTSIM, qsim, {"ranges": f"mean +- {config.k} std"})


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(BFloat16())


@hookimpl
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    register(TemplateToolkit())
