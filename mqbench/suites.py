"""Suites: named grids of cells, and the built-in ``quick`` suite."""

from __future__ import annotations

from dataclasses import dataclass

from mqbench import hookimpl
from mqbench.registry import Registry


@dataclass(frozen=True)
class Suite:
    """A grid: ``models`` ("name" or "name:weights") x ``pipelines`` x ``backends`` x ``schemes`` x
    ``seeds`` on one dataset. Pipelines that do not quantize (``fp32``) run once, not per scheme.

    A composite suite gives ``parts`` (grids, each on its own dataset) instead of a grid of its own: its cells are
    the union of its parts' cells, stored under the composite's name (the ``papers`` suite)."""

    name: str
    description: str
    dataset: str = ""
    models: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    calib_size: int = 256
    eval_limit: int | None = None
    parts: tuple[Suite, ...] = ()

    def __post_init__(self) -> None:
        grid = (self.dataset, self.models, self.pipelines, self.backends, self.schemes)
        if self.parts and any(grid):
            raise ValueError(f"suite {self.name!r}: a composite suite (parts) has no grid of its own")
        if not self.parts and not all(grid):
            raise ValueError(f"suite {self.name!r} needs a dataset, models, pipelines, backends and schemes (or parts)")
        if any(part.parts for part in self.parts):
            raise ValueError(f"suite {self.name!r}: the parts of a composite suite are grids, not composites")


QUICK = Suite(
    name="quick",
    description="embedded synthetic dataset, three small models trained on first use (no files, no network)",
    dataset="synthetic",
    models=("quick_mobilenet_v1", "quick_mobilenet_v2", "quick_cnn"),
    pipelines=("fp32", "minmax"),
    backends=("simulated",),
    schemes=("w8a8-pt", "w8a8-pc"),
)

IMAGENET = Suite(
    name="imagenet",
    description="pretrained ImageNet MobileNets: calibrate on calib-1000, evaluate on val-1300 (../shared/data)",
    dataset="imagenet",
    models=("mobilenet_v2:tf2ptq", "mobilenet_v2:qat", "mobilenet_v1:qat-1.0-224"),
    pipelines=("fp32", "minmax", "minmax+bias_correction", "cle+mse+bias_correction"),
    backends=("simulated",),
    schemes=("w8a8-pt", "w8a8-pc"),
    calib_size=512,
)

CIFAR10 = Suite(
    name="cifar10",
    description="CIFAR ResNets (the regular-CNN baseline) on the CIFAR-10 test split, calibrated on train images",
    dataset="cifar10",
    models=("resnet20:cifar10", "resnet56:cifar10"),
    pipelines=("fp32", "minmax"),
    backends=("simulated",),
    schemes=("w8a8-pt", "w8a8-pc"),
    calib_size=512,
)

# The seed papers' settings (mqbench.report.papers reads these cells' records). The CIFAR-10 part's training cells
# (qf_sepconv, the QAT methods) reuse records when they exist: run with --train-budget to bound new ones.
BAE_QAT = "msqe+{}_qat(channels_last=true{})"  # Bae et al.'s QAT cells: one epoch each (mqbench.report.papers reads them)
PAPERS = Suite(
    name="papers",
    description="the seed papers' settings on the data we have (Sheng, Finkelstein, Yun & Wong, Bae); "
                "see the Papers section of the published leaderboard",
    parts=(
        Suite(name="papers-imagenet", description="Finkelstein et al.: bias correction on per-tensor MobileNetV2",
              dataset="imagenet", models=("mobilenet_v2:tf2ptq", "mobilenet_v2:qat"),
              pipelines=("fp32", "minmax", "minmax+bias_correction"), backends=("simulated",), schemes=("w8a8-pt",),
              calib_size=512),
        Suite(name="papers-imagenet-qat-grid", description="the QAT MobileNetV2 on the grid it was trained for",
              dataset="imagenet", models=("mobilenet_v2:qat",), pipelines=("minmax",), backends=("simulated",),
              schemes=("w8a8-pt-asym",), calib_size=512),
        Suite(name="papers-imagenet-tools", description="the field's tool in Finkelstein et al.'s setting",
              dataset="imagenet", models=("mobilenet_v2:tf2ptq",), pipelines=("ort:minmax",), backends=("ort-qdq",),
              schemes=("w8a8-pt",), calib_size=512),
        Suite(name="papers-cifar10-sheng", description="Sheng et al.: MobileNetV1 and its quantization-friendly variant",
              dataset="cifar10", models=("mobilenet_v1_cifar:mqbench-tf-x0.5", "qf_mobilenet_v1_cifar:mqbench-x0.5"),
              pipelines=("fp32", "minmax"), backends=("simulated",), schemes=("w8a8-pt",), calib_size=512),
        Suite(name="papers-cifar10-yun", description="Yun & Wong: small DWSCNNs against regular CNNs",
              dataset="cifar10", models=("dwscnn_s:mqbench", "cnn_s:mqbench", "dwscnn_m:mqbench", "cnn_m:mqbench"),
              pipelines=("fp32", "minmax"), backends=("simulated",), schemes=("w8a8-pt",), calib_size=512),
        Suite(name="papers-cifar10-bae", description="Bae et al.: MSQE-based against gradient-based 4-bit weights",
              dataset="cifar10", models=("mobilenet_v1_cifar:mqbench-x0.5", "mobilenet_v2_cifar:mqbench-x0.5"),
              pipelines=("msqe", *(BAE_QAT.format(kind, remedies) for kind in ("msqe", "tqt")
                                   for remedies in ("", ",remedies=true"))),
              backends=("simulated",), schemes=("w4-pc-pow2",), calib_size=512),
    ),
)

DEFAULT_SUITE = "quick"


@hookimpl
def mqbench_register_suites(register: Registry[Suite]) -> None:
    for suite in (QUICK, IMAGENET, CIFAR10, PAPERS):
        register(suite)
