"""``cle``: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", Section 4.1).

For two consecutive layers ``y = W2 f(W1 x + b1) + b2`` with a positively homogeneous ``f``
(ReLU, or nothing), scaling output channel ``i`` of layer 1 by ``1 / s_i`` and input channel ``i`` of
layer 2 by ``s_i`` leaves the function unchanged. Choosing ``s_i = sqrt(r1_i * r2_i) / r2_i``, where
``r1_i`` is the range (max |w|) of output channel ``i`` of ``W1`` and ``r2_i`` that of input channel ``i``
of ``W2``, makes both ranges ``sqrt(r1_i r2_i)``: the per-channel ranges of depthwise layers, which
per-tensor quantization cannot serve, are evened out against their neighbours. Pairs are
conv -> (activation) -> conv with no other consumer in between, including depthwise -> pointwise and
pointwise -> depthwise; chains are equalized by sweeping all pairs until the scales settle. A dead
output channel of layer 1 (all-zero weights: its output is the constant ``f(b1_i)``) is scaled so its
consumer's range matches the median equalized range (exact, since ``f(b / s) = f(b) / s``).

ReLU6 is not positively homogeneous (it clips at 6). ``relu6="clip"`` (the default) keeps the network's
function exactly: each ReLU6 between two convs becomes a per-channel clipped ReLU
(:class:`~mqbench.layers.ChannelClippedReLU`, ``min(relu(x), u_i)``) whose bound is rescaled
with its channel (``u_i = 6 / s_i``), since ``relu6(x) / s = min(relu(x / s), 6 / s)``.
``relu6="relu"`` replaces every ReLU6 by ReLU, as the paper does; on MobileNetV2 tf2ptq that alone
costs the float model 5 points (0.790 -> 0.739 top-1 on val-1300), so it is not the default. What was
replaced is recorded in the cell's record (``method_notes``). BatchNorm is folded first.

High-bias absorption (Section 4.1.2, ``absorb=True``, the default): equalization can leave channels
with large biases, which widen activation ranges. If a channel's pre-activation ``x_i`` never falls
below ``c_i >= 0``, then ``relu(x_i) = relu(x_i - c_i) + c_i``, so ``c_i`` is subtracted from layer 1's
bias (and from a clip's bound) and ``W2 c`` added to layer 2's bias. The paper estimates ``c_i =
max(0, beta_i - 3 gamma_i)`` from BatchNorm; the shared checkpoints have BN folded (identity BN), so
``c_i`` is measured instead: the smallest pre-activation of channel ``i`` over ``max_images`` calibration
images (the transform reads them from the step context). The change is exact wherever that bound
holds; it is applied only where layer 2 has no padding (padded borders would see ``W2 c`` too), which on
MobileNets means depthwise -> pointwise pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from mqbench import hookimpl
from mqbench.layers import ChannelClippedReLU, Conv2dSame
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.quant.graph import fold_batchnorm, trace
from mqbench.registry import Registry


@dataclass(frozen=True)
class CLEConfig(MethodConfig):
    version: ClassVar[int] = 4  # 2: dead channels are rescaled too; 3: relu6 handling; 4: high-bias absorption
    max_sweeps: int = 20  # sweeps over all pairs; the paper iterates until convergence
    tolerance: float = 1e-8  # stop when no scale differs from 1 by more than this
    relu6: str = "clip"  # "clip": exact per-channel clipped ReLU; "relu": replace by ReLU (the paper)
    absorb: bool = True  # high-bias absorption (needs calibration images)
    max_images: int = 64  # calibration images measuring the pre-activation minima (64: about 2 s on MobileNetV2)

    def __post_init__(self) -> None:
        if self.relu6 not in ("clip", "relu"):
            raise ValueError(f"relu6 must be 'clip' or 'relu', got {self.relu6!r}")
        if self.max_images < 1:
            raise ValueError("max_images must be >= 1")


def _is_scalable_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """ReLU (homogeneous) or a per-channel clipped ReLU (its bounds rescale with the channel)."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), (nn.ReLU, ChannelClippedReLU))
    return node.op == "call_function" and node.target in (torch.relu, nn.functional.relu)


Pair = tuple[str, str | None, str]


def find_pairs(gm: fx.GraphModule) -> list[Pair]:
    """(layer 1, activation module or None, layer 2): conv pairs joined directly or through one ReLU or
    per-channel clipped ReLU, with no other consumer."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Conv2d):
            continue
        nxt = node
        if len(nxt.users) != 1:
            continue
        nxt = next(iter(nxt.users))
        act: str | None = None
        if _is_scalable_activation(nxt, modules):
            if len(nxt.users) != 1:
                continue
            if nxt.op == "call_module" and isinstance(modules.get(str(nxt.target)), ChannelClippedReLU):
                act = str(nxt.target)
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
        pairs.append((str(node.target), act, str(nxt.target)))
    return pairs


def equalize_pair(first: nn.Conv2d, second: nn.Conv2d, clip: ChannelClippedReLU | None = None) -> float:
    """Rescale one pair (and the bounds of a clipped ReLU between them) in place; returns max |s - 1|."""
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
    if clip is not None:
        clip.upper = clip.upper / s
    shape = (-1, 1, 1, 1) if depthwise else (1, -1, 1, 1)
    second.weight.data = w2 * s.view(shape)
    return float((s - 1).abs().max())


def _is_relu6(m: nn.Module | None) -> bool:
    return isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0)


def replace_relu6(gm: fx.GraphModule) -> int:
    """Replace ReLU6 modules (and Hardtanh(0, 6)) by ReLU; returns how many."""
    count = 0
    for name, m in list(gm.named_modules()):
        if _is_relu6(m):
            parent_name, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, nn.ReLU())
            count += 1
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is nn.functional.relu6:
            node.target = nn.functional.relu
            count += 1
    gm.recompile()
    return count


def clip_relu6(gm: fx.GraphModule) -> int:
    """Turn each ReLU6 module applied directly to a conv's output into a per-channel clipped ReLU
    (bounds 6, the same function) that equalization can rescale; returns how many."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_relu6(modules.get(str(node.target))):
            continue
        src = node.args[0] if node.args else None
        conv = modules.get(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            continue
        target = f"cle_clip_{count}"
        gm.add_module(target, ChannelClippedReLU(conv.out_channels))
        node.target = target
        count += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return count


def absorb_high_biases(gm: fx.GraphModule, pairs: list[Pair], images: torch.Tensor, batch_size: int = 64) -> dict[str, object]:
    """High-bias absorption on measured pre-activation minima (see the module docstring), in place."""
    modules = dict(gm.named_modules())
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    usable: list[Pair] = []
    for a, act, b in pairs:
        second = modules[b]
        assert isinstance(second, nn.Conv2d)
        user = next(iter(nodes[a].users))
        if not _is_scalable_activation(user, modules) or isinstance(second, Conv2dSame):
            continue
        if any(p != 0 for p in second.padding) or second.padding_mode != "zeros":
            continue
        usable.append((a, act, b))
    minima: dict[str, torch.Tensor] = {}

    def record(name: str, out: torch.Tensor) -> None:
        low = out.transpose(0, 1).flatten(1).amin(1)
        minima[name] = torch.minimum(minima[name], low) if name in minima else low

    handles = [modules[a].register_forward_hook(lambda m, i, o, a=a: record(a, o)) for a, _, _ in usable]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                gm(images[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
    absorbed, total = 0, 0.0
    for a, act, b in usable:
        first, second = modules[a], modules[b]
        assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
        c = minima[a].clamp_min(0)
        clip = modules[act] if act else None
        if isinstance(clip, ChannelClippedReLU):
            c = torch.minimum(c, clip.upper)  # a channel always at its clip stays exact with c = bound
            clip.upper = clip.upper - c
        if first.bias is None:
            first.bias = nn.Parameter(torch.zeros(first.out_channels))
        first.bias.data -= c
        w2 = second.weight.data
        shift = w2.sum((1, 2, 3)) * c if second.groups > 1 else w2.sum((2, 3)) @ c
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros(second.out_channels))
        second.bias.data += shift
        absorbed += int((c > 0).sum())
        total += float(c.sum())
    return {"high_bias_absorption": {"pairs": len(usable), "channels": absorbed,
                                     "mean_absorbed": round(total / max(1, absorbed), 6),
                                     "images": len(images)}}


def cross_layer_equalize(model: nn.Module, config: CLEConfig = CLEConfig(),
                         images: torch.Tensor | None = None) -> tuple[fx.GraphModule, dict[str, object]]:
    """BN-folded, equalized copy of ``model`` and what was done; ``images`` (normalised calibration
    inputs) are needed when ``config.absorb``."""
    gm = fold_batchnorm(trace(model))
    if config.relu6 == "relu":
        done = {"relu6_replaced_by_relu": replace_relu6(gm)}
    else:
        done = {"relu6_to_per_channel_clip": clip_relu6(gm), "relu6_replaced_by_relu": 0}
    pairs = find_pairs(gm)
    sweeps = 0
    for sweeps in range(1, config.max_sweeps + 1):  # noqa: B007 (the count is reported)
        change = 0.0
        for a, act, b in pairs:
            first, second = gm.get_submodule(a), gm.get_submodule(b)
            clip = gm.get_submodule(act) if act else None
            assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
            assert clip is None or isinstance(clip, ChannelClippedReLU)
            change = max(change, equalize_pair(first, second, clip))
        if change <= config.tolerance:
            break
    notes: dict[str, object] = {**done, "pairs": len(pairs), "sweeps": sweeps}
    if config.absorb:
        if images is None:
            raise ValueError("cle's high-bias absorption measures pre-activations on calibration images, and none "
                             "were given; pass absorb=false for data-free equalization")
        notes.update(absorb_high_biases(gm, pairs, images))
    else:
        notes["high_bias_absorption"] = "off (absorb=false)"
    return gm, notes


class CLE(Method):
    name = "cle"
    stage = "transform"
    description = "cross-layer equalization (Nagel et al. 2019); ReLU6 kept exact as a per-channel clip"
    config_type = CLEConfig

    def transform(self, model: nn.Module, config: MethodConfig, ctx: StepContext) -> nn.Module:
        assert isinstance(config, CLEConfig)
        images = None
        if config.absorb:
            if ctx.calib is None:
                raise ValueError("cle's high-bias absorption needs calibration images in the step context; "
                                 "pass absorb=false for data-free equalization")
            images = ctx.calib.normalize(ctx.calib.images[: config.max_images])
        gm, notes = cross_layer_equalize(model, config, images)
        ctx.notes[self.name] = notes
        return gm


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(CLE())
