"""Quantization methods: the plugin-facing types.

A method is one step of a pipeline and declares its stage:

* ``transform`` (before quantizers exist): ``transform(model, config, ctx) -> model``;
* ``calibrate`` (choose ranges / qparams): ``calibrate(qsim, calib, config, ctx)``;
* ``refine`` (after calibration: bias correction, AdaRound, ...): ``refine(qsim, float_model, calib, config, ctx)``.

Pipelines are ``+``-joined method names (``cle+minmax+bias_correction``); the runner orders the steps
by stage and rejects impossible pipelines. Each method's parameters are a frozen, versioned
:class:`MethodConfig` dataclass stored in every record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import nn

from mqbench.progress import SILENT, Reporter

if TYPE_CHECKING:
    from mqbench.data import Split
    from mqbench.quant.qsim import QuantSim

Stage = Literal["transform", "calibrate", "refine"]
STAGE_ORDER: dict[str, int] = {"transform": 0, "calibrate": 1, "refine": 2}


@dataclass(frozen=True)
class MethodConfig:
    """Base of method configs: frozen, JSON round-trippable, versioned."""

    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        data = dict(data)
        version = data.pop("version", cls.version)
        if version != cls.version:
            raise ValueError(f"{cls.__name__} version {version} is not {cls.version}")
        return cls(**data)


@dataclass(frozen=True)
class NoConfig(MethodConfig):
    """A method without parameters."""


@dataclass(frozen=True)
class StepContext:
    """What a method step may use besides its inputs."""

    seed: int = 0
    batch_size: int = 256
    reporter: Reporter = SILENT
    notes: dict[str, Any] = field(default_factory=dict)  # what a step did, stored in the record


class Method:
    """Base class of a method plugin. Set the class attributes and implement your stage's function."""

    name: str = ""
    stage: Stage = "calibrate"
    description: str = ""
    version: str = "1"
    quantizes: bool = True
    config_type: type[MethodConfig] = NoConfig

    def default_config(self) -> MethodConfig:
        return self.config_type()

    def transform(self, model: nn.Module, config: MethodConfig, ctx: StepContext) -> nn.Module:
        raise NotImplementedError(f"method {self.name} has no transform step")

    def calibrate(self, qsim: QuantSim, calib: Split, config: MethodConfig, ctx: StepContext) -> None:
        raise NotImplementedError(f"method {self.name} has no calibrate step")

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        raise NotImplementedError(f"method {self.name} has no refine step")

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.stage})>"


__all__ = ["STAGE_ORDER", "Method", "MethodConfig", "NoConfig", "Stage", "StepContext"]
