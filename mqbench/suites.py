"""Suites: named grids of cells, and the built-in ``quick`` suite."""

from __future__ import annotations

from dataclasses import dataclass

from mqbench import hookimpl
from mqbench.registry import Registry


@dataclass(frozen=True)
class Suite:
    """A grid: ``models`` ("name" or "name:weights") x ``pipelines`` x ``backends`` x ``schemes`` x
    ``seeds`` on one dataset. Pipelines that do not quantize (``fp32``) run once, not per scheme."""

    name: str
    description: str
    dataset: str
    models: tuple[str, ...]
    pipelines: tuple[str, ...]
    backends: tuple[str, ...]
    schemes: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    calib_size: int = 256
    eval_limit: int | None = None


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

DEFAULT_SUITE = "quick"


@hookimpl
def mqbench_register_suites(register: Registry[Suite]) -> None:
    for suite in (QUICK, IMAGENET, CIFAR10):
        register(suite)
