"""The conformance test (timm's ``parametrize(list_models())``): every registered method and toolkit recipe on
every registered runtime, on the tiny conformance MobileNetV2, through the real CLI in one temp project. Each
combination runs, or is skipped with a reason; its record validates against the record schema; its configs
round-trip through JSON. A test plugin (``extra_plugin.py``) adds a runtime and a toolkit in one file, installed
through an entry point as a user's would be, and is held to the same check."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from mqbench.plugins import BUILTIN_PLUGINS, Plugins
from mqbench.testing import Project, check_conformance, conformance_quantizers, run_conformance

EXTRA = Path(__file__).with_name("extra_plugin.py")
# The plugin set the CLI in the project sees: the built-ins, the installed entry points (the template plugin), the
# conformance model and the test plugin.
PLUGINS = Plugins((*BUILTIN_PLUGINS, "tests.conformance.extra_plugin", "mqbench.testing.models"))
QUANTIZERS = conformance_quantizers(plugins=PLUGINS)
RUNTIMES = PLUGINS.runtimes.names()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    project = Project(tmp_path_factory.mktemp("conformance"))
    project.install_plugin("mqbench-conformance-extra", "conformance-extra", "mqbench_conformance_extra",
                           EXTRA.read_text())
    return run_conformance(project, QUANTIZERS, RUNTIMES, PLUGINS)


def test_the_grid_covers_every_method_toolkit_and_runtime() -> None:
    assert {"channels-last", "ort-qdq", "simulated", "torch-x86"} <= set(RUNTIMES)
    assert {"absmax:default", "ort:minmax", "torch.ao:default", "fp32"} <= set(QUANTIZERS)
    assert len(QUANTIZERS) == len(PLUGINS.methods) + sum(len(t.recipes) for t in PLUGINS.toolkits)


@pytest.mark.parametrize(("quantizer", "runtime"), list(itertools.product(QUANTIZERS, RUNTIMES)),
                         ids=lambda v: v)
def test_conformance(records: dict[tuple[str, str], dict[str, Any]], quantizer: str, runtime: str) -> None:
    assert (quantizer, runtime) in records, f"no record of {quantizer} on {runtime}"
    check_conformance(records[quantizer, runtime], PLUGINS)


def test_the_new_runtime_and_toolkit_really_run(records: dict[tuple[str, str], dict[str, Any]]) -> None:
    channels_last = records["minmax", "channels-last"]
    assert channels_last["status"] == "ok" and channels_last["agreement"]["top1_agreement"] >= 0.95
    absmax = records["absmax:default", "torch-x86"]
    assert absmax["status"] == "ok" and absmax["artifact"] == {"format": "quantsim", "ranges": "symmetric max-abs"}
    assert records["absmax:default", "ort-qdq"]["status"] == "ok"
    assert "onnx-qdq" in records["ort:minmax", "channels-last"]["skip_reason"]
