"""Resolving a model's weights: trained on first use and cached, always loaded with
``torch.load(..., weights_only=True, map_location="cpu")`` and checked against their sha256.

Cache: ``$MQBENCH_CACHE`` (default ``~/.cache/mqbench``) / ``weights/``. Each cached file has a JSON
sidecar with its sha256, the training config and the float accuracy reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mqbench import __version__
from mqbench.data import DatasetSpec, Split
from mqbench.errors import MqbenchError
from mqbench.fsutil import atomic_write
from mqbench.models import ModelSpec, TrainedWeights, WeightsSpec
from mqbench.progress import SILENT, Reporter
from mqbench.train import train

TRAIN_RECIPE_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("MQBENCH_CACHE") or "~/.cache/mqbench").expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (``weights_only=True``); a bad file is a one-line MqbenchError."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or unsafe file
        raise MqbenchError(f"cannot load weights {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(obj, dict):
        raise MqbenchError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    return obj


@dataclass(frozen=True)
class ResolvedWeights:
    state_dict: dict[str, torch.Tensor]
    sha256: str
    source: str
    meta: dict[str, Any]


def _train_key(model: ModelSpec, weights: TrainedWeights, dataset: DatasetSpec) -> str:
    payload = json.dumps({"model": model.name, "weights": dataclasses.asdict(weights), "dataset": repr(dataset),
                          "recipe": TRAIN_RECIPE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def resolve_weights(model: ModelSpec, weights: WeightsSpec, datasets: Callable[[str], DatasetSpec],
                    load_split: Callable[[str, str], Split], reporter: Reporter = SILENT) -> ResolvedWeights:
    """The state dict of ``weights`` for ``model``, training and caching it first if needed."""
    if isinstance(weights, TrainedWeights):
        return _resolve_trained(model, weights, datasets(weights.dataset), load_split, reporter)
    raise MqbenchError(f"weights {weights.name!r} of model {model.name!r} are a {type(weights).__name__}, "
                       "which this mqbench cannot resolve")


def _resolve_trained(model: ModelSpec, weights: TrainedWeights, dataset: DatasetSpec,
                     load_split: Callable[[str, str], Split], reporter: Reporter) -> ResolvedWeights:
    key = _train_key(model, weights, dataset)
    path = cache_dir() / "weights" / f"{model.name}-{weights.name}-{key}.pt"
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
            expected = meta["sha256"]
        except (OSError, ValueError, KeyError) as exc:
            raise MqbenchError(f"cache sidecar {sidecar} is unreadable ({exc}); delete {path} and {sidecar} "
                               "to retrain") from exc
        actual = sha256_file(path)
        if actual != expected:
            raise MqbenchError(f"cached weights {path} fail their sha256 check (expected {expected[:12]}..., "
                               f"got {actual[:12]}...); the file is corrupt: delete it to retrain")
        return ResolvedWeights(load_state_dict(path), actual, f"cache:{path.name}", meta)

    config = weights.train
    torch.manual_seed(config.seed)
    net: nn.Module = model.build(dataset.num_classes)
    reporter.log(f"training {model.name} on {dataset.name} (first use; cached afterwards in {path.parent})")
    result = train(net, load_split(dataset.name, "train"), load_split(dataset.name, "test"), config, reporter,
                   label=f"training {model.name}")
    if weights.min_test_top1 is not None and (result.test_top1 or 0.0) < weights.min_test_top1:
        raise MqbenchError(f"training {model.name} reached test top-1 {result.test_top1:.4f}, below the "
                           f"required {weights.min_test_top1}; not caching it")
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    meta = {"sha256": digest, "model": model.name, "weights": weights.name, "dataset": dataset.name,
            "train_config": dataclasses.asdict(config), "test_top1": result.test_top1,
            "train_seconds": round(result.seconds, 2), "history": result.history, "mqbench_version": __version__}
    atomic_write(path, data, overwrite=True)
    atomic_write(sidecar, json.dumps(meta, indent=2).encode(), overwrite=True)
    reporter.log(f"trained {model.name}: test top-1 {result.test_top1:.4f} in {result.seconds:.0f} s")
    return ResolvedWeights(net.state_dict(), digest, f"trained:{path.name}", meta)
