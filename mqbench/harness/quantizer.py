"""Quantizers: who chooses a cell's qparams, parsed once per cell.

A quantizer is written as text in ``--method`` (and ``--toolkit``) and in a suite:

* an mqbench **pipeline**, ``+``-joined method steps, each optionally with parameters
  (``cle+mse+bias_correction``, ``percentile(percentile=99.9)``): :class:`Pipeline`, the methods run on a
  QuantSim placed for the cell's runtime;
* a **toolkit recipe**, ``toolkit:recipe`` with optional parameters (``ort:minmax``,
  ``torch.ao:default(calib_batch=16)``): :class:`ToolkitRecipe`, another project's quantizer run as it is.

:func:`parse_quantizer` returns either; impossible pipelines are UsageErrors before any work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mqbench.backends import FLOAT, QUANTSIM
from mqbench.errors import UsageError
from mqbench.methods import STAGE_ORDER, Method, MethodConfig
from mqbench.plugins import Plugins
from mqbench.schemes import QuantScheme
from mqbench.toolkits import RecipeConfig, Toolkit


@dataclass(frozen=True)
class Step:
    """One pipeline step: a method and its (possibly overridden) config."""

    method: Method
    config: MethodConfig

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def stage(self) -> str:
        return self.method.stage

    @property
    def text(self) -> str:
        """Canonical text: the name, then parameters that differ from the defaults, sorted."""
        default = self.method.default_config().to_dict()
        changed = {k: v for k, v in self.config.to_dict().items() if default.get(k) != v}
        if not changed:
            return self.name
        return f"{self.name}({','.join(f'{k}={_format_value(v)}' for k, v in sorted(changed.items()))})"


_STEP_RE = re.compile(r"^([A-Za-z_][\w.-]*)(?:\((.*)\))?$")


def _format_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_steps(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "+" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


PIPELINE_HELP = ("method names joined by '+', each optionally with parameters: e.g. 'minmax', "
                 "'cle+mse+bias_correction', 'percentile(percentile=99.9)', 'msqe+mse(targets=activations)'; "
                 "or a toolkit recipe toolkit:recipe, e.g. 'ort:minmax' (mqbench list toolkits)")


def parse_pipeline(text: str, plugins: Plugins) -> list[Step]:
    """The steps of a ``+``-joined pipeline, ordered by stage; impossible pipelines are UsageErrors.

    Checked here (independent of the scheme): syntax, unknown methods and parameters, a method named
    twice, ``fp32`` combined with other steps, a refine step without a calibrate step, and two
    calibrate steps for the same tensors. :func:`check_pipeline` adds the scheme-dependent checks.
    """
    parts = _split_steps(text)
    if not text.strip() or any(not p for p in parts):
        raise UsageError(f"malformed pipeline {text!r}: {PIPELINE_HELP}")
    steps: list[Step] = []
    for part in parts:
        m = _STEP_RE.match(part)
        if not m:
            raise UsageError(f"malformed pipeline step {part!r} in {text!r}: {PIPELINE_HELP}")
        method = plugins.methods.get(m.group(1))
        overrides = _parameters(m.group(2), part)
        try:
            config = method.make_config(overrides)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"pipeline {text!r}, step {part!r}: {exc}") from None
        steps.append(Step(method, config))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise UsageError(f"pipeline {text!r} names a method twice")
    plain = [s.name for s in steps if not s.method.quantizes]
    if plain and (len(plain) > 1 or any(s.stage != "transform" for s in steps)):
        raise UsageError(f"pipeline {text!r}: {plain[0]} does not quantize and can only be combined with transform "
                         "steps (e.g. 'qf_sepconv+fp32': the float reference of a transformed model)")
    if all(s.method.quantizes for s in steps):
        calibrators = [s for s in steps if s.stage == "calibrate"]
        refiners = [s.name for s in steps if s.stage == "refine"]
        if not calibrators:
            what = f"refine step {refiners[0]!r} without a calibrate step" if refiners else "no calibrate step"
            raise UsageError(f"pipeline {text!r} has {what}; a quantizing pipeline needs a calibrate step that sets "
                             f"the ranges first (e.g. 'minmax{'+' + refiners[0] if refiners else ''}')")
        seen: dict[str, str] = {}
        for s in calibrators:
            for tensor in sorted(s.method.calibrates(s.config)):
                if tensor in seen:
                    raise UsageError(f"pipeline {text!r} has two calibrate steps for the {tensor} ({seen[tensor]} and "
                                     f"{s.name}); keep one, or restrict each with targets=weights / "
                                     "targets=activations")
                seen[tensor] = s.name
        if "weights" not in seen:
            raise UsageError(f"pipeline {text!r}: no calibrate step sets the weight ranges (add e.g. "
                             "'minmax(targets=weights)')")
    return sorted(steps, key=_step_order)


def _step_order(step: Step) -> tuple[int, int, str]:
    """Steps run stage by stage; within the calibrate stage, the steps that set weight ranges first, then by name,
    so the same calibrate steps written in another order are the same cell. Transform and refine steps keep the
    order they were written in (CLE before or after another transform is a different model)."""
    if step.stage != "calibrate":
        return STAGE_ORDER[step.stage], 0, ""
    return STAGE_ORDER[step.stage], 0 if "weights" in step.method.calibrates(step.config) else 1, step.name


def check_pipeline(steps: Sequence[Step], scheme: QuantScheme, text: str) -> None:
    """Scheme-dependent checks: every tensor the scheme quantizes is calibrated, and every step can
    serve the scheme. UsageError naming the conflict otherwise."""
    if scheme.is_float or not all(s.method.quantizes for s in steps):
        return
    covered = set().union(*(s.method.calibrates(s.config) for s in steps))
    if scheme.act_bits is not None and "activations" not in covered:
        raise UsageError(f"pipeline {text!r} does not calibrate activations, which scheme {scheme.name} quantizes; "
                         "add an activation calibrator (e.g. '+minmax(targets=activations)') or use a weights-only "
                         f"scheme such as w{scheme.weight_bits}")
    for s in steps:
        reason = s.method.check_scheme(scheme, s.config)
        if reason:
            raise UsageError(f"pipeline {text!r}: {s.name} cannot serve scheme {scheme.name}: {reason}")


def pipeline_name(steps: Sequence[Step]) -> str:
    return "+".join(s.text for s in steps)


def _parameters(text: str | None, part: str) -> dict[str, Any]:
    """``key=value`` pairs of a step's or recipe's parentheses (values JSON where they parse, else words)."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"malformed parameter {item!r} of {part!r}: write key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    return overrides


@dataclass(frozen=True)
class Pipeline:
    """An mqbench pipeline: its steps, ordered by stage (what :func:`parse_pipeline` returns)."""

    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        return pipeline_name(self.steps)

    @property
    def quantizes(self) -> bool:
        """False for ``fp32`` (with transform steps, ``qf_sepconv+fp32``): the float reference."""
        return all(s.method.quantizes for s in self.steps)

    @property
    def output_format(self) -> str:
        return QUANTSIM if self.quantizes else FLOAT

    def stage(self, stage: str) -> list[Step]:
        return [s for s in self.steps if s.stage == stage]

    def trainers(self) -> list[str]:
        """The steps that train (the harness gives them the train split and the training budget)."""
        return [s.name for s in self.steps if s.method.needs_training]

    def check_scheme(self, scheme: QuantScheme) -> None:
        check_pipeline(self.steps, scheme, self.name)

    def record_config(self) -> dict[str, Any]:
        """What the quantizer adds to its cell's config (and so to its hash)."""
        return {"steps": [{"method": s.name, "stage": s.stage, "config": s.config.to_dict()} for s in self.steps]}


@dataclass(frozen=True)
class ToolkitRecipe:
    """A toolkit's named recipe with its config (the recipe's, with any parameters given)."""

    toolkit: Toolkit
    recipe: str
    config: RecipeConfig

    @property
    def name(self) -> str:
        default = self.toolkit.recipe(self.recipe).config.to_dict()
        changed = {k: v for k, v in self.config.to_dict().items() if default.get(k) != v}
        params = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(changed.items()))
        return f"{self.toolkit.name}:{self.recipe}" + (f"({params})" if params else "")

    quantizes = True

    @property
    def output_format(self) -> str:
        return self.toolkit.format_of(self.recipe)

    def trainers(self) -> list[str]:
        return []

    def check_scheme(self, scheme: QuantScheme) -> None:
        if scheme.is_float:
            raise UsageError(f"{self.name} is a quantizer: give it a quantizing scheme (fp32 is the 'fp32' pipeline)")

    def record_config(self) -> dict[str, Any]:
        """What the quantizer adds to its cell's config (and so to its hash)."""
        return {"quantizer": {"toolkit": self.toolkit.name, "recipe": self.recipe, "config": self.config.to_dict()}}


Quantizer = Pipeline | ToolkitRecipe
_RECIPE_RE = re.compile(r"^([A-Za-z_][\w.-]*):([A-Za-z_][\w.-]*)(?:\((.*)\))?$")


def parse_quantizer(text: str, plugins: Plugins) -> Quantizer:
    """A pipeline, or a toolkit recipe when ``text`` is ``toolkit:recipe[(key=value,...)]``."""
    if ":" not in text.partition("(")[0]:
        return Pipeline(tuple(parse_pipeline(text, plugins)))
    m = _RECIPE_RE.match(text.strip())
    if not m:
        raise UsageError(f"malformed toolkit recipe {text!r}: write toolkit:recipe, e.g. 'ort:minmax'")
    toolkit = plugins.toolkits.get(m.group(1))
    if m.group(2) not in toolkit.recipes:
        raise UsageError(f"toolkit {toolkit.name} has no recipe {m.group(2)!r}; its recipes: "
                         f"{', '.join(sorted(toolkit.recipes))}")
    try:
        config = toolkit.make_config(m.group(2), _parameters(m.group(3), text))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"quantizer {text!r}: {exc}") from None
    return ToolkitRecipe(toolkit, m.group(2), config)


__all__ = ["PIPELINE_HELP", "Pipeline", "Quantizer", "Step", "ToolkitRecipe", "check_pipeline", "parse_pipeline",
           "parse_quantizer", "pipeline_name"]
