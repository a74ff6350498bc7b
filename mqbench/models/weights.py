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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mqbench import __version__
from mqbench.data import DatasetSpec, Split
from mqbench.data.paths import data_file
from mqbench.errors import MqbenchError
from mqbench.fsutil import atomic_write, cache_dir, sha256_file
from mqbench.models import CheckpointWeights, FileWeights, HubWeights, ModelSpec, TrainedWeights, UrlWeights, WeightsSpec
from mqbench.progress import SILENT, Reporter
from mqbench.train import TrainConfig, train

TRAIN_RECIPE_VERSION = 1


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (``weights_only=True``); a bad file is a one-line MqbenchError."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or unsafe file
        first_line = (str(exc).splitlines() or ["(no message)"])[0]
        raise MqbenchError(f"cannot load weights {path}: {type(exc).__name__}: {first_line}") from exc
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
    """The state dict of ``weights`` for ``model``: trained and cached first if needed, read from a
    local file, downloaded from a URL or fetched from the Hugging Face hub (each verified by sha256)."""
    if isinstance(weights, TrainedWeights):
        return _resolve_trained(model, weights, datasets(weights.dataset), load_split, reporter)
    if isinstance(weights, FileWeights):
        path = data_file(weights.path, f"weights {model.name}:{weights.name}")
        source = f"file:{path}"
    elif isinstance(weights, UrlWeights):
        path = download(weights.url, weights.sha256, reporter)
        source = f"url:{weights.url}"
    elif isinstance(weights, HubWeights):
        path = _hub_download(weights)
        source = f"hub:{weights.repo_id}/{weights.filename}@{weights.revision or 'main'}"
    else:
        raise MqbenchError(f"weights {weights.name!r} of model {model.name!r} are a {type(weights).__name__}, "
                           "which this mqbench cannot resolve")
    digest = sha256_file(path)
    if weights.sha256 and not digest.startswith(weights.sha256.lower()):
        raise MqbenchError(f"weights {path} fail their sha256 check (expected {weights.sha256[:16]}..., got "
                           f"{digest[:16]}...): the file is corrupt or not the published one")
    return ResolvedWeights(adapt_state_dict(load_state_dict(path), weights, path), digest, source,
                           {"path": str(path)})


def adapt_state_dict(obj: dict[str, Any], weights: CheckpointWeights, path: Path) -> dict[str, torch.Tensor]:
    """Take the state dict out of a checkpoint (``state_dict_key``) and rename key prefixes."""
    if weights.state_dict_key is not None:
        if weights.state_dict_key not in obj or not isinstance(obj[weights.state_dict_key], dict):
            raise MqbenchError(f"checkpoint {path} has no {weights.state_dict_key!r} entry; it holds {sorted(obj)[:5]}")
        obj = obj[weights.state_dict_key]
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise MqbenchError(f"checkpoint {path} entry {key!r} is a {type(value).__name__}, not a tensor")
        for old, new in weights.rename:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with one clear error for the first problem."""
    own = model.state_dict()
    # BatchNorm fills in num_batches_tracked, which checkpoints older than torch 0.4.1 lack.
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
        raise MqbenchError(f"{what} do not fit the model: {'; '.join(parts)}")
    for key, tensor in own.items():
        if key in state_dict and tuple(tensor.shape) != tuple(state_dict[key].shape):
            raise MqbenchError(f"{what} do not fit the model: {key!r} has shape {tuple(state_dict[key].shape)} "
                               f"in the checkpoint but {tuple(tensor.shape)} in the model")
    model.load_state_dict(state_dict, strict=True)


def download(url: str, sha256: str | None, reporter: Reporter = SILENT) -> Path:
    """Download ``url`` once into ``$MQBENCH_CACHE/downloads`` (torch.hub's downloader, which checks the
    sha256 prefix before moving the file into place). A wrong checksum leaves nothing behind."""
    if not sha256 or len(sha256) < 8:
        raise MqbenchError(f"refusing to download {url} without a sha256 (at least 8 hex digits) to verify it")
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    path = cache_dir() / "downloads" / f"{sha256[:16]}-{name}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    reporter.log(f"downloading {url}")
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=sha256.lower(), progress=False)
    except RuntimeError as exc:
        path.unlink(missing_ok=True)
        raise MqbenchError(f"download of {url} failed its sha256 check: {exc}") from None
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise MqbenchError(f"cannot download {url}: {exc}") from None
    return path


def _hub_download(weights: HubWeights) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - a dependency of datasets
        raise MqbenchError("hub weights need huggingface_hub (pip install huggingface_hub)") from exc
    try:
        return Path(hf_hub_download(weights.repo_id, weights.filename, revision=weights.revision,
                                    cache_dir=cache_dir() / "hub"))
    except Exception as exc:  # the hub client raises many types (offline, gated, missing file)
        raise MqbenchError(f"cannot fetch {weights.filename} from the hub repository {weights.repo_id}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def train_recipe(model: str, build_kwargs: dict[str, Any], dataset: str, train_limit: int | None,
                 config: TrainConfig) -> dict[str, Any]:
    """Everything that decides the weights a training run ends with (what :func:`train_to_file` names its file by).
    Options left unset (None) are left out, so a file's key stays the same when a later version adds options."""
    return {"model": model, "build_kwargs": build_kwargs, "dataset": dataset, "train_limit": train_limit,
            "train_config": {k: v for k, v in dataclasses.asdict(config).items() if v is not None}}


def recipe_file_name(recipe: dict[str, Any]) -> str:
    """``<model>-<dataset>-<key>.pt``, ``key`` hashing the recipe (:func:`train_recipe`)."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{recipe['model']}-{recipe['dataset']}-{key}.pt"


def _resolve_shipped(model: ModelSpec, weights: TrainedWeights, dataset: DatasetSpec) -> ResolvedWeights | None:
    """The weights mqbench ships for ``weights`` (``mqbench/models/shipped``: what ``mqbench train`` writes for the
    same recipe, verified against the sha256 in :data:`~mqbench.models.shipped.SHIPPED`), or None."""
    from mqbench.models.shipped import SHIPPED, SHIPPED_DIR

    name = recipe_file_name(train_recipe(model.name, dict(weights.build_kwargs), dataset.name, None, weights.train))
    if name not in SHIPPED:
        return None
    path = SHIPPED_DIR / name
    digest = sha256_file(path) if path.exists() else "missing"
    if digest != SHIPPED[name]:
        raise MqbenchError(f"the weights mqbench ships for {model.name}:{weights.name} ({path}) are {digest[:12]}..., "
                           f"not {SHIPPED[name][:12]}...: the installation is damaged; reinstall mqbench")
    meta = json.loads(path.with_suffix(".json").read_text())
    return ResolvedWeights(load_state_dict(path), digest, f"shipped:{name}", meta)


def _resolve_trained(model: ModelSpec, weights: TrainedWeights, dataset: DatasetSpec,
                     load_split: Callable[[str, str], Split], reporter: Reporter) -> ResolvedWeights:
    shipped = _resolve_shipped(model, weights, dataset)
    if shipped is not None:
        return shipped
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
    net: nn.Module = model.build(dataset.num_classes, **dict(weights.build_kwargs))
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


def train_to_file(model: ModelSpec, dataset: DatasetSpec, config: TrainConfig, out_dir: Path, *,
                  build_kwargs: dict[str, Any] | None = None, train_limit: int | None = None,
                  test_limit: int | None = None, time_budget_s: float | None = None, force: bool = False,
                  command: str = "", reporter: Reporter = SILENT) -> tuple[Path, dict[str, Any], bool]:
    """Train ``model`` on ``dataset``'s train split into ``out_dir``: ``<model>-<dataset>-<key>.pt`` (the state
    dict, float32) and a JSON sidecar beside it (sha256, the full training config, the command, test top-1 per
    epoch, provenance). ``key`` hashes everything that decides the weights, so a rerun of the same command finds
    the file (returned with ``False``: nothing trained) or resumes its checkpoint (``<name>.ckpt``, removed once
    the weights are written) after a kill. Returns (weights path, sidecar, whether it trained now)."""
    from mqbench import provenance

    build_kwargs = dict(build_kwargs or {})
    recipe = train_recipe(model.name, build_kwargs, dataset.name, train_limit, config)
    path = out_dir / recipe_file_name(recipe)
    sidecar_path, ckpt = path.with_suffix(".json"), path.with_suffix(".ckpt")
    if path.exists() and sidecar_path.exists() and not force:
        meta = json.loads(sidecar_path.read_text())
        actual = sha256_file(path)
        if actual != meta.get("sha256"):
            raise MqbenchError(f"{path} fails the sha256 in {sidecar_path.name} (got {actual[:12]}...): the file is "
                               "corrupt or was changed; delete both to retrain, or give --force")
        return path, meta, False
    if force and ckpt.exists():
        ckpt.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    net: nn.Module = model.build(dataset.num_classes, **build_kwargs)
    train_split = dataset.load_split("train", train_limit, "native", reporter)
    test_split = dataset.load_split("test", test_limit, "native", reporter)
    result = train(net, train_split, test_split, config, reporter, label=f"training {model.name}",
                   checkpoint=ckpt, time_budget_s=time_budget_s)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    data = buf.getvalue()
    meta = {"sha256": hashlib.sha256(data).hexdigest(), "file": path.name, **recipe, "test_limit": test_limit,
            "train_images": len(train_split), "test_images": len(test_split), "test_top1": result.test_top1,
            "epochs_done": result.epochs_done, "resumed_from_epoch": result.resumed_from_epoch,
            "stopped_by_time_budget": result.stopped_by_time_budget,
            "time_budget_s": time_budget_s, "train_seconds": round(result.seconds, 2), "history": result.history,
            "command": command, "provenance": provenance.collect()}
    atomic_write(path, data, overwrite=True)
    atomic_write(sidecar_path, (json.dumps(meta, indent=2) + "\n").encode(), overwrite=True)
    ckpt.unlink(missing_ok=True)
    return path, meta, True
