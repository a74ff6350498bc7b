"""The quick suite's weights ship with mqbench (mqbench/models/shipped): the harness loads them instead of training,
checked against their sha256, and ``mqbench train`` with the command their sidecar records writes the same file,
bit for bit (retrained here for quick_cnn, the quickest; scripts/ship_quick_weights.py retrains all three)."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest

from mqbench.backends.ort.runtime import cpu_isa
from mqbench.harness.workspace import Workspace
from mqbench.models.builtin import QUICK_MODELS
from mqbench.models.shipped import SHIPPED, SHIPPED_DIR
from mqbench.models.weights import recipe_file_name, train_recipe
from mqbench.plugins import Plugins
from tests.helpers import cli_env, mqbench


def _shipped_name(model: str) -> str:
    spec = next(s for s in QUICK_MODELS if s.name == model)
    weights = spec.weights[0]
    return recipe_file_name(train_recipe(spec.name, dict(weights.build_kwargs), weights.dataset, None, weights.train))


def test_every_quick_model_ships_and_loads_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "empty-cache"))
    ws = Workspace(Plugins(entry_points=False, disable=set()))
    assert sorted(SHIPPED) == sorted(_shipped_name(s.name) for s in QUICK_MODELS)
    for spec in QUICK_MODELS:
        name = _shipped_name(spec.name)
        assert hashlib.sha256((SHIPPED_DIR / name).read_bytes()).hexdigest() == SHIPPED[name]
        sidecar = json.loads((SHIPPED_DIR / name).with_suffix(".json").read_text())
        assert sidecar["sha256"] == SHIPPED[name] and sidecar["test_top1"] >= spec.weights[0].min_test_top1
        resolved = ws.weights(spec.name, "synthetic")
        assert resolved.source == f"shipped:{name}" and resolved.sha256 == SHIPPED[name]
    assert not (tmp_path / "empty-cache").exists()  # nothing trained, nothing written


def test_a_damaged_shipped_file_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mqbench.errors import MqbenchError
    from mqbench.models import shipped

    monkeypatch.setattr(shipped, "SHIPPED", {name: "0" * 64 for name in SHIPPED})
    ws = Workspace(Plugins(entry_points=False, disable=set()))
    with pytest.raises(MqbenchError, match="installation is damaged; reinstall mqbench"):
        ws.weights("quick_cnn", "synthetic")


@pytest.mark.slow
def test_mqbench_train_reproduces_the_shipped_quick_cnn_bit_for_bit(tmp_path: Path) -> None:
    name = _shipped_name("quick_cnn")
    command = json.loads((SHIPPED_DIR / name).with_suffix(".json").read_text())["command"]
    argv = shlex.split(command)
    assert argv[:2] == ["mqbench", "train"]
    out = argv.index("--out")
    argv[out + 1] = str(tmp_path / "out")
    res = mqbench(*argv[1:], env=cli_env(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr[-3000:]
    if "avx512f" not in cpu_isa():  # trained with AVX-512 float kernels; others round otherwise
        shipped = json.loads((SHIPPED_DIR / name).with_suffix(".json").read_text())["test_top1"]
        retrained = json.loads((tmp_path / "out" / name).with_suffix(".json").read_text())["test_top1"]
        assert abs(retrained - shipped) <= 0.03, (retrained, shipped)
        return  # measured on AVX2: 0.938 against the shipped 0.939
    assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == SHIPPED[name]
