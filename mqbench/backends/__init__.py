"""Runtimes (the ``--backend`` of a cell) and the artifacts they run: the plugin-facing types.

A **runtime** is who executes. It declares the artifact formats it runs (:attr:`Runtime.formats`) and the
schemes it can run (:meth:`Runtime.check_scheme`), says *where* it quantizes (:meth:`Runtime.placement`: the
QuantSim built for it puts its fake-quantizers at the runtime's quantization points), turns an artifact
into something callable (:meth:`Runtime.load`, honouring the artifact's exact qparams), and reports its
version, engine and packages for provenance (:meth:`Runtime.info`, :attr:`Runtime.packages`).

An **artifact** is what a quantizer hands a runtime, with its format named: the float model (``float``), a
calibrated QuantSim (``quantsim``, from an mqbench pipeline), a QDQ ONNX model (``onnx-qdq``, from a toolkit
such as ONNX Runtime's quantizer), a torch.ao quantized module (``torch.ao-quantized[x86]``), ... A runtime
that does not list a format is never handed one: the cell is stored as skipped with the reason.

The harness only calls a loaded artifact as ``deployed(inputs) -> logits``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mqbench.quant.qsim import Placement
from mqbench.schemes import QuantScheme

Deployed = Callable[[torch.Tensor], torch.Tensor]

FLOAT = "float"  # payload: the float nn.Module, eval mode
QUANTSIM = "quantsim"  # payload: a calibrated mqbench.quant.qsim.QuantSim
ONNX_QDQ = "onnx-qdq"  # payload: an onnx.ModelProto with QuantizeLinear/DequantizeLinear pairs


@dataclass(frozen=True)
class Artifact:
    """What a quantizer hands on to a runtime: ``payload`` in ``format``, and facts about how it was made."""

    format: str
    payload: Any
    info: Mapping[str, Any] = field(default_factory=dict)
    # A toolkit's own simulation of what it made (inputs -> logits), where it has one: the cell's ``sim``, and the
    # deployed model's agreement is measured against it (None: no simulated accuracy, no agreement).
    simulation: Deployed | None = None


class Runtime:
    """Base class of a runtime plugin (registered with ``mqbench_register_runtimes``)."""

    name: str = ""
    description: str = ""
    version: str = "1"
    # The artifact formats :meth:`load` runs. Every runtime runs the float model (the fp32 row).
    formats: frozenset[str] = frozenset({FLOAT, QUANTSIM})
    # False: the runtime *is* the fake-quant simulation (``simulated``); the QuantSim's evaluation is the cell's
    # figure and nothing is deployed, timed or compared with it.
    deploys: ClassVar[bool] = True
    # Distributions whose installed versions are part of every record's environment (provenance), so results of
    # two versions of this runtime never share a table.
    packages: ClassVar[tuple[str, ...]] = ()

    def unavailable(self) -> str | None:
        """Why this runtime cannot run on this machine (its package is not installed, ...), or None.
        ``mqbench plugins`` and ``mqbench list backends`` show it; the harness skips the runtime's cells with it."""
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        """None if this runtime can run ``scheme``, otherwise the reason it cannot (recorded as skipped)."""
        return None

    def check_format(self, artifact_format: str) -> str | None:
        """None if :meth:`load` runs artifacts of ``artifact_format``, otherwise why not (recorded as skipped)."""
        if artifact_format in self.formats:
            return None
        return f"it runs {', '.join(sorted(self.formats))} artifacts, not {artifact_format}"

    def placement(self, scheme: QuantScheme) -> Placement:
        """Where this runtime quantizes, for the QuantSim an mqbench pipeline calibrates for it."""
        return Placement()

    def load(self, artifact: Artifact) -> Deployed:
        """``artifact`` (a format in :attr:`formats`) as a callable ``inputs -> logits`` on this runtime."""
        raise NotImplementedError

    def integer_simulation(self, qsim: Any) -> Deployed | None:
        """The calibrated ``qsim`` computed in this runtime's own integer arithmetic, code for code (for ONNX
        Runtime :class:`~mqbench.backends.ort.integer_sim.IntegerSimulation`), or None where no such model of the
        runtime exists; the cell then reports the fake-quant simulation's agreement only."""
        return None

    # -- conveniences over the interface above (for tests and scripts; the harness calls the interface) --------
    def quantsim(self, model: Any, scheme: QuantScheme) -> Any:
        """A QuantSim of the float ``model`` with quantizers where this runtime quantizes (uncalibrated)."""
        from mqbench.quant.qsim import QuantSim

        return QuantSim.from_float(model, scheme, self.placement(scheme))

    def deploy(self, qsim: Any) -> Deployed:
        """The calibrated ``qsim`` loaded on this runtime."""
        return self.load(Artifact(QUANTSIM, qsim))

    def deploy_float(self, model: Any) -> Deployed:
        """The float ``model`` loaded on this runtime."""
        return self.load(Artifact(FLOAT, model))

    def info(self) -> dict[str, Any]:
        """Facts recorded with every cell (runtime version, engine, ISA used, ...)."""
        return {}

    def __repr__(self) -> str:
        return f"<runtime {self.name}>"


def w8a8_problem(scheme: QuantScheme, kernels: str) -> str | None:
    """Why ``kernels`` (``"ONNX Runtime's integer kernels"``) cannot run ``scheme``, if it is not plain w8a8."""
    if scheme.weight_bits != 8 or scheme.act_bits != 8 or scheme.first_last_bits is not None:
        return f"{kernels} take 8-bit weights and 8-bit activations (a w8a8 scheme)"
    return None


Backend = Runtime  # the first wave's name (a cell's ``backend`` is its runtime)

__all__ = ["FLOAT", "ONNX_QDQ", "QUANTSIM", "Artifact", "Backend", "Deployed", "Runtime", "w8a8_problem"]
