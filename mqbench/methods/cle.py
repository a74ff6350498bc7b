"""``cle``: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", Section 4.1).

For two consecutive layers ``y = W2 f(W1 x + b1) + b2`` with a positively homogeneous ``f``
(ReLU, or nothing), scaling output channel ``i`` of layer 1 by ``1 / s_i`` and input channel ``i`` of
layer 2 by ``s_i`` leaves the function unchanged. Choosing ``s_i = sqrt(r1_i * r2_i) / r2_i``, where
``r1_i`` is the range (max |w|) of output channel ``i`` of ``W1`` and ``r2_i`` that of input channel ``i``
of ``W2``, makes both ranges ``sqrt(r1_i r2_i)``: the per-channel ranges of depthwise layers, which
per-tensor quantization cannot serve, are evened out against their neighbours. Pairs are
conv -> (ReLU) -> conv with no other consumer in between, including depthwise -> pointwise and
pointwise -> depthwise; chains are equalized by sweeping all pairs until the scales settle. A dead
output channel of layer 1 (all-zero weights: its output is the constant ``f(b1_i)``) is scaled so its
consumer's range matches the median equalized range (exact, since ``f(b / s) = f(b) / s``).

ReLU6 is not positively homogeneous (it clips at 6), so, as in the paper, every ReLU6 is replaced
by ReLU first; the number replaced is recorded in the cell's record (``method_notes``). BatchNorm is
folded before equalization. High-bias absorption (Section 4.1.2) needs the BN statistics, which
folded checkpoints no longer carry; it is not applied (said in the record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from mqbench import hookimpl
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.quant.graph import fold_batchnorm, trace
from mqbench.registry import Registry


@dataclass(frozen=True)
class CLEConfig(MethodConfig):
    version: ClassVar[int] = 2  # 2: dead channels are rescaled too
    max_sweeps: int = 20  # sweeps over all pairs; the paper iterates until convergence
    tolerance: float = 1e-8  # stop when no scale differs from 1 by more than this


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    return node.op == "call_function" and node.target in (torch.relu, nn.functional.relu)


def find_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """(layer 1, layer 2) conv pairs joined directly or through one ReLU, with no other consumer."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Conv2d):
            continue
        nxt = node
        if len(nxt.users) != 1:
            continue
        nxt = next(iter(nxt.users))
        if _is_relu(nxt, modules):
            if len(nxt.users) != 1:
                continue
            nxt = next(iter(nxt.users))
        second = modules.get(str(nxt.target)) if nxt.op == "call_module" else None
        first = modules[str(node.target)]
        assert isinstance(first, nn.Conv2d)
        if not isinstance(second, nn.Conv2d):
            continue
        depthwise = second.groups == second.in_channels == second.out_channels
        if second.groups != 1 and not depthwise:
            continue
        if first.groups != 1 and not first.groups == first.in_channels == first.out_channels:
            continue
        pairs.append((str(node.target), str(nxt.target)))
    return pairs


def equalize_pair(first: nn.Conv2d, second: nn.Conv2d) -> float:
    """Rescale one pair in place; returns max |s - 1|."""
    w1, w2 = first.weight.data, second.weight.data
    r1 = w1.abs().flatten(1).amax(1)
    depthwise = second.groups == second.in_channels and second.groups > 1
    r2 = w2.abs().flatten(1).amax(1) if depthwise else w2.abs().transpose(0, 1).flatten(1).amax(1)
    live = (r1 > 0) & (r2 > 0)
    s = torch.where(live, torch.sqrt(r1 * r2) / r2.clamp_min(1e-30), torch.ones_like(r1))
    # A dead channel of layer 1 (all-zero weights) outputs the constant f(b); f(b / s) = f(b) / s for any
    # s > 0, so its consumer's range can be brought to the typical equalized range. Without this, one
    # dead stem channel of MobileNetV2 tf2ptq leaves a depthwise range of 56 against about 2 elsewhere.
    dead = (r1 == 0) & (r2 > 0)
    if bool(dead.any()) and bool(live.any()):
        target = torch.sqrt(r1 * r2)[live].median()
        s = torch.where(dead, target / r2.clamp_min(1e-30), s)
    first.weight.data = w1 / s.view(-1, 1, 1, 1)
    if first.bias is not None:
        first.bias.data = first.bias.data / s
    shape = (-1, 1, 1, 1) if depthwise else (1, -1, 1, 1)
    second.weight.data = w2 * s.view(shape)
    return float((s - 1).abs().max())


def replace_relu6(gm: fx.GraphModule) -> int:
    """Replace ReLU6 modules (and Hardtanh(0, 6)) by ReLU; returns how many."""
    count = 0
    for name, m in list(gm.named_modules()):
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0):
            parent_name, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, nn.ReLU())
            count += 1
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is nn.functional.relu6:
            node.target = nn.functional.relu
            count += 1
    gm.recompile()
    return count


def cross_layer_equalize(model: nn.Module, config: CLEConfig = CLEConfig()) -> tuple[fx.GraphModule, dict[str, object]]:
    """BN-folded, ReLU6->ReLU, equalized copy of ``model`` and what was done."""
    gm = fold_batchnorm(trace(model))
    replaced = replace_relu6(gm)
    pairs = find_pairs(gm)
    sweeps = 0
    for sweeps in range(1, config.max_sweeps + 1):  # noqa: B007 (the count is reported)
        change = 0.0
        for a, b in pairs:
            first, second = gm.get_submodule(a), gm.get_submodule(b)
            assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
            change = max(change, equalize_pair(first, second))
        if change <= config.tolerance:
            break
    return gm, {"relu6_replaced_by_relu": replaced, "pairs": len(pairs), "sweeps": sweeps,
                "high_bias_absorption": "not applied (needs BN statistics; checkpoints are BN-folded)"}


class CLE(Method):
    name = "cle"
    stage = "transform"
    description = "cross-layer equalization (Nagel et al. 2019), ReLU6 -> ReLU"
    config_type = CLEConfig

    def transform(self, model: nn.Module, config: MethodConfig, ctx: StepContext) -> nn.Module:
        assert isinstance(config, CLEConfig)
        gm, notes = cross_layer_equalize(model, config)
        ctx.notes[self.name] = notes
        return gm


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(CLE())
