"""Every hook mqbench calls. Plugins implement them with ``@mqbench.hookimpl``.

All hooks are *registration* hooks: they run once, when the plugin manager loads, and receive a
typed :class:`mqbench.registry.Registry`. Call ``register(item)`` (or ``register.add(item)``) for each
thing the plugin provides; a name that another plugin already registered is an error naming both
plugins. A plugin may implement any subset of these hooks; a function named ``mqbench_*`` that is not
listed here is rejected as a misspelled hook (``check_pending``).

Built-in features are plugins too (``mqbench.plugins.BUILTIN_PLUGINS``), registered by the same code
path as third-party plugins found through the ``mqbench`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqbench import hookspec

if TYPE_CHECKING:
    from mqbench.backends import Runtime
    from mqbench.data import DatasetSpec
    from mqbench.methods import Method
    from mqbench.metrics import Metric
    from mqbench.models import ModelSpec
    from mqbench.registry import Registry
    from mqbench.suites import Suite
    from mqbench.toolkits import Toolkit


@hookspec
def mqbench_register_models(register: Registry[ModelSpec]) -> None:
    """Register models: call ``register(ModelSpec(...))`` once per model.

    A :class:`mqbench.models.ModelSpec` names the model, builds the float ``nn.Module`` and lists the
    weights it can load (for example :class:`mqbench.models.TrainedWeights`, trained on first use and
    cached). Called once when plugins load; the return value is ignored.
    """


@hookspec
def mqbench_register_datasets(register: Registry[DatasetSpec]) -> None:
    """Register datasets: call ``register(spec)`` with a :class:`mqbench.data.DatasetSpec` subclass
    instance whose ``load_split(split, limit)`` returns decoded images and labels
    (:class:`mqbench.data.Split`) for the ``train``, ``calib`` and ``test`` splits. Called once when
    plugins load; the return value is ignored.
    """


@hookspec
def mqbench_register_methods(register: Registry[Method]) -> None:
    """Register quantization methods: call ``register(method)`` with a :class:`mqbench.methods.Method`
    instance. A method declares its stage (``transform``, ``calibrate`` or ``refine``), its frozen,
    versioned config dataclass, and implements the function of its stage. A method that trains sets
    ``needs_training = True``: the harness then gives it the train split and the cell's training budget
    (``StepContext.train``, ``train_budget_s``) and stores what it reports in ``StepContext.training``.
    Methods are combined into ``+``-joined pipelines by the harness. Called once when plugins load; the
    return value is ignored.
    """


@hookspec
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    """Register runtimes (a cell's ``--backend``): call ``register(runtime)`` with a
    :class:`mqbench.backends.Runtime` instance. A runtime declares the artifact formats it runs (``formats``:
    ``float``, ``quantsim``, ``onnx-qdq``, ...) and the schemes it can run (``check_scheme``), says where it
    quantizes (``placement``, for the QuantSim an mqbench pipeline calibrates for it), loads an artifact into
    something callable (``load``), and names its version, engine and packages for provenance (``info``,
    ``packages``). Called once when plugins load; the return value is ignored.
    """


@hookspec
def mqbench_register_backends(register: Registry[Runtime]) -> None:
    """The first wave's name of :func:`mqbench_register_runtimes`: ``register(runtime)`` adds a runtime to the
    same registry. Kept so plugins written for it keep working; new plugins implement
    ``mqbench_register_runtimes``. Called once when plugins load; the return value is ignored.
    """


@hookspec
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    """Register toolkits: call ``register(toolkit)`` with a :class:`mqbench.toolkits.Toolkit` instance. A
    toolkit is another project's quantizer run as it is: it names its recipes (each a frozen, versioned
    :class:`mqbench.toolkits.RecipeConfig`; a cell's quantizer ``toolkit:recipe``), quantizes the float model on
    the cell's calibration images with its own API (``quantize``) and hands on an artifact of the format it
    names (``output_format``) to whichever runtime runs that format. Called once when plugins load; the return
    value is ignored.
    """


@hookspec
def mqbench_register_suites(register: Registry[Suite]) -> None:
    """Register suites: call ``register(Suite(...))`` with a named grid of models x quantizers (pipelines or
    toolkit recipes) x runtimes x schemes x seeds on one dataset, or a composite ``Suite(name, description, parts=(...))``
    whose cells are the union of its parts' (grids on different datasets, as the ``papers`` suite).
    Called once when plugins load; the return value is ignored.
    """


@hookspec
def mqbench_register_metrics(register: Registry[Metric]) -> None:
    """Register per-cell metrics: call ``register(metric)`` with a :class:`mqbench.metrics.Metric`
    whose ``compute(evaluation)`` returns a JSON-serialisable dict stored in every record under the
    metric's name. Called once when plugins load; the return value is ignored.
    """
