"""Deployment backends: the plugin-facing types.

A backend owns *where* quantizers go: ``prepare`` returns a QuantSim whose quantizers mirror the
runtime's quantization points, and ``convert`` turns the calibrated QuantSim into the runtime's
executable, honouring its exact qparams. ``deploy_float`` runs the unquantized model (the ``fp32``
row). The harness only calls a deployed model as ``deployed(inputs) -> logits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    def check_pipeline(self, pipeline: str) -> str | None:
        """For a backend that calibrates itself: None if it can run ``pipeline`` (a pipeline name such as
        ``minmax``, naming the calibration it maps to), otherwise why not (the cell is recorded as skipped)."""
        return None

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
