"""The plugin manager: built-ins, entry points, failures reported and skipped, disabling."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mqbench.plugins import BUILTIN_PLUGINS, Plugins
from tests.helpers import make_plugin_site

GOOD = """
from mqbench import hookimpl
from mqbench.methods import Method

class Noop(Method):
    name = "noop_refine"
    stage = "refine"
    description = "does nothing"
    def refine(self, qsim, float_model, calib, config, ctx):
        pass

@hookimpl
def mqbench_register_methods(register):
    register(Noop())
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("MQBENCH_DISABLE_PLUGINS", raising=False)
    yield site
    for mod in [m for m in sys.modules if m.startswith("fake_plugin_")]:
        del sys.modules[mod]


def test_builtins_are_plugins_with_their_registrations() -> None:
    p = Plugins(entry_points=False, disable=set())
    assert [i.name for i in p.infos.values()] == list(BUILTIN_PLUGINS)
    assert all(i.status == "loaded" and i.source == "builtin" for i in p.infos.values())
    assert {"quick_cnn", "quick_mobilenet_v1", "quick_mobilenet_v2", "mobilenet_v2", "resnet20"} <= set(p.models.names())
    assert {"synthetic", "imagenet", "cifar10"} <= set(p.datasets.names())
    assert {"fp32", "minmax"} <= set(p.methods.names())
    assert p.infos["mqbench.methods.minmax"].hooks == ["mqbench_register_methods"]
    assert p.plugin_of("backend", "simulated").name == "mqbench.backends.simulated"


def test_entry_point_plugin_is_loaded(site: Path) -> None:
    make_plugin_site(site, "fake-good", "good", "fake_plugin_good", GOOD)
    p = Plugins(disable=set())
    info = p.infos["good"]
    assert (info.status, info.source, info.distribution) == ("loaded", "entry point", "fake-good")
    assert info.registered == {"method": ["noop_refine"]}
    assert p.methods.get("noop_refine").stage == "refine"


def test_plugin_whose_import_fails_is_reported_and_skipped(site: Path) -> None:
    make_plugin_site(site, "fake-broken", "broken", "fake_plugin_broken", "import not_a_real_module_xyz\n")
    make_plugin_site(site, "fake-good", "good", "fake_plugin_good", GOOD)
    p = Plugins(disable=set())
    assert p.infos["broken"].status == "failed"
    assert "not_a_real_module_xyz" in (p.infos["broken"].error or "")
    assert p.infos["good"].status == "loaded" and "minmax" in p.methods


def test_misspelled_hook_is_caught_by_check_pending(site: Path) -> None:
    make_plugin_site(site, "fake-typo", "typo", "fake_plugin_typo", """
        from mqbench import hookimpl
        @hookimpl
        def mqbench_register_model(register):
            pass
        """)
    p = Plugins(disable=set())
    assert p.infos["typo"].status == "failed"
    assert "mqbench_register_model" in (p.infos["typo"].error or "")


def test_registration_hook_that_raises_is_isolated(site: Path) -> None:
    make_plugin_site(site, "fake-raise", "raiser", "fake_plugin_raise", """
        from mqbench import hookimpl
        from mqbench.methods import Method
        class M(Method):
            name = "half_registered"
        @hookimpl
        def mqbench_register_methods(register):
            register(M())
            raise RuntimeError("boom in registration")
        """)
    p = Plugins(disable=set())
    assert p.infos["raiser"].status == "failed" and "boom in registration" in (p.infos["raiser"].error or "")
    assert "half_registered" not in p.methods  # nothing of a failed plugin stays registered
    assert "minmax" in p.methods


def test_name_collision_with_a_builtin_fails_the_newcomer(site: Path) -> None:
    make_plugin_site(site, "fake-dup", "dup", "fake_plugin_dup", """
        from mqbench import hookimpl
        from mqbench.methods import Method
        class M(Method):
            name = "minmax"
        @hookimpl
        def mqbench_register_methods(register):
            register(M())
        """)
    p = Plugins(disable=set())
    assert p.infos["dup"].status == "failed"
    assert "registered twice: by plugin 'mqbench.methods.minmax' and by plugin 'dup'" in (p.infos["dup"].error or "")
    assert type(p.methods.get("minmax")).__module__ == "mqbench.methods.minmax"


def test_disable_by_name_and_star(site: Path) -> None:
    make_plugin_site(site, "fake-good", "good", "fake_plugin_good", GOOD)
    p = Plugins(disable={"good", "mqbench.methods.minmax"})
    assert p.infos["good"].status == "disabled" and "noop_refine" not in p.methods
    assert p.infos["mqbench.methods.minmax"].status == "disabled" and "minmax" not in p.methods
    p = Plugins(disable={"*"})
    assert p.infos["good"].status == "disabled" and "fp32" in p.methods


def test_disable_env_variable(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_plugin_site(site, "fake-good", "good", "fake_plugin_good", GOOD)
    monkeypatch.setenv("MQBENCH_DISABLE_PLUGINS", "good, mqbench.metrics.accuracy")
    p = Plugins()
    assert p.infos["good"].status == "disabled"
    assert p.infos["mqbench.metrics.accuracy"].status == "disabled" and len(p.metrics) == 0
