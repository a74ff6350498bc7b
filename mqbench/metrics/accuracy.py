"""Top-1 / top-5 accuracy with 95% Wilson score intervals (the built-in ``accuracy`` metric), and the
per-image top-1 outcomes (packed bits) that paired tests between rows need (:func:`mcnemar_p`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mqbench import hookimpl
from mqbench.metrics import Evaluation, Metric
from mqbench.registry import Registry

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def label_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Int64 (N,): the label's rank among the classes (0 = predicted), equal logits ordered by class index,
    the same rule as ``argmax`` (first maximal index). Quantized logits tie often (two classes on the same
    output code), so a rule that ``topk`` leaves to the implementation would make a model's top-1 disagree
    with its own predictions."""
    label_logit = logits.gather(1, labels.view(-1, 1))
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1)
    ahead = (logits > label_logit) | ((logits == label_logit) & (classes < labels.view(-1, 1)))
    return ahead.sum(dim=1)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,): whether the label is among the ``k`` highest logits (ties by class index, as
    :func:`label_rank`; for k=1 exactly ``logits.argmax(1) == labels``)."""
    return label_rank(logits, labels) < k


def pack_bits(correct: torch.Tensor) -> str:
    """Boolean (N,) outcomes as a hex string, image 0 in the most significant bit of the first byte."""
    bits = correct.to(torch.bool).tolist()
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= 0x80 >> (i % 8)
    return out.hex()


def unpack_bits(text: str, n: int) -> list[bool]:
    """Inverse of :func:`pack_bits` for ``n`` images."""
    data = bytes.fromhex(text)
    if len(data) != (n + 7) // 8:
        raise ValueError(f"{len(data)} bytes of outcomes do not describe {n} images")
    return [bool(data[i // 8] & (0x80 >> (i % 8))) for i in range(n)]


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test (binomial on the discordant pairs) of two classifiers' per-image
    outcomes on the same images: the probability, if both were equally accurate, of a split of the
    discordant images at least as uneven as the one seen. 1.0 when no image is discordant."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same images, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def agreement(reference: torch.Tensor, deployed: torch.Tensor) -> dict[str, Any]:
    """How well one model's logits (the simulation) predict another's (the deployed runtime) on the same
    images: the share of images with the same top-1 class, and the logit SQNR in dB
    (``10 log10(sum ref^2 / sum (ref - deployed)^2)``; None when the logits are identical or all zero)."""
    if reference.shape != deployed.shape:
        raise ValueError(f"logits of shapes {tuple(reference.shape)} and {tuple(deployed.shape)} cannot be compared")
    ref, dep = reference.double(), deployed.double()
    noise = float(((ref - dep) ** 2).sum())
    signal = float((ref ** 2).sum())
    sqnr = 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else None
    same = int((reference.argmax(1) == deployed.argmax(1)).sum())
    return {"top1_agreement": same / max(1, reference.shape[0]), "images": int(reference.shape[0]),
            "logit_sqnr_db": sqnr, "max_abs_logit_diff": float((ref - dep).abs().max()) if ref.numel() else 0.0}


class Accuracy(Metric):
    name = "accuracy"
    description = "top-1 and top-5 accuracy with 95% Wilson confidence intervals"

    def compute(self, evaluation: Evaluation) -> dict[str, Any]:
        n = int(evaluation.labels.numel())
        out: dict[str, Any] = {"n": n}
        for k in (1, 5):
            hits = int(topk_correct(evaluation.logits, evaluation.labels, k).sum())
            lo, hi = wilson_interval(hits, n)
            out[f"top{k}"] = {"value": hits / n if n else float("nan"), "ci95": [lo, hi], "correct": hits}
        out["top1_outcomes"] = pack_bits(topk_correct(evaluation.logits, evaluation.labels, 1))
        return out


@hookimpl
def mqbench_register_metrics(register: Registry[Metric]) -> None:
    register(Accuracy())
