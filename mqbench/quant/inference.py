"""A calibrated QuantSim prepared for evaluation: the same logits, bit for bit, for less work.

:func:`for_inference` copies the QuantSim's graph and changes two things, each exact:

* **Weights fake-quantized once.** Every forward pass of a QuantSim fake-quantizes each layer's weight and
  quantizes its bias again; once qparams are fixed the results are the same tensors every time, so the copy's
  layers hold them (the same quantizer functions computed them, on the same inputs).
* **Clamps the next quantizer makes anyway dropped.** A ReLU, ReLU6 or scalar clamp whose only consumer is a
  per-tensor activation quantizer with a code range inside the clamp's bounds changes no code: what it cuts
  off, the quantizer's own saturation maps to the same end code. It is dropped when, in float32 as the
  quantizer computes it, ``lower * (1 / scale)`` rounds to at most the lowest code and ``upper * (1 / scale)``
  to at least the highest (strictly inside half a step, so no rounding tie is involved). A minmax-calibrated
  ReLU6 output (range ``[0, max]``, ``max <= 6``) always qualifies. NaN passes both ways.

``tests/unit/test_inference.py`` checks the logits equal the QuantSim's on every quick model, per tensor and
per channel, after cross-layer equalization (per-channel clips, kept) and with learned quantizers.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from mqbench.layers import tf_same_pad
from mqbench.quant.qsim import (
    QuantConv2d,
    Quantizer,
    QuantLinear,
    QuantSim,
    activation_bounds,
    is_activation,
    quantized_bias,
)


class FrozenLayer(nn.Module):
    """A QuantConv2d or QuantLinear with its fake-quantized weight and quantized bias computed once."""

    def __init__(self, layer: QuantConv2d | QuantLinear) -> None:
        super().__init__()
        with torch.no_grad():
            weight = layer.weight_quantizer(layer.weight).detach().clone()
            bias = quantized_bias(layer.bias, layer.weight_quantizer, layer.input_quantizer)
        self.layer = layer
        self.weight: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, QuantConv2d):
            if layer.tf_same:
                x = tf_same_pad(x, layer.kernel_size, layer.stride, layer.dilation)  # type: ignore[arg-type]
            return layer._conv_forward(x, self.weight, self.bias)
        return nn.functional.linear(x, self.weight, self.bias)


def for_inference(qsim: QuantSim) -> fx.GraphModule:
    """A copy of the calibrated ``qsim``'s graph computing its logits bit for bit with less work (module docstring)."""
    frozen = {name: FrozenLayer(m) for name, m in qsim.model.named_modules() if type(m) in (QuantConv2d, QuantLinear)}
    gm = copy.deepcopy(qsim.model)
    for name, layer in frozen.items():
        parent, _, attr = name.rpartition(".")
        layer.layer = gm.get_submodule(name)  # type: ignore[assignment]
        setattr(gm.get_submodule(parent) if parent else gm, attr, layer)
    drop_redundant_clamps(gm)
    return gm


def drop_redundant_clamps(gm: fx.GraphModule) -> int:
    """Drop from ``gm`` the activations whose clamping the quantizer after them makes anyway (module docstring);
    how many."""
    modules = dict(gm.named_modules())
    dropped = 0
    for node in list(gm.graph.nodes):
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            continue  # an in-place activation would also have clamped what its input's other users read
        quantizer = modules.get(str(users[0].target))
        if not isinstance(quantizer, Quantizer) or not _clamp_is_redundant(node, modules, quantizer):
            continue
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        dropped += 1
    if dropped:
        gm.graph.lint()
        gm.recompile()
    return dropped


def _clamp_is_redundant(node: fx.Node, modules: dict[str, nn.Module], quantizer: Quantizer) -> bool:
    if (not is_activation(node, modules) or quantizer.kind != "activation" or quantizer.mode != "quantize"
            or quantizer.learned is not None or quantizer.scale is None or quantizer.zero_point is None
            or quantizer.scale.dim() != 0):
        return False
    try:
        lower, upper = activation_bounds(node, modules)
    except ValueError:
        return False
    if not all(b is None or isinstance(b, (int, float)) for b in (lower, upper)):
        return False  # per-channel bounds (a clip from cross-layer equalization) or a tensor
    inverse = 1.0 / quantizer.scale.float()  # as fake_quantize_per_tensor_inference computes it
    zp = int(quantizer.zero_point)
    lo_code, hi_code = quantizer.saturate_min - zp, quantizer.saturate_max - zp
    if lower is not None and not float(torch.tensor(float(lower)) * inverse) < lo_code + 0.5:
        return False
    return upper is None or float(torch.tensor(float(upper)) * inverse) > hi_code - 0.5


__all__ = ["FrozenLayer", "drop_redundant_clamps", "for_inference"]
