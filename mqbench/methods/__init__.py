"""Quantization methods: the plugin-facing types.

A method is one step of a pipeline and declares its stage:

* ``transform`` (before quantizers exist): ``transform(model, config, ctx) -> model``;
* ``calibrate`` (choose ranges / qparams): ``calibrate(qsim, calib, config, ctx)``;
* ``refine`` (after calibration: bias correction, AdaRound, ...): ``refine(qsim, float_model, calib, config, ctx)``.

A method that trains (``needs_training = True``, e.g. ``qf_sepconv``'s fine-tuning) finds the dataset's
``train`` split in ``ctx.train`` and the cell's wall-clock training budget in ``ctx.train_budget_s`` (None:
none), and writes what its training cost (epochs, seconds, images) into ``ctx.training``; the harness
stores that in the record under ``training``.

Pipelines are ``+``-joined steps (``cle+mse+bias_correction``); a step is a method name, optionally
with parameters: ``percentile(percentile=99.9)``, ``mse(targets=activations)``. The harness orders the
steps by stage and rejects impossible pipelines before any work: a refine step without a calibrate
step, two calibrate steps for the same tensors (``calibrates``), tensors the scheme quantizes that no
step calibrates, or a scheme a step cannot serve (``check_scheme``). Each method's parameters are a
frozen, versioned :class:`MethodConfig` dataclass stored in every record.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import nn

from mqbench.progress import SILENT, Reporter

if TYPE_CHECKING:
    from mqbench.data import Split
    from mqbench.quant.estimators import Estimate, Observer
    from mqbench.quant.qsim import Quantizer, QuantSim
    from mqbench.schemes import QuantScheme

Stage = Literal["transform", "calibrate", "refine"]
STAGE_ORDER: dict[str, int] = {"transform": 0, "calibrate": 1, "refine": 2}
TENSORS = ("weights", "activations")


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
    calib: Split | None = None  # the calibration images, for transform steps that measure the float model
    train: Split | None = None  # the train split, given to steps that declare ``needs_training``
    train_budget_s: float | None = None  # wall-clock budget of a training step (None: none); stops at an epoch end
    training: dict[str, Any] = field(default_factory=dict)  # what a training step cost, stored in the record


class Method:
    """Base class of a method plugin. Set the class attributes and implement your stage's function."""

    name: str = ""
    stage: Stage = "calibrate"
    description: str = ""
    version: str = "1"
    quantizes: bool = True
    needs_training: bool = False  # True: the harness supplies the train split and the cell's training budget
    config_type: type[MethodConfig] = NoConfig

    def default_config(self) -> MethodConfig:
        return self.config_type()

    def make_config(self, overrides: dict[str, Any]) -> MethodConfig:
        """The default config with ``overrides`` (from ``name(key=value, ...)``); ValueError on a bad key or value."""
        return self.config_type(**checked_overrides(f"method {self.name}", self.config_type, overrides))

    def calibrates(self, config: MethodConfig) -> frozenset[str]:
        """The tensors (``weights``, ``activations``) whose ranges this step sets; calibrate steps only."""
        return frozenset(TENSORS) if self.stage == "calibrate" else frozenset()

    def check_scheme(self, scheme: QuantScheme, config: MethodConfig) -> str | None:
        """Why this step cannot serve ``scheme`` (None when it can): checked before any work starts."""
        return None

    def transform(self, model: nn.Module, config: MethodConfig, ctx: StepContext) -> nn.Module:
        raise NotImplementedError(f"method {self.name} has no transform step")

    def calibrate(self, qsim: QuantSim, calib: Split, config: MethodConfig, ctx: StepContext) -> None:
        raise NotImplementedError(f"method {self.name} has no calibrate step")

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        raise NotImplementedError(f"method {self.name} has no refine step")

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.stage})>"


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a word"}


def checked_overrides(owner: str, config_type: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` of the fields of ``config_type`` (a config dataclass) checked against the fields' declared
    types (ints are accepted for floats); ValueError naming ``owner`` and the parameter otherwise."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ValueError(f"{owner} has no parameter {unknown[0]!r} (parameters: {known})")
    hints = typing.get_type_hints(config_type)
    return {key: _checked(owner, key, hints.get(key), value) for key, value in overrides.items()}


def _checked(owner: str, key: str, expected: Any, value: Any) -> Any:
    """``value`` if it has the parameter's declared type (ints are accepted for floats); else ValueError."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in _TYPE_WORDS and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ValueError(f"parameter {key!r} of {owner} must be {_TYPE_WORDS[expected]}, got {value!r}")
    return value


@dataclass(frozen=True)
class RangeConfig(MethodConfig):
    """Base config of range estimators: which tensors the step calibrates."""

    targets: str = "all"  # "all", "weights" or "activations"

    def __post_init__(self) -> None:
        if self.targets not in ("all", *TENSORS):
            raise ValueError(f"targets must be 'all', 'weights' or 'activations', got {self.targets!r}")

    @property
    def tensors(self) -> frozenset[str]:
        return frozenset(TENSORS) if self.targets == "all" else frozenset({self.targets})


class RangeEstimator(Method):
    """Base of calibrate steps that choose ranges with observers; ``config.targets`` says whether weights,
    activations or both are calibrated here.

    A clipping estimator implements :meth:`estimate` (a range from a weighted sample, see
    ``quant.estimators``): weights are then observed exactly, activations through a streaming histogram
    of ``config.bins`` bins. Estimators that need other statistics override the two observer methods.
    """

    stage: Stage = "calibrate"
    config_type: type[MethodConfig] = RangeConfig

    def estimate(self, quantizer: Quantizer, config: MethodConfig) -> Estimate:
        raise NotImplementedError(f"method {self.name} has no estimate()")

    def weight_observer(self, quantizer: Quantizer, config: MethodConfig) -> Observer:
        from mqbench.quant.estimators import SampleObserver
        return SampleObserver(self.estimate(quantizer, config), quantizer.axis)

    def activation_observer(self, quantizer: Quantizer, config: MethodConfig) -> Observer:
        from mqbench.quant.estimators import HistogramObserver
        return HistogramObserver(self.estimate(quantizer, config), getattr(config, "bins", 2048))

    def calibrates(self, config: MethodConfig) -> frozenset[str]:
        assert isinstance(config, RangeConfig)
        return config.tensors

    def calibrate(self, qsim: QuantSim, calib: Split, config: MethodConfig, ctx: StepContext) -> None:
        from mqbench.quant.calibration import calibrate_activations, calibrate_weights

        tensors = self.calibrates(config)
        if "weights" in tensors:
            calibrate_weights(qsim, lambda q: self.weight_observer(q, config))
        if "activations" in tensors and qsim.act_quantizers:
            calibrate_activations(qsim, calib, lambda q: self.activation_observer(q, config), ctx.batch_size,
                                  ctx.reporter)


__all__ = [
    "STAGE_ORDER",
    "TENSORS",
    "Method",
    "MethodConfig",
    "NoConfig",
    "RangeConfig",
    "RangeEstimator",
    "Stage",
    "StepContext",
    "checked_overrides",
]
