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
    batch_size: int = 256


QUICK = Suite(
    name="quick",
    description="embedded synthetic dataset, three small models trained on first use (no files, no network)",
    dataset="synthetic",
    models=("quick_mobilenet_v1", "quick_mobilenet_v2", "quick_cnn"),
    pipelines=("fp32", "minmax"),
    backends=("simulated",),
    schemes=("w8a8-pt", "w8a8-pc"),
)

DEFAULT_SUITE = "quick"


@hookimpl
def mqbench_register_suites(register: Registry[Suite]) -> None:
    register(QUICK)
