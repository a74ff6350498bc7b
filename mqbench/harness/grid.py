"""The grid: a suite (with any dimension replaced from the command line) expanded into cells.

Every name is checked before any work: an unknown model, method, toolkit, runtime or scheme is an
UnknownNameError or UsageError (CLI exit 2). A quantizer that does not quantize (``fp32``) runs once, on the
``fp32`` scheme, not per scheme.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

from mqbench.data import DatasetSpec
from mqbench.errors import UsageError
from mqbench.harness.cell import Cell
from mqbench.harness.quantizer import Quantizer, parse_quantizer
from mqbench.plugins import Plugins
from mqbench.schemes import FP32, QuantScheme, parse_scheme
from mqbench.suites import Suite


def expand(plugins: Plugins, suite: Suite, models: Sequence[str] = (), quantizers: Sequence[str] = (),
           runtimes: Sequence[str] = (), schemes: Sequence[str] = (), eval_limit: int | None = None,
           train_budget_s: float | None = None) -> list[Cell]:
    """The cells of ``suite``; a non-empty ``models``/``quantizers``/... replaces that dimension.
    ``train_budget_s`` is set on the cells whose pipeline trains (and only on those)."""
    if train_budget_s is not None and not train_budget_s > 0:
        raise UsageError(f"the training budget must be a positive number of seconds, got {train_budget_s}")
    if suite.parts:
        return _expand_composite(plugins, suite, models, quantizers, runtimes, schemes, eval_limit, train_budget_s)
    dataset = plugins.datasets.get(suite.dataset)
    dataset.check()
    entries = _model_entries(plugins, suite, dataset, models)
    parsed = {q.name: q for q in (parse_quantizer(text, plugins) for text in (quantizers or suite.pipelines))}
    _check_training(parsed.values(), dataset)
    names = [_runtime(plugins, r) for r in (runtimes or suite.backends)]
    scheme_objs = [parse_scheme(s) for s in (schemes or suite.schemes)]
    for quantizer in parsed.values():
        for scheme in scheme_objs:
            if quantizer.quantizes and not scheme.is_float:
                quantizer.check_scheme(scheme)
    limit = _limit(dataset, eval_limit if eval_limit is not None else suite.eval_limit)
    cells = [
        Cell(model, weights, dataset.name, name, runtime, scheme.name, seed, suite.calib_size, limit, suite.name,
             train_budget_s=train_budget_s if quantizer.trainers() else None)
        for (model, weights), (name, quantizer), runtime, seed in itertools.product(
            entries, parsed.items(), names, suite.seeds)
        for scheme in _schemes_of(quantizer, scheme_objs)]
    return list(dict.fromkeys(cells))


# The first wave's peer backends: now a toolkit's recipes, run on a runtime.
RENAMED = {"ort-default": "the toolkit recipe ort:minmax (or ort:entropy) on runtime ort-qdq: --toolkit ort:minmax "
                          "--backend ort-qdq",
           "torch-default": "the toolkit recipe torch.ao:default (or torch.ao:minmax) on runtime torch-x86: "
                            "--toolkit torch.ao:default --backend torch-x86"}


def _runtime(plugins: Plugins, name: str) -> str:
    if name in RENAMED and name not in plugins.runtimes:
        raise UsageError(f"{name!r} is now {RENAMED[name]}")
    return plugins.runtimes.get(name).name


def _schemes_of(quantizer: Quantizer, schemes: Sequence[QuantScheme]) -> list[QuantScheme]:
    """A quantizer runs on every quantizing scheme; the float reference once, on fp32."""
    return [s for s in schemes if not s.is_float] if quantizer.quantizes else [FP32]


def _model_entries(plugins: Plugins, suite: Suite, dataset: DatasetSpec, models: Sequence[str]) -> list[tuple[str, str]]:
    """(model, weights) of each ``name[:weights]``, checked to be weights for the suite's dataset."""
    entries = []
    for entry in models or suite.models:
        name, _, weights = entry.partition(":")
        spec = plugins.models.get(name)
        weights = weights or spec.default_weights
        wdata = spec.get_weights(weights).dataset
        if wdata != dataset.name:
            raise UsageError(f"model {name!r} weights {weights!r} are for dataset {wdata!r}, but suite "
                             f"{suite.name!r} evaluates on {dataset.name!r}")
        entries.append((name, weights))
    return entries


def _check_training(quantizers: Iterable[Quantizer], dataset: DatasetSpec) -> None:
    trainers = sorted({name for q in quantizers for name in q.trainers()})
    if trainers:
        try:
            dataset.check(("calib", "test", "train"))
        except UsageError as exc:
            raise UsageError(f"{', '.join(trainers)} trains on the train split of {dataset.name}, which cannot be "
                             f"loaded: {exc}") from None


def _limit(dataset: DatasetSpec, limit: int | None) -> int | None:
    """The evaluation limit; one that covers the whole split is None (the same cell, and hash, as no limit)."""
    size = dataset.split_size("test") if limit is not None else None
    if limit is not None and size is not None and limit >= size:
        return None
    return limit


def _expand_composite(plugins: Plugins, suite: Suite, models: Sequence[str], quantizers: Sequence[str],
                      runtimes: Sequence[str], schemes: Sequence[str], eval_limit: int | None,
                      train_budget_s: float | None) -> list[Cell]:
    """The union of the cells of ``suite``'s parts, under the composite's name. ``models`` narrows each part to its
    own models that match one of them (``name`` matches every weights of it, ``name:weights`` those); the other
    dimensions replace every part's."""

    def resolved(entry: str) -> tuple[str, str]:
        name, _, weights = entry.partition(":")
        return name, weights or plugins.models.get(name).default_weights

    wanted = [(entry.partition(":")[0], entry.partition(":")[2]) for entry in models]
    for name, _ in wanted:
        plugins.models.get(name)  # an unknown name fails here, before any work
    cells: list[Cell] = []
    for part in suite.parts:
        mine = [m for m in part.models if not wanted or any(
            resolved(m)[0] == name and (not weights or resolved(m)[1] == weights) for name, weights in wanted)]
        if not mine:
            continue
        cells += [dataclasses.replace(c, suite=suite.name) for c in
                  expand(plugins, part, mine, quantizers, runtimes, schemes, eval_limit, train_budget_s)]
    if not cells:
        every = sorted({m for part in suite.parts for m in part.models})
        raise UsageError(f"suite {suite.name!r} has no cells of {', '.join(models)}; its models: {', '.join(every)}")
    return list(dict.fromkeys(cells))


__all__ = ["expand"]
