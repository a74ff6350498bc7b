"""The plugin manager and the thin typed facade through which core code calls hooks.

Built-in plugins (``BUILTIN_PLUGINS``) and third-party plugins (entry points in the ``mqbench``
group) are loaded by the same function. A plugin whose import fails, whose hook names are misspelled
(``PluginManager.check_pending``) or whose registration hook raises is reported by ``mqbench plugins``
and skipped, never fatal. ``MQBENCH_DISABLE_PLUGINS`` is a comma-separated list of plugin names to
skip (``*`` skips every third-party plugin).

Registration hooks are called plugin by plugin (not through one ``pm.hook.x()`` call) so a plugin
that raises is isolated: what it registered is discarded and the others still load.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from mqbench import PROJECT_NAME, __version__, hookspecs
from mqbench.backends import Runtime
from mqbench.data import DatasetSpec
from mqbench.errors import RegistrationError
from mqbench.methods import Method
from mqbench.metrics import Metric
from mqbench.models import ModelSpec
from mqbench.registry import Registry
from mqbench.suites import Suite
from mqbench.toolkits import Toolkit

ENTRY_POINT_GROUP = "mqbench"
DISABLE_ENV = "MQBENCH_DISABLE_PLUGINS"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "mqbench.models.builtin",
    "mqbench.models.zoo",
    "mqbench.data.synthetic",
    "mqbench.data.images",
    "mqbench.methods.fp32",
    "mqbench.methods.minmax",
    "mqbench.methods.percentile",
    "mqbench.methods.mse",
    "mqbench.methods.entropy",
    "mqbench.methods.cle",
    "mqbench.methods.qf_sepconv",
    "mqbench.methods.bias_correction",
    "mqbench.methods.msqe",
    "mqbench.methods.learned_scale",
    "mqbench.methods.qat",
    "mqbench.methods.adaround",
    "mqbench.backends.simulated",
    "mqbench.backends.ort.runtime",
    "mqbench.backends.torch_ao.runtime",
    "mqbench.backends.openvino",
    "mqbench.backends.executorch",
    "mqbench.backends.torchao_x86",
    "mqbench.backends.litert",
    "mqbench.backends.null",
    "mqbench.backends.ort.toolkit",
    "mqbench.backends.torch_ao.toolkit",
    "mqbench.toolkits.nncf",
    "mqbench.toolkits.pt2e",
    "mqbench.toolkits.brevitas",
    "mqbench.metrics.accuracy",
    "mqbench.suites",
)

# hook name -> (registry kind, item type)
REGISTRATION_HOOKS: dict[str, tuple[str, type]] = {
    "mqbench_register_models": ("model", ModelSpec),
    "mqbench_register_datasets": ("dataset", DatasetSpec),
    "mqbench_register_methods": ("method", Method),
    "mqbench_register_runtimes": ("runtime", Runtime),
    "mqbench_register_backends": ("runtime", Runtime),  # the first wave's name of the same hook
    "mqbench_register_toolkits": ("toolkit", Toolkit),
    "mqbench_register_suites": ("suite", Suite),
    "mqbench_register_metrics": ("metric", Metric),
}


@dataclass
class PluginInfo:
    """What ``mqbench plugins`` shows about one plugin."""

    name: str
    source: str  # "builtin" or "entry point"
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def disabled_plugins() -> set[str]:
    return {p.strip() for p in os.environ.get(DISABLE_ENV, "").split(",") if p.strip()}


class Plugins:
    """Loaded plugins and their registries: the only way core code reaches hooks."""

    def __init__(self, builtins: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True,
                 disable: set[str] | None = None) -> None:
        disable = disabled_plugins() if disable is None else disable
        # What another process needs to load the same plugins (an executor's workers).
        self.recipe: tuple[tuple[str, ...], bool, frozenset[str]] = (tuple(builtins), entry_points, frozenset(disable))
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry[Any]] = {
            kind: Registry(kind, item_type) for kind, item_type in REGISTRATION_HOOKS.values()}
        for modname in builtins:
            self._load(modname, "builtin", modname, functools.partial(importlib.import_module, modname), disable,
                       PROJECT_NAME, __version__)
        if entry_points:
            for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                dist = ep.dist.name if ep.dist is not None else None
                version = ep.dist.version if ep.dist is not None else None
                self._load(ep.name, "entry point", ep.value, ep.load, disable, dist, version)
        self._register_all()

    # -- loading ----------------------------------------------------------------------------------
    def _load(self, name: str, source: str, module: str, load: Callable[[], Any], disable: set[str],
              dist: str | None = None, version: str | None = None) -> None:
        info = PluginInfo(name, source, module, dist, version)
        if name in self.infos:
            info.status, info.error = "failed", f"a plugin named {name!r} is already loaded"
            self.infos[f"{name} ({module})"] = info
            return
        self.infos[name] = info
        if name in disable or (source == "entry point" and "*" in disable):
            info.status = "disabled"
            self.pm.set_blocked(name)
            return
        try:
            plugin = load()
        except Exception as exc:  # any import-time failure of a plugin is reported, not fatal
            info.status, info.error = "failed", f"import failed: {type(exc).__name__}: {exc}"
            return
        if info.version is None and isinstance(plugin, ModuleType):
            info.version = getattr(plugin, "__version__", None)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            info.status, info.error = "failed", f"invalid hooks: {exc}"
            return
        info.hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])

    def _register_all(self) -> None:
        for hook_name, (kind, item_type) in REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            registry = self.registries[kind]
            # pluggy lists implementations in registration order; built-ins come first.
            for impl in caller.get_hookimpls():
                info = self.infos[impl.plugin_name]
                if info.status != "loaded":
                    continue
                staged: Registry[Any] = Registry(kind, item_type)
                staged.current_plugin = impl.plugin_name
                added: list[str] = []
                try:
                    impl.function(**{arg: staged for arg in impl.argnames})
                    registry.current_plugin = impl.plugin_name
                    for item in staged:
                        registry.add(item)
                        added.append(item.name)
                except Exception as exc:  # a plugin's bug must not take the others down
                    for name in added:  # all or nothing: withdraw what this hook call got in before the collision
                        registry.remove(name)
                    self._fail(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
                    continue
                info.registered.setdefault(kind, []).extend(added)

    def _fail(self, name: str, message: str) -> None:
        info = self.infos[name]
        info.status, info.error = "failed", message
        # Drop whatever it registered under other hooks already called.
        for kind, names in info.registered.items():
            for n in names:
                self.registries[kind].remove(n)
        info.registered = {}
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    # -- typed access -----------------------------------------------------------------------------
    @property
    def models(self) -> Registry[ModelSpec]:
        return self.registries["model"]

    @property
    def datasets(self) -> Registry[DatasetSpec]:
        return self.registries["dataset"]

    @property
    def methods(self) -> Registry[Method]:
        return self.registries["method"]

    @property
    def runtimes(self) -> Registry[Runtime]:
        return self.registries["runtime"]

    backends = runtimes  # the first wave's name

    @property
    def toolkits(self) -> Registry[Toolkit]:
        return self.registries["toolkit"]

    @property
    def suites(self) -> Registry[Suite]:
        return self.registries["suite"]

    @property
    def metrics(self) -> Registry[Metric]:
        return self.registries["metric"]

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        kind = {"backend": "runtime"}.get(kind, kind)  # the first wave's name of runtimes
        return self.infos[self.registries[kind].owner(name)]


_DEFAULT: list[Plugins] = []


def get_plugins() -> Plugins:
    """The process-wide plugin set (loaded on first use)."""
    if not _DEFAULT:
        _DEFAULT.append(Plugins())
    return _DEFAULT[0]


def reset_plugins() -> None:
    """Forget the loaded plugin set (tests, or after changing MQBENCH_DISABLE_PLUGINS)."""
    _DEFAULT.clear()


__all__ = ["BUILTIN_PLUGINS", "DISABLE_ENV", "ENTRY_POINT_GROUP", "PluginInfo", "Plugins", "RegistrationError",
           "get_plugins", "reset_plugins"]
