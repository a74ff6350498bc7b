"""Deployment backends: the plugin-facing types.

A backend owns *where* quantizers go: ``prepare`` returns a QuantSim whose quantizers mirror the
runtime's quantization points, and ``convert`` turns the calibrated QuantSim into the runtime's
executable, honouring its exact qparams. ``deploy_float`` runs the unquantized model (the ``fp32``
row). The harness only calls a deployed model as ``deployed(inputs) -> logits``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench.data import Split
from mqbench.progress import Reporter
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import QuantScheme

Deployed = Callable[[torch.Tensor], torch.Tensor]


class Backend:
    """Base class of a backend plugin."""

    name: str = ""
    description: str = ""
    version: str = "1"
    simulation_only: bool = False  # True: ``convert`` returns the QuantSim itself (nothing else to measure)
    # True for a peer row: the runtime's own quantizer chooses every qparam (:meth:`quantize`); no QuantSim.
    calibrates_itself: bool = False

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine (its runtime is not installed, ...), or None.
        ``mqbench plugins`` and ``mqbench list backends`` show it; the runner skips the backend's cells with it."""
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        """None if this backend can run ``scheme``, otherwise the reason it cannot (recorded as skipped)."""
        return None

    def prepare(self, model: nn.Module, scheme: QuantScheme) -> QuantSim:
        raise NotImplementedError

    def convert(self, qsim: QuantSim) -> Deployed:
        raise NotImplementedError

    def deploy_float(self, model: nn.Module) -> Deployed:
        raise NotImplementedError

    def integer_simulation(self, qsim: QuantSim) -> Deployed | None:
        """The calibrated ``qsim`` computed in this runtime's own integer arithmetic, code for code (for ONNX
        Runtime :class:`~mqbench.quant.integer_sim.IntegerSimulation`), or None where no such model of the
        runtime exists; the runner then reports the fake-quant simulation's agreement only."""
        return None

    # For a backend that calibrates itself: the pipeline names it runs, each with what it maps to in the
    # runtime's own tool (e.g. {"minmax": "CalibrationMethod.MinMax"}).
    calibrations: ClassVar[Mapping[str, str]] = {}

    def check_pipeline(self, pipeline: str) -> str | None:
        """For a backend that calibrates itself: None if ``pipeline`` is one of its ``calibrations``,
        otherwise why not (the cell is recorded as skipped)."""
        if pipeline in self.calibrations:
            return None
        offered = ", ".join(f"{name} ({what})" for name, what in self.calibrations.items())
        return f"{self.name} runs its own tool's calibrations {offered}, not the pipeline {pipeline!r}"

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, pipeline: str,
                 reporter: Reporter) -> Deployed:
        """For a backend that calibrates itself: quantize the float ``model`` with the runtime's own tool on
        the calibration images ``calib`` and return the deployed model (its time is the calibration time)."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Facts recorded with every cell (runtime version, engine, ISA used, ...)."""
        return {}

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


__all__ = ["Backend", "Deployed"]
