"""Measurements: what is measured on a cell after its flow, each a registered :class:`Measurement`.

A measurement says when it applies to a finished flow (:attr:`Measurement.applies`) and writes its figures
into the record (:attr:`Measurement.measure`); the harness runs every registered one, in order. The built-in
ones: the layer-wise error analysis (``--layerwise N``), the runtime's integer simulation (where the runtime
has one), the agreement of the simulations with the deployed model, what the runtime ran (its operators,
float fallbacks included), latency (unless ``--no-latency``), and the metric plugins on every evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mqbench.errors import IntegerSimulationUnavailable
from mqbench.harness.flows import CellRun
from mqbench.harness.quantizer import ToolkitRecipe
from mqbench.metrics.accuracy import agreement
from mqbench.metrics.latency import measure_cell, measure_float
from mqbench.metrics.layerwise import analyze
from mqbench.store import ATTACHMENTS_KEY


@dataclass(frozen=True)
class Measurement:
    name: str
    applies: Callable[[CellRun], bool]
    measure: Callable[[CellRun], None]


MEASUREMENTS: list[Measurement] = []


def register_measurement(measurement: Measurement) -> Measurement:
    """Add ``measurement`` after the registered ones (a name registered twice is an error)."""
    if any(m.name == measurement.name for m in MEASUREMENTS):
        raise ValueError(f"measurement {measurement.name!r} is registered twice")
    MEASUREMENTS.append(measurement)
    return measurement


def measure_all(run: CellRun) -> None:
    for measurement in MEASUREMENTS:
        if measurement.applies(run):
            measurement.measure(run)


def _layerwise(run: CellRun) -> None:
    if run.qsim is None:
        quantizer = run.cell.quantizer
        run.record["layerwise_unavailable"] = (
            f"toolkit {quantizer.toolkit.name} quantizes with its own tool: no QuantSim to analyse"
            if isinstance(quantizer, ToolkitRecipe) else "an fp32 cell quantizes nothing")
        return
    n = run.cell.cell.layerwise_images
    assert n is not None
    with run.timer("layerwise"):
        images = next(run.evalset.head(n).batches(n))[0]
        detail = analyze(run.qsim, images, seed=run.cell.cell.seed, reporter=run.ws.reporter)
    run.record["layerwise"] = {"images": detail["images"], "split": "test", **detail["summary"]}
    run.record[ATTACHMENTS_KEY] = {"layerwise": detail}


def _integer_sim(run: CellRun) -> None:
    assert run.qsim is not None
    if not run.ws.integer_sim:
        if run.cell.runtime.integer_simulation(run.qsim) is not None:
            run.record["integer_sim_unavailable"] = "not run (--no-integer-sim)"
        return
    exact = run.cell.runtime.integer_simulation(run.qsim)
    if exact is None:
        return
    with run.timer("evaluate_integer_sim"):
        try:
            run.evaluate("integer_sim", exact, "integer sim")
        except IntegerSimulationUnavailable as exc:  # the deployment is still measured; say why no integer simulation
            run.record["integer_sim_unavailable"] = str(exc)


def _agreement(run: CellRun) -> None:
    deployed = run.evaluations["deployed"].logits
    if "sim" in run.evaluations:
        run.record["agreement"] = agreement(run.evaluations["sim"].logits, deployed)
    if "integer_sim" in run.evaluations:
        run.record["agreement_integer_sim"] = agreement(run.evaluations["integer_sim"].logits, deployed)


def _deployment(run: CellRun) -> None:
    run.record["deployment"] = run.deployed.deployment_info()  # type: ignore[union-attr]


def _latency(run: CellRun) -> None:
    from mqbench.backends import FLOAT, Artifact

    settings, runtime = run.ws.latency, run.cell.runtime
    assert settings is not None and run.deployed is not None
    with run.timer("latency"):
        images = next(iter(run.evalset.batches(max(settings.batch_sizes))))[0]
        float_figures, reused = None, False
        if not run.cell.scheme.is_float:  # the float reference, once per process for the cells that share it
            key = _float_latency_key(run)
            reused = key in run.ws.float_latency
            if not reused:
                float_model = runtime.load(Artifact(FLOAT, run.model))
                run.ws.float_latency[key] = measure_float(float_model, images, settings, run.ws.reporter)
            float_figures = run.ws.float_latency[key]
        run.record["latency"] = measure_cell(run.deployed, None, images, settings, run.ws.reporter, float_figures)
        if reused:
            run.record["latency"]["float_reused_in_process"] = True


def _float_latency_key(run: CellRun) -> str:
    """What the float model's latency depends on: the runtime (and what it says of itself), the model, its weights
    and transform steps, the timing settings and the images."""
    c, pipeline = run.cell.cell, run.cell.pipeline
    transforms = [s.text for s in pipeline.stage("transform")] if pipeline else []
    return json.dumps([run.cell.runtime.name, run.cell.runtime.info(), c.model, c.weights, transforms, c.seed,
                       c.train_budget_s, run.cell.split_keys, asdict(run.ws.latency) if run.ws.latency else None],
                      sort_keys=True, default=str)


def _metrics(run: CellRun) -> None:
    if run.ctx.notes:
        run.record["method_notes"] = run.ctx.notes
    if run.ctx.training:  # what the steps that train (transform or refine) cost
        run.record["training"] = run.ctx.training
    with run.timer("metrics"):
        run.record["metrics"] = {which: {metric.name: metric.compute(ev) for metric in run.ws.plugins.metrics}
                                 for which, ev in run.evaluations.items()}


for _m in (
    Measurement("layerwise", lambda run: bool(run.cell.cell.layerwise_images), _layerwise),
    Measurement("integer_sim", lambda run: run.qsim is not None and run.cell.runtime.deploys, _integer_sim),
    Measurement("agreement", lambda run: "deployed" in run.evaluations, _agreement),
    Measurement("latency", lambda run: run.ws.latency is not None and run.deployed is not None
                and run.cell.runtime.deploys, _latency),
    # after latency: a runtime that compiles per input shape (torchao-x86) reports latency's compiles too
    Measurement("deployment", lambda run: hasattr(run.deployed, "deployment_info"), _deployment),
    Measurement("metrics", lambda run: True, _metrics),
):
    register_measurement(_m)


__all__ = ["MEASUREMENTS", "Measurement", "measure_all", "register_measurement"]
