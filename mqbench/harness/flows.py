"""The flows: one short function per kind of cell, each leaving a :class:`CellRun` for the measurements.

* :func:`float_flow` (the ``fp32`` pipeline, after any transform steps): the float model loaded on the runtime;
* :func:`toolkit_flow` (a toolkit recipe): the toolkit quantizes the float model with its own API, the runtime
  loads its artifact;
* :func:`quantsim_flow` (an mqbench pipeline): a QuantSim placed where the runtime quantizes, calibrated and
  refined by the pipeline's methods, evaluated in simulation and, where the runtime deploys, loaded on it.

Which flow a cell takes is decided in one place (:func:`flow_of`); what a runtime or toolkit is never shows
outside these functions except through its declared interface.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed
from mqbench.data import Split
from mqbench.harness.cell import ResolvedCell
from mqbench.harness.quantizer import Pipeline, Step, ToolkitRecipe
from mqbench.harness.workspace import Workspace, evaluate
from mqbench.methods import StepContext
from mqbench.metrics import Evaluation
from mqbench.quant.inference import for_inference
from mqbench.quant.qsim import Placement, QuantSim


class Timer:
    """Wall-clock seconds per stage, summed over the stage's runs; ``timings`` goes into the record."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - start, 4)


@dataclass
class CellRun:
    """One cell in flight: its inputs, and what the flow made of them (read by the measurements)."""

    cell: ResolvedCell
    ws: Workspace
    record: dict[str, Any]
    timer: Timer
    ctx: StepContext
    calib: Split
    evalset: Split
    model: nn.Module  # the float model, after the pipeline's transform steps
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    qsim: QuantSim | None = None
    deployed: Deployed | None = None

    def evaluate(self, which: str, model: Callable[[torch.Tensor], torch.Tensor], label: str) -> None:
        """Evaluate ``model`` on the cell's evaluation split as ``which`` (``sim``, ``deployed``, ``integer_sim``)."""
        self.evaluations[which] = evaluate(model, self.evalset, self.ws.eval_batch_size, self.ws.reporter, label)


Flow = Callable[[CellRun], None]


def flow_of(cell: ResolvedCell) -> Flow:
    """The flow that runs ``cell``."""
    if isinstance(cell.quantizer, ToolkitRecipe):
        return toolkit_flow
    return quantsim_flow if cell.quantizer.quantizes else float_flow


def float_flow(run: CellRun) -> None:
    """The float reference: the (transformed) float model on the runtime; ``sim`` where the runtime deploys
    nothing (``simulated``), ``deployed`` otherwise."""
    with run.timer("deploy"):
        run.deployed = run.cell.runtime.load(Artifact(FLOAT, run.model))
    which = "deployed" if run.cell.runtime.deploys else "sim"
    with run.timer("evaluate"):
        run.evaluate(which, run.deployed, f"float {which}")


def toolkit_flow(run: CellRun) -> None:
    """A toolkit's own quantizer on the float model (its whole cost is ``calibrate:<toolkit>``), deployed; its own
    simulation of the result evaluated as ``sim`` where it has one."""
    recipe = run.cell.quantizer
    assert isinstance(recipe, ToolkitRecipe)
    with run.timer(f"calibrate:{recipe.toolkit.name}"):
        artifact = recipe.toolkit.quantize(run.model, run.cell.scheme, run.calib, recipe.config, run.ws.reporter)
    run.record["artifact"] = {"format": artifact.format, **dict(artifact.info)}
    if artifact.simulation is not None:  # the toolkit's own simulation: the row's sim accuracy and agreement
        with run.timer("evaluate_sim"):
            run.evaluate("sim", artifact.simulation, f"{recipe.toolkit.name} simulation")
    with run.timer("convert"):
        run.deployed = run.cell.runtime.load(artifact)
    with run.timer("evaluate_deployed"):
        run.evaluate("deployed", run.deployed, "deployed")


def quantsim_flow(run: CellRun) -> None:
    """An mqbench pipeline: QuantSim placed for the runtime, calibrated, refined, simulated, then deployed. Runtimes
    that place quantizers alike share one QuantSim and its simulation within a process (:func:`_simulated`)."""
    runtime = run.cell.runtime
    run.qsim = _simulated(run)
    qsim = run.qsim
    run.record["sim_evaluation"] = {"memory_format": "channels_last", "batch_size": run.ws.eval_batch_size}
    run.record["qparams_summary"] = {"weight_quantizers": len(qsim.weight_quantizers),
                                     "activation_quantizers": len(qsim.act_quantizers)}
    if runtime.deploys:
        with run.timer("convert"):
            run.deployed = runtime.load(Artifact(QUANTSIM, qsim))
        with run.timer("evaluate_deployed"):
            run.evaluate("deployed", run.deployed, "deployed")


def _simulated(run: CellRun) -> QuantSim:
    """The cell's calibrated, refined QuantSim with its ``sim`` evaluation. The cells of a run that differ only in a
    runtime placing quantizers the same way (ort-qdq and ort-qoperator; the torch engines) get the first one's, a
    copy: same model, steps, scheme, placement, seed and data give the same QuantSim, so it is computed once; the
    record says ``quantsim_reused_in_process`` and what the computation cost where it was made."""
    pipeline, c = run.cell.quantizer, run.cell.cell
    assert isinstance(pipeline, Pipeline)
    placement = run.cell.runtime.placement(run.cell.scheme)
    key = json.dumps([c.model, c.weights, [s.text for s in pipeline.steps], run.cell.scheme.name, asdict(placement), c.seed,
                      run.cell.split_keys, c.train_budget_s, run.ws.batch_size], default=str)
    if key in run.ws.simulated:
        made = run.ws.simulated[key]
        run.ctx.notes.update(copy.deepcopy(made.notes))
        run.ctx.training.update({name: {**cost, "reused_in_process": True} for name, cost in made.training.items()})
        run.evaluations["sim"] = made.evaluation
        run.record["quantsim_reused_in_process"] = {"from_backend": made.runtime, "timings_s": dict(made.timings)}
        if made.calibration_reused is not None:
            run.record["calibration_reused_in_process"] = copy.deepcopy(made.calibration_reused)
        return copy.deepcopy(made.qsim)
    before = set(run.timer.timings)
    qsim = _calibrated(run, pipeline, placement)
    for step in pipeline.stage("refine"):
        with run.timer(f"refine:{step.name}"):
            step.method.refine(qsim, run.model, run.calib, step.config, run.ctx)
    with run.timer("evaluate_sim"):
        run.evaluate("sim", channels_last(for_inference(qsim.eval())), "sim")
    timings = {k: v for k, v in run.timer.timings.items() if k not in before}
    run.ws.simulated[key] = Simulated(copy.deepcopy(qsim), run.evaluations["sim"], run.cell.runtime.name, timings,
                                      copy.deepcopy(run.ctx.notes), copy.deepcopy(run.ctx.training),
                                      copy.deepcopy(run.record.get("calibration_reused_in_process")))
    return qsim


def _calibrated(run: CellRun, pipeline: Pipeline, placement: Placement) -> QuantSim:
    """The QuantSim placed and calibrated by the pipeline's transform and calibrate steps. Cells of a run that share
    those steps (``mse`` and ``mse+adaround``; ``minmax`` and ``minmax+bias_correction``) with the same model, scheme,
    placement, seed and data share one calibration, copied: the record says ``calibration_reused_in_process`` and
    what the calibration cost where it was made."""
    c = run.cell.cell
    calibrate = pipeline.stage("calibrate")
    key = json.dumps([c.model, c.weights, [s.text for s in pipeline.stage("transform")], [s.text for s in calibrate],
                      run.cell.scheme.name, asdict(placement), c.seed, run.cell.split_keys, c.train_budget_s,
                      run.ws.batch_size], default=str)
    if calibrate and key in run.ws.calibrated:
        qsim, notes, timings = run.ws.calibrated[key]
        run.ctx.notes.update(copy.deepcopy(notes))
        run.record["calibration_reused_in_process"] = {"steps": [s.text for s in calibrate], "timings_s": dict(timings)}
        return copy.deepcopy(qsim)
    before, notes_before = set(run.timer.timings), set(run.ctx.notes)
    with run.timer("prepare"):
        qsim = QuantSim.from_float(run.model, run.cell.scheme, placement)
    for step in calibrate:
        with run.timer(f"calibrate:{step.name}"):
            step.method.calibrate(qsim, run.calib, step.config, run.ctx)
    if calibrate:
        notes = {k: v for k, v in run.ctx.notes.items() if k not in notes_before}
        run.ws.calibrated[key] = (copy.deepcopy(qsim), copy.deepcopy(notes),
                                  {k: v for k, v in run.timer.timings.items() if k not in before})
    return qsim


def channels_last(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` evaluated in channels-last memory format: its 4-d weights and buffers converted in place (pass a
    copy, as :func:`~mqbench.quant.inference.for_inference` makes), called on channels-last inputs. oneDNN's
    channels-last kernels run a MobileNet's fake-quant simulation about a third faster; not bit for bit (another
    summation order moves a few rounding ties of the activation quantizers): per-image top-1 outcomes differ on 7 of
    1300 ImageNet images for MobileNetV2 W8A8 (``tests/realdata``, tolerance 1%)."""
    converted = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def call(x: torch.Tensor) -> torch.Tensor:
        return converted(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)

    return call


@dataclass(frozen=True)
class Simulated:
    """A QuantSim made by a cell, kept in the Workspace for the cells that share it (:func:`_simulated`)."""

    qsim: QuantSim
    evaluation: Evaluation
    runtime: str
    timings: dict[str, float]
    notes: dict[str, Any]
    training: dict[str, Any]
    calibration_reused: dict[str, Any] | None = None  # the record's calibration_reused_in_process, if any


def transformed(model: nn.Module, cell: ResolvedCell, ctx: StepContext, ws: Workspace, timer: Timer) -> nn.Module:
    """``model`` after the pipeline's transform steps. When one of them trains, the result of the quantizing
    transform steps is kept in the Workspace, so the other cells of the sweep with the same model, transforms,
    seed, data and budget reuse it (``qf_sepconv+fp32`` and ``qf_sepconv+minmax`` share one fine-tuning; the
    reusing record says ``reused_in_process`` and carries the cost of the training that made it). ``fp32``, which
    marks the float reference and changes nothing, is applied after them."""
    steps = cell.pipeline.stage("transform") if cell.pipeline else []
    shared = [s for s in steps if s.method.quantizes]
    trains = any(s.method.needs_training for s in shared)
    c = cell.cell
    key = json.dumps([c.model, c.weights, [s.text for s in shared], c.seed, cell.split_keys, c.train_budget_s])
    if trains and key in ws.trained:
        trained, notes, training = ws.trained[key]
        ctx.notes.update(copy.deepcopy(notes))
        ctx.training.update({name: {**cost, "reused_in_process": True} for name, cost in training.items()})
        model = copy.deepcopy(trained)
    else:
        model = _apply(model, shared, ctx, timer)
        if trains:
            ws.trained[key] = (copy.deepcopy(model), copy.deepcopy(ctx.notes), copy.deepcopy(ctx.training))
    return _apply(model, [s for s in steps if not s.method.quantizes], ctx, timer)


def _apply(model: nn.Module, steps: list[Step], ctx: StepContext, timer: Timer) -> nn.Module:
    for step in steps:
        with timer(f"transform:{step.name}"):
            model = step.method.transform(model, step.config, ctx)
    return model


__all__ = ["CellRun", "Flow", "Simulated", "Timer", "float_flow", "flow_of", "quantsim_flow", "toolkit_flow", "transformed"]
