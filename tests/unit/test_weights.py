"""Trained-on-first-use weights: cached, sha256-checked, loaded with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mqbench.data.synthetic import SyntheticShapes
from mqbench.errors import MqbenchError
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights
from mqbench.models.weights import load_state_dict, resolve_weights
from tests.fake_plugins import Tiny

SPEC = ModelSpec("tiny", Tiny, weights=(TrainedWeights("synthetic", train=TrainConfig(epochs=1)),))
DATA = SyntheticShapes(sizes=(("train", 512), ("calib", 64), ("test", 256)))


def resolve(spec: ModelSpec = SPEC):
    return resolve_weights(spec, spec.weights[0], lambda _: DATA, lambda _d, s: DATA.load_split(s))


def test_train_once_then_load_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    first = resolve()
    assert first.source.startswith("trained:")
    files = sorted(p.name for p in (tmp_path / "weights").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")
    meta = json.loads((tmp_path / "weights" / files[0]).read_text())
    assert meta["sha256"] == first.sha256 and meta["train_config"]["epochs"] == 1
    second = resolve()
    assert second.source.startswith("cache:") and second.sha256 == first.sha256
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)


def test_corrupt_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    resolve()
    pt = next((tmp_path / "weights").glob("*.pt"))
    pt.write_bytes(pt.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(MqbenchError, match=r"fail their sha256 check.*delete it to retrain"):
        resolve()


def test_training_below_the_floor_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    spec = ModelSpec("tiny", Tiny, weights=(TrainedWeights("synthetic", train=TrainConfig(epochs=1), min_test_top1=0.99),))
    with pytest.raises(MqbenchError, match=r"below the required 0\.99"):
        resolve(spec)
    assert not list((tmp_path / "weights").glob("*.pt"))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, path)
    with pytest.raises(MqbenchError, match="cannot load weights"):
        load_state_dict(path)
