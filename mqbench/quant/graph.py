"""Graph utilities on torch.fx: tracing, BatchNorm folding and layer enumeration."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from mqbench.errors import MqbenchError
from mqbench.layers import ChannelClippedReLU


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace a copy of ``model`` (eval mode, in-place activations made out-of-place)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            setattr(m, "inplace", False)  # noqa: B010 (mypy cannot type the generic attribute)
    try:
        return fx.GraphModule(model, _LayerTracer().trace(model), type(model).__name__)
    except Exception as exc:  # fx raises many types; the user needs the model name and the cause.
        raise MqbenchError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                           "quantization needs a traceable model (no data-dependent control flow)") from exc


class _LayerTracer(fx.Tracer):
    """Keeps every conv and linear (subclasses too, such as Conv2dSame) a leaf, so each is one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, ChannelClippedReLU)) or super().is_leaf_module(m, module_qualified_name)


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BatchNorm that directly follows a conv/linear (sole user) into its weights, in place."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer, bn = modules[src.target], modules[node.target]
        if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fused: nn.Module = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        _set_submodule(gm, str(src.target), fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(str(node.target))
        modules = dict(gm.named_modules())
    gm.graph.lint()
    gm.recompile()
    return gm


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


@dataclass(frozen=True)
class LayerInfo:
    """One weighted layer: its module name, kind (conv, depthwise, pointwise, linear) and shape."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise"
        if module.kernel_size == (1, 1):
            return "pointwise"
        return "conv"
    raise TypeError(f"not a weighted layer: {type(module).__name__}")


def weighted_layers(gm: fx.GraphModule) -> list[LayerInfo]:
    """Conv and linear layers in execution (graph) order."""
    modules = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.append(LayerInfo(str(node.target), layer_kind(m), tuple(m.weight.shape)))
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["LayerInfo", "count_parameters", "fold_batchnorm", "layer_kind", "trace", "weighted_layers"]
