"""``null``: a backend whose deployed model does no work, to measure the harness's own overhead.

Like MLPerf loadgen's null system under test: the "deployed" model returns precomputed logits (zeros,
allocated once at the largest batch seen, a slice of them per call), so a cell's ``evaluate_deployed``
time is what the harness itself spends (batching the decoded images, the evaluation loop, collecting
logits) and its ``latency`` figures are the cost of one call through the harness. Compare them with an
int8 backend's cell on the same model and data: ``mqbench run --backend null --backend ort-qdq ...``.
Its accuracy is that of a constant prediction (class 0), by design. Quantizers are placed and calibrated
as for the simulated runtime, so every pipeline runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Artifact, Deployed, Runtime
from mqbench.registry import Registry


def output_classes(model: nn.Module) -> int:
    """The number of logits ``model`` returns: the width of its last linear layer (or last conv, for a
    fully convolutional classifier)."""
    last: nn.Module | None = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    if isinstance(last, nn.Linear):
        return last.out_features
    if isinstance(last, nn.Conv2d):
        return last.out_channels
    raise ValueError(f"the null backend needs the model's number of classes: {type(model).__name__} has no "
                     "linear or conv layer to read it from")


class PrecomputedLogits:
    """Returns a slice of a zero tensor of ``(batch, classes)`` logits for each call."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.logits = torch.zeros(0, classes)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) > len(self.logits):
            self.logits = torch.zeros(len(inputs), self.classes)
        return self.logits[: len(inputs)]

    def size_bytes(self) -> int:
        return 0


class Null(Runtime):
    name = "null"
    description = "no computation: returns precomputed logits, to measure the harness's own overhead"

    def load(self, artifact: Artifact) -> Deployed:
        return PrecomputedLogits(output_classes(artifact.payload))  # the float model or the QuantSim

    def info(self) -> dict[str, Any]:
        # harness_only: the leaderboard leaves this row out of the "best of the scheme" comparisons.
        return {"runtime": None, "harness_only": True, "note": "precomputed logits (harness overhead)"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(Null())
