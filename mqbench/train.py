"""Training: the one training loop (the quick suite's models on first use, and ``mqbench train``).

SGD with Nesterov momentum and a one-cycle cosine learning-rate schedule, horizontal-flip and (optional)
random-crop augmentation, optional label smoothing, fixed seeds and a deterministic data order (the
permutation and the augmentation come from a generator seeded with ``seed``), a progress bar with loss and
accuracy.

With ``checkpoint``, the whole training state (weights, optimizer, schedule, both random generators, history)
is written atomically after every epoch, and a later call with the same config resumes from it: the result
is bit for bit that of an uninterrupted run on the same machine and thread count. ``time_budget_s`` stops
at the end of the epoch after which another one would not fit (the schedule is not shortened: the model is
then trained less far, and the result says so).
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mqbench.data import Split
from mqbench.errors import MqbenchError
from mqbench.fsutil import atomic_write
from mqbench.progress import SILENT, Reporter
from mqbench.quant.graph import layer_kind

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    flip: bool = True
    crop_padding: int = 0  # random crop of the original size after zero-padding each side (4 for CIFAR); 0: none
    label_smoothing: float = 0.0
    # Train in the channels-last memory format: 1.4x (MobileNetV1) to 1.7x (MobileNetV2) faster steps on x86 CPUs
    # (oneDNN's depthwise kernels); off by default because it changes the float rounding, so the quick models'
    # weights would change with it.
    channels_last: bool = False
    # Weight decay of the depthwise convolutions' weights (None: ``weight_decay``). TensorFlow's MobileNetV1 trained
    # them without (slim's ``regularize_depthwise=False``); Sheng et al. 2018 (section 3) add it back as one of the
    # changes of their quantization-friendly separable convolution.
    depthwise_weight_decay: float | None = None
    # Knowledge distillation (Hinton et al. 2015), used when ``train`` gets a ``teacher``: the loss is
    # ``(1 - w) * CE(labels) + w * T**2 * KL(softmax(teacher / T) || softmax(student / T))`` with ``w`` =
    # ``distill_weight`` and ``T`` = ``distill_temperature``; the teacher sees the same augmented batch.
    distill_weight: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be zero or positive, got {self.crop_padding}")
        if self.depthwise_weight_decay is not None and self.depthwise_weight_decay < 0:
            raise ValueError(f"depthwise_weight_decay must be zero or positive, got {self.depthwise_weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")


@dataclass
class TrainResult:
    test_top1: float | None
    seconds: float  # training time over every run that contributed (resumed runs included)
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_done: int = 0
    resumed_from_epoch: int = 0  # 0: started from scratch
    stopped_by_time_budget: bool = False


def is_depthwise(module: nn.Module) -> bool:

    return isinstance(module, nn.Conv2d) and layer_kind(module) == "depthwise"


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One group with every parameter, or, with ``depthwise_weight_decay`` set, the depthwise convolution weights in
    a group of their own with that weight decay."""
    if config.depthwise_weight_decay is None:
        return [{"params": list(model.parameters())}]
    depthwise = [m.weight for m in model.modules() if is_depthwise(m)]
    ids = {id(w) for w in depthwise}
    return [{"params": [q for q in model.parameters() if id(q) not in ids]},
            {"params": depthwise, "weight_decay": config.depthwise_weight_decay}]


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each uint8 image (N, C, H, W) cropped back to H x W at a random offset after zero-padding each side."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, int(dy):int(dy) + h, int(dx):int(dx) + w]
                        for i, (dy, dx) in enumerate(offsets)])


def evaluate_top1(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in split.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(split)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, weight: float,
                      temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - weight) * CE(logits, labels) + weight * T**2 * KL(softmax(teacher / T) || softmax(logits / T))``
    (Hinton et al. 2015; the ``T**2`` keeps the soft term's gradient scale independent of ``T``)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if weight >= 1.0:
        return soft
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return (1.0 - weight) * hard + weight * soft


def train(model: nn.Module, train_split: Split, test_split: Split | None, config: TrainConfig,
          reporter: Reporter = SILENT, label: str = "training", checkpoint: Path | None = None,
          time_budget_s: float | None = None, param_groups: list[dict[str, Any]] | None = None,
          teacher: nn.Module | None = None) -> TrainResult:
    """Train ``model`` in place; returns the test top-1 after the last epoch (None without a test split).

    ``checkpoint``: the file the training state is written to after each epoch and resumed from when it exists
    (it is left in place; the caller removes it once the result is stored). ``param_groups``: the optimizer's
    parameter groups, each with optional ``lr`` (its peak learning rate) and ``weight_decay`` (default: every
    parameter in one group, :func:`parameter_groups`). ``teacher``: a model distilled into ``model`` (in eval
    mode, not trained) when ``config.distill_weight`` is above 0."""
    if (teacher is not None) != (config.distill_weight > 0):
        raise ValueError("distillation needs both a teacher and a distill_weight above 0"
                         f" (teacher given: {teacher is not None}, distill_weight {config.distill_weight})")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s}")
    g = torch.Generator().manual_seed(config.seed)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented; the stubs lack it
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if teacher is not None:
        teacher.eval()
    groups = param_groups if param_groups is not None else parameter_groups(model, config)
    opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                          nesterov=True)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # One-cycle (warm-up then cosine decay); it needs a few steps to have a warm-up phase at all.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g.get("lr", config.lr) for g in groups],
                                                 total_steps=total_steps,
                                                 pct_start=max(0.25, 2 / total_steps))
             if total_steps >= 4 else None)
    history: list[dict[str, float]] = []
    test_top1: float | None = None
    first_epoch, earlier_seconds = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, config)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        first_epoch, earlier_seconds = int(state["epoch"]), float(state["seconds"])
        test_top1 = history[-1].get("test_top1") if history else None
        reporter.log(f"{label}: resuming from {checkpoint} after epoch {first_epoch}/{config.epochs}")
    start = time.perf_counter()
    stopped = False
    for epoch in range(first_epoch, config.epochs):
        epoch_start = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train_split), generator=g)
        loss_sum, seen, correct = 0.0, 0, 0
        for step in reporter.track(range(steps_per_epoch), f"{label} epoch {epoch + 1}/{config.epochs}",
                                   total=steps_per_epoch):
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
            images = train_split.images[idx]
            if config.crop_padding:
                images = random_crop(images, config.crop_padding, g)
            x = train_split.normalize(images)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_split.labels[idx]
            if config.flip:
                flip = torch.rand(len(idx), generator=g) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = distillation_loss(logits, teacher_logits, y, config.distill_weight, config.distill_temperature,
                                         config.label_smoothing)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            if step % 10 == 0:
                reporter.set_description(f"{label} epoch {epoch + 1}/{config.epochs} "
                                         f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen}
        if test_split is not None:
            test_top1 = evaluate_top1(model, test_split)
            entry["test_top1"] = test_top1
        history.append(entry)
        elapsed = earlier_seconds + time.perf_counter() - start
        reporter.log(f"{label} epoch {epoch + 1}/{config.epochs}: train loss {entry['train_loss']:.3f}, train top-1 "
                     f"{entry['train_top1']:.4f}" + (f", test top-1 {test_top1:.4f}" if test_split is not None else "")
                     + f" ({time.perf_counter() - epoch_start:.0f} s; {elapsed:.0f} s in all)")
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "epoch": epoch + 1,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "generator": g.get_state(),
                "torch_rng": torch.get_rng_state(), "history": history, "seconds": elapsed})
        if (time_budget_s is not None and epoch + 1 < config.epochs
                and elapsed + (time.perf_counter() - epoch_start) > time_budget_s):
            reporter.log(f"{label}: stopping after epoch {epoch + 1}/{config.epochs}: another epoch would exceed the "
                         f"time budget of {time_budget_s:g} s")
            stopped = True
            break
    model.eval()
    if config.channels_last:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        if teacher is not None:
            teacher.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return TrainResult(test_top1, earlier_seconds + time.perf_counter() - start, history,
                       len(history), first_epoch, stopped)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the training state atomically (a kill leaves the previous checkpoint or the new one, never half)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue(), overwrite=True)


def load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """A training state written by :func:`save_checkpoint` for ``config``; anything else is a one-line error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        first_line = (str(exc).splitlines() or ["(no message)"])[0]
        raise MqbenchError(f"cannot read the training checkpoint {path} ({type(exc).__name__}: {first_line}); "
                           "delete it to start the training over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MqbenchError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT}; delete it to start "
                           "the training over")
    mine = dataclasses.asdict(config)
    theirs = state.get("config") or {}
    # An option the checkpoint predates counts as set to its default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    differ = [k for k, v in mine.items() if theirs.get(k, defaults[k]) != v]
    if differ:
        diff = ", ".join(f"{k}={theirs.get(k, defaults[k])!r} there, {mine[k]!r} here" for k in differ)
        raise MqbenchError(f"the training checkpoint {path} was written for another training config ({diff}); "
                           "delete it to start over, or train into another folder")
    return state
