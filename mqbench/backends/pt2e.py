"""The calibrated QuantSim written as the graph PyTorch's PT2E flow leaves after ``convert_pt2e``: what the
``executorch-xnnpack`` and ``torchao-x86`` runtimes hand their compilers, from the QuantSim's own qparams and
integer codes, nothing recalibrated.

A PT2E quantizer decides two things this writer takes as :class:`Pt2eConventions`:

* activations: every activation quantizer is a ``quantize_per_tensor -> dequantize_per_tensor`` pair of
  ``torch.ops.quantized_decomposed`` at its scale, in uint8 (the X86 Inductor quantizer) or int8 (XNNPACK's: the
  QuantSim's uint8 code ``q`` with zero point ``z`` is the int8 code ``q - 128`` with zero point ``z - 128``, the
  same real values);
* weights: a convolution or linear layer reads its weight as the QuantSim's int8 codes through
  ``dequantize_per_channel`` or ``_per_tensor`` (zero point 0: all these backends take symmetric weights); a backend
  whose quantizer annotates only per-channel weights (X86 Inductor) gets a per-tensor scale repeated per channel,
  the same arithmetic; one whose converter folds the weight's quantization itself (LiteRT's, from
  ``convert_pt2e(..., fold_quantize=False)``) gets the on-grid float weight (codes x scale) before a
  quantize/dequantize pair, which gives back the same codes. The bias is the QuantSim's int32 codes times
  ``input_scale * weight_scale``.

Everything else is as ``convert_pt2e`` writes it: a pass-through op before a quantized op (TensorFlow "SAME" zero
padding, the flatten before the classifier) keeps its input's qparams (a q/dq pair at those qparams after it), and
:func:`duplicate_dequantize` copies every dequantize read twice (a residual) per reader. ``padding="same"`` is
written as explicit pads (quantized ``padding="same"`` convolutions give wrong outputs in ExecuTorch's XNNPACK
lowering, pytorch/executorch issues 20517 and 20558), CLE's per-channel clipped ReLU6 as ``relu`` then
``minimum`` with the bounds' codes at the output quantizer's qparams.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench.layers import ChannelClippedReLU, tf_same_pad
from mqbench.quant import functional as Q
from mqbench.quant.qsim import QuantConv2d, Quantizer, QuantLinear, QuantSim, quantized_bias

# Artifact formats of the ``pt2e`` toolkit (mqbench/toolkits/pt2e.py): a GraphModule as ``convert_pt2e`` leaves it,
# annotated by one runtime's own PT2E quantizer, run by that runtime.
PT2E_X86_INDUCTOR = "pt2e[x86_inductor]"  # torchao's X86InductorQuantizer (uint8 activations): torchao-x86
PT2E_XNNPACK = "pt2e[xnnpack]"  # ExecuTorch's XNNPACKQuantizer (int8 activations): executorch-xnnpack
PT2E_LITERT = "pt2e[litert]"  # litert-torch's PT2EQuantizer, convert_pt2e(fold_quantize=False): litert-xnnpack
SIGNED_SHIFT = 128  # uint8 code - 128 = int8 code


@dataclass(frozen=True)
class Pt2eConventions:
    """How one backend's PT2E quantizer writes quantized activations and weights."""

    backend: str  # named in errors: "XNNPACK"
    signed_activations: bool  # int8 activation codes (uint8 code - 128); False: uint8
    per_channel_weights: bool  # per-tensor weight scales written per channel (the quantizer annotates no other)
    # weights (and the clip's bounds) as floats -> quantize -> dequantize (fold_quantize=False); False: int8 codes
    float_weights: bool = False
    version: int = 1

    @property
    def activation_range(self) -> tuple[int, int, torch.dtype]:
        return (-128, 127, torch.int8) if self.signed_activations else (0, 255, torch.uint8)

    @property
    def shift(self) -> int:
        return SIGNED_SHIFT if self.signed_activations else 0


XNNPACK = Pt2eConventions("XNNPACK", signed_activations=True, per_channel_weights=False)
X86_INDUCTOR = Pt2eConventions("X86 Inductor", signed_activations=False, per_channel_weights=True)
LITERT = Pt2eConventions("LiteRT", signed_activations=True, per_channel_weights=False, float_weights=True)


def _decomposed() -> Any:
    """``torch.ops.quantized_decomposed``, the q/dq operators of PT2E graphs (registered on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed
    return torch.ops.quantized_decomposed


class QuantizeDequantize(nn.Module):
    """``dequantize_per_tensor(quantize_per_tensor(x))`` at ``scale`` and ``zero_point`` in the conventions' codes."""

    def __init__(self, scale: float, zero_point: int, conventions: Pt2eConventions = XNNPACK) -> None:
        super().__init__()
        self.scale, self.zero_point = scale, zero_point
        self.qmin, self.qmax, self.dtype = conventions.activation_range

    @classmethod
    def of(cls, quantizer: Quantizer, conventions: Pt2eConventions = XNNPACK) -> QuantizeDequantize:
        """The QuantSim's uint8 activation quantizer as the pair holding the same values."""
        if quantizer.scale is None or quantizer.zero_point is None or quantizer.scale.dim() != 0:
            raise ValueError(f"quantizer {quantizer.name} needs calibrated per-tensor qparams to deploy on "
                             f"{conventions.backend}")
        if (quantizer.qmin, quantizer.saturate_min, quantizer.saturate_max) != (0, 0, 255):
            raise ValueError(f"quantizer {quantizer.name} is not an 8-bit uint8 activation quantizer")
        return cls(float(quantizer.scale), int(quantizer.zero_point) - conventions.shift, conventions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _decomposed()
        codes = qd.quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)
        return qd.dequantize_per_tensor(codes, self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)


class DequantizedWeightLayer(nn.Module):
    """A QuantConv2d or QuantLinear as PT2E writes it: int8 weight codes dequantized, the bias on its int32 grid."""

    codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: QuantConv2d | QuantLinear, conventions: Pt2eConventions = XNNPACK) -> None:
        super().__init__()
        q = layer.weight_quantizer
        input_quantizer = layer.input_quantizer() if layer.input_quantizer is not None else None
        if q.scale is None or q.zero_point is None or input_quantizer is None or input_quantizer.scale is None:
            raise ValueError(f"layer {q.name} needs calibrated weight and input quantizers to deploy on "
                             f"{conventions.backend}")
        if q.bits != 8 or bool((q.zero_point != 0).any()):
            raise ValueError(f"layer {q.name}: {conventions.backend}'s kernels take symmetric 8-bit weights "
                             "(zero point 0)")
        codes = Q.quantize(layer.weight.detach(), q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax, axis=q.axis)
        self.register_buffer("codes", codes.to(torch.int8))
        scale, self.axis = q.scale.detach().float().clone(), q.axis
        if self.axis is None and conventions.per_channel_weights:  # one scale, repeated per output channel
            scale, self.axis = scale.reshape(()).expand(codes.shape[0]).clone(), 0
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(scale.shape, dtype=q.zero_point.dtype))
        self.tensor_scale = float(scale) if self.axis is None else 0.0  # a constant of the graph, not a buffer
        self.float_weights = conventions.float_weights
        self.input = QuantizeDequantize.of(input_quantizer, conventions)
        # The QuantSim's own bias on its int32 grid (codes x input scale x weight scale), which XNNPACK's lowering
        # rounds back to exactly those codes
        bias = quantized_bias(layer.bias, q, layer.input_quantizer)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if conventions.float_weights:  # the on-grid weight itself (codes x scale), quantized again in the graph
            shape = [-1] + [1] * (codes.dim() - 1)
            self.register_buffer("float_weight", codes.float() * (scale if self.axis is None else scale.view(shape)))

    def weight(self) -> torch.Tensor:
        qd = _decomposed()
        if self.axis is None:
            codes = self.codes
            if self.float_weights:
                codes = qd.quantize_per_tensor(self.float_weight, self.tensor_scale, 0, -128, 127, torch.int8)
            return qd.dequantize_per_tensor(codes, self.tensor_scale, 0, -128, 127, torch.int8)
        codes = self.codes
        if self.float_weights:
            codes = qd.quantize_per_channel(self.float_weight, self.weight_scale, self.weight_zero_point, self.axis,
                                            -128, 127, torch.int8)
        return qd.dequantize_per_channel(codes, self.weight_scale, self.weight_zero_point, self.axis, -128, 127,
                                         torch.int8)


class Pt2eConv2d(DequantizedWeightLayer):
    """The convolution with any ``padding="same"`` written as explicit pads (symmetric ones as the convolution's
    own padding, an even kernel's uneven ones as a zero pad before it)."""

    def __init__(self, layer: QuantConv2d, conventions: Pt2eConventions = XNNPACK) -> None:
        super().__init__(layer, conventions)
        self.tf_same, self.kernel_size, self.stride = layer.tf_same, layer.kernel_size, layer.stride
        self.dilation, self.groups = layer.dilation, layer.groups
        self.padding: Any = layer.padding
        self.pads: list[int] = []  # F.pad's order: last dimension first
        if layer.padding == "valid":
            self.padding = 0
        elif layer.padding == "same":
            totals = [d * (k - 1) for k, d in zip(layer.kernel_size, layer.dilation, strict=True)]
            if all(t % 2 == 0 for t in totals):
                self.padding = tuple(t // 2 for t in totals)
            else:
                self.padding, self.pads = 0, [p for t in reversed(totals) for p in (t // 2, t - t // 2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding keeps the input's qparams (0 is on the grid): a q/dq pair at them after the pad
        if self.tf_same:
            x = self.input(tf_same_pad(x, self.kernel_size, self.stride, self.dilation))  # type: ignore[arg-type]
        elif self.pads:
            x = self.input(F.pad(x, self.pads))
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class Pt2eLinear(DequantizedWeightLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input(x), self.weight(), self.bias)  # the flatten before it keeps its qparams


class Pt2eChannelClip(nn.Module):
    """:class:`~mqbench.layers.ChannelClippedReLU` (ReLU6 after cross-layer equalization) before the quantizer
    ``output``: ``relu`` fused into the convolution's quantized output, then ``minimum`` with the bounds' codes, both
    at ``output``'s qparams. Exact: rounding is monotone, so ``Q(min(x, u)) = min(Q(x), Q(u))``."""

    upper_codes: torch.Tensor

    def __init__(self, clip: ChannelClippedReLU, output: QuantizeDequantize, float_bounds: bool = False) -> None:
        super().__init__()
        self.output, self.float_bounds = output, float_bounds
        codes = torch.clamp(torch.round(clip.upper.detach() / output.scale) + output.zero_point, output.qmin,
                            output.qmax)
        self.register_buffer("upper_codes", codes.to(output.dtype).view(1, -1, 1, 1))
        if float_bounds:  # the bounds on the grid as floats, quantized in the graph (as weights, fold_quantize=False)
            self.register_buffer("upper", (self.upper_codes.float() - output.zero_point) * output.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd, out = _decomposed(), self.output
        codes = self.upper_codes
        if self.float_bounds:
            codes = qd.quantize_per_tensor(self.upper, out.scale, out.zero_point, out.qmin, out.qmax, out.dtype)
        upper = qd.dequantize_per_tensor(codes, out.scale, out.zero_point, out.qmin, out.qmax, out.dtype)
        return torch.minimum(self.output(torch.relu(x)), upper)


def pt2e_module(qsim: QuantSim, conventions: Pt2eConventions = XNNPACK) -> fx.GraphModule:
    """The calibrated ``qsim`` as a PT2E-style quantized module (module docstring): the QuantSim's graph with its
    activation quantizers and weighted layers replaced, everything else (activations, adds, pooling) as is."""
    modules = dict(qsim.model.named_modules())
    root: dict[str, nn.Module] = {}
    for node in qsim.model.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[str(node.target)]
        if isinstance(module, Quantizer):
            module = QuantizeDequantize.of(module, conventions)
        elif isinstance(module, QuantConv2d):
            module = Pt2eConv2d(module, conventions)
        elif isinstance(module, QuantLinear):
            module = Pt2eLinear(module, conventions)
        elif isinstance(module, ChannelClippedReLU):
            clipped = QuantizeDequantize.of(_output_quantizer(node, modules, conventions), conventions)
            module = Pt2eChannelClip(module, clipped, conventions.float_weights)
        root[str(node.target)] = module
    graph = fx.Graph()
    output = graph.graph_copy(qsim.model.graph, {})
    graph.output(output)
    return fx.GraphModule(root, graph).eval()


def _output_quantizer(node: fx.Node, modules: dict[str, nn.Module], conventions: Pt2eConventions) -> Quantizer:
    """The activation quantizer that reads ``node``'s output (its only reader)."""
    users = list(node.users)
    quantizer = modules.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
    if not isinstance(quantizer, Quantizer):
        raise ValueError(f"{node.target} is not followed by one activation quantizer: {conventions.backend} cannot "
                         "clip it")
    return quantizer


def duplicate_dequantize(gm: fx.GraphModule) -> None:
    """Every dequantize node read by several nodes becomes one copy per reader, as ``convert_pt2e`` leaves the
    graph (a backend's pattern matcher groups each ``dq -> op -> q`` on its own)."""
    from torch.fx.node import map_arg

    qd = _decomposed()
    dequantize = (qd.dequantize_per_tensor.default, qd.dequantize_per_channel.default)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in dequantize:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_after(node):
                copy = gm.graph.node_copy(node)
            user.args = map_arg(user.args, lambda n, c=copy, d=node: c if n is d else n)  # type: ignore[misc]
            user.kwargs = map_arg(user.kwargs, lambda n, c=copy, d=node: c if n is d else n)  # type: ignore[misc]
    gm.recompile()


@contextmanager
def quiet() -> Iterator[None]:
    """torchao's import notices (CUDA extensions it cannot load) and torch.export's deprecation warnings."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


__all__ = ["LITERT", "X86_INDUCTOR", "XNNPACK", "DequantizedWeightLayer", "Pt2eChannelClip", "Pt2eConv2d", "Pt2eConventions",
           "Pt2eLinear", "QuantizeDequantize", "duplicate_dequantize", "pt2e_module", "quiet"]
