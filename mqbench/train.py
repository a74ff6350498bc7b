"""Training: the one training loop (used to train the quick suite's models on first use).

SGD with Nesterov momentum and a one-cycle cosine learning-rate schedule, horizontal-flip
augmentation, fixed seeds and a deterministic data order (the permutation comes from a generator
seeded with ``seed``), a progress bar with loss and accuracy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mqbench.data import Split
from mqbench.progress import SILENT, Reporter


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    flip: bool = True


@dataclass
class TrainResult:
    test_top1: float | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def evaluate_top1(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in split.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(split)


def train(model: nn.Module, train_split: Split, test_split: Split | None, config: TrainConfig,
          reporter: Reporter = SILENT, label: str = "training") -> TrainResult:
    """Train ``model`` in place; returns the test top-1 after the last epoch (None without a test split)."""
    if config.epochs <= 0:
        raise ValueError(f"epochs must be positive, got {config.epochs}")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # One-cycle (warm-up then cosine decay); it needs a few steps to have a warm-up phase at all.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps,
                                                 pct_start=max(0.25, 2 / total_steps))
             if total_steps >= 4 else None)
    history: list[dict[str, float]] = []
    test_top1: float | None = None
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(train_split), generator=g)
        loss_sum, seen, correct = 0.0, 0, 0
        for step in reporter.track(range(steps_per_epoch), f"{label} epoch {epoch + 1}/{config.epochs}",
                                   total=steps_per_epoch):
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
            x = train_split.normalize(train_split.images[idx])
            y = train_split.labels[idx]
            if config.flip:
                flip = torch.rand(len(idx), generator=g) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
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
    model.eval()
    return TrainResult(test_top1, time.perf_counter() - start, history)
