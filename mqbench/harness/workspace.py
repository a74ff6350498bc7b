"""The workspace: what the cells of a run in one process share (decoded splits, float weights, trained
models), and the evaluation loop every flow uses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mqbench.data import Split
from mqbench.harness.cell import Cell, resolve
from mqbench.metrics import Evaluation
from mqbench.metrics.latency import LatencySettings
from mqbench.models.weights import ResolvedWeights, load_into, resolve_weights
from mqbench.plugins import Plugins
from mqbench.progress import SILENT, Reporter

# The evaluation batch. Logits do not depend on it (every evaluated model computes each image on its own, bit for
# bit: tests/unit/test_eval_batch.py); small batches keep a MobileNet's activations in cache and out of the kernel's
# page-fault path (scripts/bench_cells.py measures the difference).
EVAL_BATCH_SIZE = 32


class Workspace:
    """Per-process caches shared by the cells of a run: decoded splits and float weights. ``batch_size``: the batch
    of the passes methods make over the calibration split (observers see batches of it); ``eval_batch_size``: the
    batch of every evaluation; ``integer_sim``: whether runtimes that have an integer simulation run it."""

    def __init__(self, plugins: Plugins, reporter: Reporter = SILENT, batch_size: int = 256,
                 latency: LatencySettings | None = None, eval_batch_size: int = EVAL_BATCH_SIZE,
                 integer_sim: bool = True) -> None:
        self.plugins = plugins
        self.reporter = reporter
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.integer_sim = integer_sim  # False: the runtimes' integer simulations are not run (--no-integer-sim)
        self.latency = latency  # None: no latency measurement (mqbench run measures it unless --no-latency)
        self._splits: dict[tuple[str, str, int | None, str], Split] = {}
        self._weights: dict[tuple[str, str], Any] = {}
        # Models made by training transform steps, so the cells of one sweep share one training run.
        self.trained: dict[str, tuple[nn.Module, dict[str, Any], dict[str, Any]]] = {}
        # The float model's latency figures per runtime, model and settings: measured once, shared by the cells.
        self.float_latency: dict[str, dict[str, Any]] = {}
        # Calibrated QuantSims with their simulation, per model, pipeline, scheme and placement (flows._simulated).
        self.simulated: dict[str, Any] = {}
        # QuantSims after the pipeline's calibrate steps, with their notes and timings (flows._calibrated).
        self.calibrated: dict[str, tuple[Any, dict[str, Any], dict[str, float]]] = {}

    def split(self, dataset: str, split: str, limit: int | None = None, preprocess: str = "native") -> Split:
        """A decoded split (decoded once per process; image datasets also cache it on disk)."""
        key = (dataset, split, limit, preprocess)
        if key not in self._splits:
            self._splits[key] = self.plugins.datasets.get(dataset).load_split(split, limit, preprocess, self.reporter)
        return self._splits[key]

    def weights(self, model: str, weights: str) -> ResolvedWeights:
        """The float weights ``weights`` of ``model`` (resolved, and trained first if needed, once per process)."""
        key = (model, weights)
        if key not in self._weights:
            spec = self.plugins.models.get(model)
            wspec = spec.get_weights(weights)
            self._weights[key] = resolve_weights(spec, wspec, self.plugins.datasets.get,
                                                 lambda d, s: self.split(d, s, None, wspec.preprocess), self.reporter)
        return self._weights[key]

    def split_keys(self, cell: Cell) -> list[tuple[str, str, int | None, str]]:
        """The keys (dataset, split, limit, preprocess) of the splits ``cell`` calibrates, evaluates (and trains) on."""
        return resolve(cell, self.plugins).split_keys

    def has(self, key: tuple[str, str, int | None, str] | tuple[str, str]) -> bool:
        """Whether this process already holds the split (dataset, split, limit, preprocess) or the weights
        (model, weights) ``key``."""
        return key in self._splits or key in self._weights

    def adopt(self, splits: dict[tuple[str, str, int | None, str], Split],
              weights: dict[tuple[str, str], ResolvedWeights]) -> None:
        """Take splits and weights decoded elsewhere (an executor's driver) instead of loading them again."""
        for key, split in splits.items():
            self._splits.setdefault(key, split)
        for wkey, resolved in weights.items():
            self._weights.setdefault(wkey, resolved)

    def float_model(self, model: str, weights: str) -> tuple[nn.Module, dict[str, Any]]:
        """A fresh float model (eval mode) with ``weights`` loaded, and facts about the weights."""
        spec = self.plugins.models.get(model)
        wspec = spec.get_weights(weights)
        resolved = self.weights(model, weights)
        net = spec.build(self.plugins.datasets.get(wspec.dataset).num_classes, **dict(wspec.build_kwargs))
        load_into(net, copy.deepcopy(resolved.state_dict), f"weights {model}:{weights} ({resolved.source})")
        return net.eval(), {"name": weights, "sha256": resolved.sha256, "source": resolved.source,
                            "float_test_top1_at_training": resolved.meta.get("test_top1")}


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int,
             reporter: Reporter = SILENT, name: str = "float") -> Evaluation:
    """The logits of ``model`` on ``split``; ``name`` (``sim``, ``deployed``, ``integer sim``, ``float``) labels the
    progress bar and the error when the logits are not finite."""
    logits = []
    with torch.inference_mode():
        for inputs, _ in reporter.track(split.batches(batch_size), f"evaluating ({name})",
                                        total=-(-len(split) // batch_size)):
            logits.append(model(inputs).float())
    return Evaluation(torch.cat(logits), split.labels, name)


__all__ = ["EVAL_BATCH_SIZE", "Workspace", "evaluate"]
