"""Run a sweep's cells as Ray tasks, on a local Ray instance or an existing cluster (``mqbench run --executor ray``).

The driver (``mqbench run``) stays the only writer of the results directory: this executor yields each
record as its task finishes and :func:`mqbench.harness.run` appends it, exactly as with the in-process
executor, so resume, ``--force`` and the leaderboard behave the same.

How a sweep runs:

1. The driver decodes every split the cells calibrate and evaluate on, and resolves (trains, downloads,
   verifies) every set of float weights they use, once, with its progress bars; each goes into Ray's
   object store once (``ray.put``). Workers fetch what their cell needs and keep it for their later cells
   (a per-process :class:`~mqbench.harness.Workspace`), so nothing large is shipped once per cell.
   Where the driver cannot prepare an input (a missing file, say) the cell's worker meets the same
   error itself and the cell is stored as failed with it, as in-process.
2. Each cell is one task (``num_cpus=cpus_per_cell``, ``num_gpus=gpus_per_cell``; the worker runs torch
   with that many threads). A worker rebuilds the driver's plugin set from ``Plugins.recipe``, so the
   plugins installed on the workers must match the driver's.
3. A failed task (an exception escaping the cell, or a worker killed) is retried up to ``max_retries``
   times by Ray; then the cell is stored as failed, with the cause and the number of attempts, and the
   sweep goes on. A failure inside a cell (a method raising, a NaN) is not a task failure: the cell returns
   a failed record, as in-process, and is not retried (it would fail the same way).

Latency measured by concurrent cells on one node is disturbed by its neighbours: each record's
``executor`` says how the cell ran (node, CPUs per cell); measure latency with ``--cpus-per-cell`` equal
to the node's CPU count, or in-process, for figures meant to be compared.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mqbench import allocator
from mqbench.errors import UsageError
from mqbench.harness.cell import Cell
from mqbench.harness.execute import run_cell
from mqbench.harness.record import failed_record
from mqbench.harness.workspace import Workspace
from mqbench.metrics.latency import LatencySettings
from mqbench.plugins import Plugins
from mqbench.progress import SILENT

RAY_EXTRA_HINT = "install it with: pip install 'mqbench[ray]'"

SplitKey = tuple[str, str, int | None, str]
WeightsKey = tuple[str, str]


def import_ray() -> Any:
    """The ``ray`` module, or a UsageError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--executor ray needs the optional dependency Ray ({exc}); {RAY_EXTRA_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayExecutorConfig:
    """``address``: a running cluster to join (``ray://host:10001``, ``host:6379`` or ``auto``); None starts
    a local instance with ``local_cpus`` CPUs (None: all) for the sweep and stops it afterwards.
    ``max_retries``: how often Ray reruns a task whose worker died or which raised, before the cell is
    stored as failed."""

    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    max_retries: int = 2
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if not self.cpus_per_cell > 0:
            raise UsageError(f"--cpus-per-cell must be positive, got {self.cpus_per_cell}")
        if self.gpus_per_cell < 0:
            raise UsageError(f"--gpus-per-cell must be zero or positive, got {self.gpus_per_cell}")
        if self.max_retries < 0:
            raise UsageError(f"--max-retries must be zero or positive, got {self.max_retries}")
        if self.local_cpus is not None and self.local_cpus <= 0:
            raise UsageError(f"the local Ray instance needs a positive number of CPUs, got {self.local_cpus}")


class RayExecutor:
    """Each cell a Ray task; records come back to the driver in the order the tasks finish."""

    name = "ray"

    def __init__(self, config: RayExecutorConfig | None = None) -> None:
        self.config = config or RayExecutorConfig()
        self.ray = import_ray()  # fail before any work when Ray is missing

    def map(self, cells: Sequence[Cell], ws: Workspace) -> Iterator[dict[str, Any]]:
        if not cells:
            return
        ray = self.ray
        cfg = self.config
        started = False
        if not ray.is_initialized():
            if cfg.address is None:
                # "local": a new instance even when RAY_ADDRESS or a `ray start` cluster exists (--address auto joins those)
                ray.init(address="local", num_cpus=cfg.local_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING")
            else:
                try:
                    ray.init(address=cfg.address, log_to_driver=False, logging_level="WARNING")
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise UsageError(f"could not join the Ray cluster at --address {cfg.address}: "
                                     f"{_first_line(exc)} (is `ray start` running there, with the same Ray "
                                     "version and authentication?)") from None
            started = True
        try:
            self._check_feasible()
            split_refs, weight_refs = self._share_inputs(cells, ws)
            settings = _Settings(ws.plugins.recipe, ws.batch_size, ws.latency, cfg.cpus_per_cell, cfg.gpus_per_cell,
                                 ws.eval_batch_size, ws.integer_sim)
            task = ray.remote(_run_cell_task).options(
                num_cpus=cfg.cpus_per_cell, num_gpus=cfg.gpus_per_cell, max_retries=cfg.max_retries,
                retry_exceptions=True, name="mqbench-cell")
            pending: dict[Any, Cell] = {}
            for cell in cells:
                keys = _split_keys(ws, cell)
                inputs = ([(k, split_refs[k]) for k in keys if k in split_refs],
                          [((cell.model, cell.weights), weight_refs[(cell.model, cell.weights)])]
                          if (cell.model, cell.weights) in weight_refs else [])
                pending[task.remote(cell, settings, inputs)] = cell
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        record: dict[str, Any] = ray.get(ref)
                    except Exception as exc:  # the task failed max_retries + 1 times: store the cell as failed
                        record = failed_record(cell, ws.plugins, _cause(exc), attempts=cfg.max_retries + 1)
                        record["executor"] = {"name": self.name}
                    yield record
        finally:
            if started:
                ray.shutdown()

    def _check_feasible(self) -> None:
        """A cell asking for more CPUs or GPUs than any node has would wait forever: a UsageError instead."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        for resource, wanted, option in (("CPU", self.config.cpus_per_cell, "--cpus-per-cell"),
                                         ("GPU", self.config.gpus_per_cell, "--gpus-per-cell")):
            largest = max((float(n.get(resource, 0)) for n in nodes), default=0.0)
            if wanted > largest:
                raise UsageError(f"{option} {wanted:g}: no node of the Ray cluster has that many {resource}s (the "
                                 f"largest has {largest:g}); lower {option} or add a node that has them")

    def _share_inputs(self, cells: Sequence[Cell], ws: Workspace) -> tuple[dict[SplitKey, Any], dict[WeightsKey, Any]]:
        """Decode each split and resolve each set of weights once, here, and put each in the object store once."""
        split_refs: dict[SplitKey, Any] = {}
        weight_refs: dict[WeightsKey, Any] = {}
        for cell in cells:
            wkey = (cell.model, cell.weights)
            if wkey not in weight_refs:
                try:
                    weight_refs[wkey] = self.ray.put(ws.weights(*wkey))
                except Exception:  # the worker meets the same error and stores the cell as failed
                    pass
            for key in _split_keys(ws, cell):
                if key in split_refs:
                    continue
                try:
                    split_refs[key] = self.ray.put(ws.split(*key))
                except Exception:  # as above
                    pass
        return split_refs, weight_refs


def _split_keys(ws: Workspace, cell: Cell) -> list[SplitKey]:
    try:
        return ws.split_keys(cell)
    except Exception:  # an unknown model: the cell fails in its worker, with the same message as in-process
        return []


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _cause(exc: BaseException) -> BaseException:
    """The exception a task raised, unwrapped from Ray's RayTaskError where there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@dataclass(frozen=True)
class _Settings:
    """What a worker needs to build the driver's Workspace."""

    plugins_recipe: tuple[tuple[str, ...], bool, frozenset[str]]
    batch_size: int
    latency: LatencySettings | None
    cpus_per_cell: float
    gpus_per_cell: float
    eval_batch_size: int
    integer_sim: bool


# Per worker process: one Workspace per settings, kept across tasks (decoded splits, weights, plugins).
_WORKSPACES: dict[_Settings, Workspace] = {}


def _run_cell_task(cell: Cell, settings: _Settings,
                   inputs: tuple[list[tuple[SplitKey, Any]], list[tuple[WeightsKey, Any]]]) -> dict[str, Any]:
    """A Ray task: run one cell in this worker and return its record (never written here)."""
    import ray

    allocator.tune()
    ws = _WORKSPACES.get(settings)
    if ws is None:
        builtins, entry_points, disable = settings.plugins_recipe
        plugins = Plugins(builtins, entry_points, set(disable))
        ws = _WORKSPACES[settings] = Workspace(plugins, SILENT, settings.batch_size, settings.latency,
                                                     settings.eval_batch_size, settings.integer_sim)
    split_inputs, weight_inputs = inputs
    ws.adopt({key: ray.get(ref) for key, ref in split_inputs if not ws.has(key)},
             {key: ray.get(ref) for key, ref in weight_inputs if not ws.has(key)})
    torch.set_num_threads(max(1, int(settings.cpus_per_cell)))
    record = run_cell(cell, ws)
    context = ray.get_runtime_context()
    record["executor"] = {"name": RayExecutor.name, "host": socket.gethostname(), "node_id": context.get_node_id(),
                          "cpus_per_cell": settings.cpus_per_cell, "gpus_per_cell": settings.gpus_per_cell}
    return record


__all__ = ["RAY_EXTRA_HINT", "RayExecutor", "RayExecutorConfig", "import_ray"]
