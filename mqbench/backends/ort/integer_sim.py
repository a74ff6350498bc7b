"""The QuantSim computed the way ONNX Runtime's integer kernels compute it, code for code.

:class:`IntegerSimulation` takes a calibrated :class:`~mqbench.quant.qsim.QuantSim` placed for ONNX Runtime
(``Placement(int32_bias=True)``) and runs its graph on integer codes with the arithmetic of
:mod:`mqbench.backends.ort.mlas`, instead of fake-quantizing float tensors: each convolution or linear layer
accumulates ``(x - zp_x) * w_codes + bias_codes`` exactly and requantizes at its output quantizer as
QLinearConv / QGemm do; residual adds are QLinearAdd, global average pooling QLinearGlobalAveragePool; the
activation fused into a layer clamps its output codes (ReLU and ReLU6 cost nothing when the output range
already excludes what they clip, which is how ONNX Runtime removes them; a per-channel clip from cross-layer
equalization becomes a per-channel ``Min`` on the codes, as :func:`mqbench.backends.ort.export.export_qdq`
exports it). Zero padding pads with the zero point. The output is dequantized as the graph's last
``DequantizeLinear`` does.

Same qparams, same weights, same graph as the exported model, so its logits equal ONNX Runtime's bit for
bit (``tests/test_integer_sim.py``), where the fake-quant simulation agrees with the runtime on 98-99% of
the top-1 decisions of MobileNets (README, "simulation against real kernels"). It evaluates a model, it does
not train one (no gradients: methods keep optimising the fake-quant QuantSim).

Values flowing through the graph are float tensors (before the input quantizer), :class:`Codes` (an integer
tensor with its qparams) or :class:`Pending` (an integer op's exact result waiting for its output
quantizer). An op the runtime would not run in integer arithmetic raises :class:`UnsupportedOp` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench.backends.ort import mlas
from mqbench.errors import IntegerSimulationUnavailable
from mqbench.layers import ChannelClippedReLU, tf_same_pad
from mqbench.quant import functional as Q
from mqbench.quant.qsim import (
    QuantConv2d,
    Quantizer,
    QuantLinear,
    QuantSim,
    is_activation,
    is_add,
    is_passthrough,
    is_pool,
)

F64 = torch.float64


class UnsupportedOp(IntegerSimulationUnavailable):
    """The graph holds an op the integer simulation does not model."""


@dataclass
class Codes:
    """An integer tensor as the runtime holds it: codes (float32 holding integers) and their qparams."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: int

    def centered(self) -> torch.Tensor:
        return self.q - float(self.zero_point) if self.zero_point else self.q

    def max_abs_centered(self) -> float:
        """``max |q - zero_point|`` (for the accumulator's bound), in one pass over the codes."""
        lo, hi = torch.aminmax(self.q)
        return max(abs(float(lo) - self.zero_point), abs(float(hi) - self.zero_point))


@dataclass
class Pending:
    """An integer op's result before requantization: ``finish(scale, zero_point, qmin, qmax)`` gives the
    output codes; ``clamps`` are the fused activation's bounds, applied to the codes afterwards."""

    finish: Callable[[torch.Tensor, int, int, int], torch.Tensor]
    what: str
    clamps: list[tuple[Any, Any]] = field(default_factory=list)


def _activation_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Any, Any]:
    """(lower, upper) of a fused activation (None = unbounded; a tensor = per channel)."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(m, nn.ReLU):
            return 0.0, None
        if isinstance(m, nn.Hardtanh):
            return float(m.min_val), float(m.max_val)
        if isinstance(m, ChannelClippedReLU):
            return 0.0, m.upper
        raise UnsupportedOp(f"activation module {type(m).__name__}")
    target, args, kwargs = node.target, node.args[1:], node.kwargs
    if target in (F.relu, torch.relu, "relu"):
        return 0.0, None
    if target is F.relu6:
        return 0.0, 6.0
    if target is F.hardtanh:
        lo = args[0] if args else kwargs.get("min_val", -1.0)
        hi = args[1] if len(args) > 1 else kwargs.get("max_val", 1.0)
        return float(lo), float(hi)  # type: ignore[arg-type]
    if target in (torch.clamp, "clamp"):
        lo = args[0] if args else kwargs.get("min")
        hi = args[1] if len(args) > 1 else kwargs.get("max")
        return lo, hi
    raise UnsupportedOp(f"activation {target}")


def _bound_codes(bound: Any, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int,
                 ndim: int) -> torch.Tensor | None:
    if bound is None:
        return None
    b = torch.as_tensor(bound, dtype=torch.float32)
    codes = mlas.quantize_linear(b, scale, zero_point, qmin=qmin, qmax=qmax)
    if codes.dim() == 1 and ndim > 1:
        codes = codes.view((1, -1) + (1,) * (ndim - 2))
    return codes


def _weight_codes(layer: QuantConv2d | QuantLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight codes minus their zero point (float64) and the weight scale."""
    wq = layer.weight_quantizer
    if wq.scale is None or wq.zero_point is None:
        raise RuntimeError(f"weight quantizer {wq.name} has no qparams: calibrate before simulating")
    codes = Q.quantize(layer.weight.detach(), wq.scale, wq.zero_point, qmin=wq.saturate_min, qmax=wq.saturate_max,
                       axis=wq.axis).to(F64)
    zp = wq.zero_point.to(F64)
    if zp.dim() == 1:
        zp = zp.view((-1,) + (1,) * (codes.dim() - 1))
    return codes - zp, wq.scale


class IntegerSimulation(nn.Module):
    """A calibrated QuantSim evaluated in ONNX Runtime's integer arithmetic (module docstring)."""

    def __init__(self, qsim: QuantSim) -> None:
        super().__init__()
        if not qsim.placement.int32_bias:
            raise ValueError("the integer simulation models ONNX Runtime (int32 biases); this QuantSim was placed "
                             "for a runtime that adds float biases")
        self.qsim = qsim
        self.modules_by_name = dict(qsim.model.named_modules())
        # Per layer: weight codes minus zero point (float64), weight scale, and the largest row sum of |codes|.
        # Computed on first use and kept: the simulation evaluates a QuantSim whose qparams no longer change.
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[fx.Node, Any] = {}
        result: Any = None
        for node in self.qsim.model.graph.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                result = fx.node.map_arg(node.args[0], lambda n: env[n])
            else:
                env[node] = self._run(node, env)
        if isinstance(result, Codes):
            return mlas.dequantize_linear(result.q, result.scale, result.zero_point)
        if isinstance(result, Pending):
            raise UnsupportedOp(f"the output is {result.what} with no output quantizer")
        return result

    def _run(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        modules = self.modules_by_name
        args: Any = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs: Any = fx.node.map_arg(node.kwargs, lambda n: env[n])
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        first = args[0] if args else None
        if isinstance(module, Quantizer):
            return self._quantize(module, first)
        if isinstance(module, (QuantConv2d, QuantLinear)):
            return self._layer(module, first, str(node.target))
        if is_activation(node, modules) and isinstance(first, Pending):  # fused into the op before it
            first.clamps.append(_activation_bounds(node, modules))
            return first
        if is_add(node) and all(isinstance(a, Codes) for a in args[:2]):
            return self._add(args[0], args[1], node.name)
        if is_pool(node, modules) and isinstance(first, Codes):
            return self._pool(node, module, first)
        if is_passthrough(node, modules):
            return self._passthrough(node, module, args, kwargs)
        if any(isinstance(a, (Codes, Pending)) for a in args):
            raise UnsupportedOp(f"{node.format_node()}: no integer kernel for this op is modelled")
        return self._call_float(node, module, args, kwargs)

    @staticmethod
    def _call_float(node: fx.Node, module: nn.Module | None, args: Any, kwargs: Any) -> Any:
        if module is not None:
            return module(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            raise UnsupportedOp(f"{node.format_node()}")
        fn = node.target
        assert callable(fn)
        return fn(*args, **kwargs)

    def _quantize(self, quantizer: Quantizer, value: Any) -> Codes:
        if quantizer.scale is None or quantizer.zero_point is None:
            raise RuntimeError(f"quantizer {quantizer.name} has no qparams: calibrate before simulating")
        if quantizer.per_channel:
            raise UnsupportedOp(f"per-channel activation quantizer {quantizer.name}")
        scale, zp = quantizer.scale, int(quantizer.zero_point)
        lo, hi = quantizer.saturate_min, quantizer.saturate_max
        if isinstance(value, Pending):
            q = value.finish(scale, zp, lo, hi)
            return Codes(self._clamp(q, value.clamps, scale, zp, lo, hi), scale, zp)
        if isinstance(value, Codes):
            if torch.equal(value.scale, scale) and value.zero_point == zp:
                return value
            raise UnsupportedOp(f"requantizing an integer tensor at {quantizer.name}")
        return Codes(mlas.quantize_linear(value, scale, zp, qmin=lo, qmax=hi), scale, zp)

    @staticmethod
    def _clamp(q: torch.Tensor, clamps: list[tuple[Any, Any]], scale: torch.Tensor, zp: int, qmin: int,
               qmax: int) -> torch.Tensor:
        for lo, hi in clamps:
            lo_codes = _bound_codes(lo, scale, zp, qmin, qmax, q.dim())
            hi_codes = _bound_codes(hi, scale, zp, qmin, qmax, q.dim())
            if lo_codes is not None and (lo_codes.numel() > 1 or float(lo_codes) > qmin):
                q = torch.maximum(q, lo_codes)
            if hi_codes is not None and (hi_codes.numel() > 1 or float(hi_codes) < qmax):
                q = torch.minimum(q, hi_codes)
        return q

    def _layer(self, layer: QuantConv2d | QuantLinear, x: Any, name: str) -> Pending:
        if not isinstance(x, Codes):
            raise UnsupportedOp(f"layer {name} takes a float input: the integer simulation needs its input quantized")
        if name not in self._weights:
            codes, scale = _weight_codes(layer)
            self._weights[name] = codes, scale, float(codes.abs().flatten(1).sum(1).max())
        w, w_scale, w_row_sum = self._weights[name]
        bias = None if layer.bias is None else mlas.bias_codes(layer.bias.detach(), x.scale, w_scale)
        # float32 sums integers exactly while every partial sum stays below 2**24; otherwise float64.
        bound = x.max_abs_centered() * w_row_sum
        xi = x.centered()
        bound += 0.0 if bias is None else float(bias.abs().max())
        dtype = torch.float32 if bound < 2 ** 24 else F64
        xi, w = xi.to(dtype), w.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if isinstance(layer, QuantConv2d):
            if layer.tf_same:
                xi = tf_same_pad(xi, layer.kernel_size, layer.stride, layer.dilation)  # type: ignore[arg-type]
            if layer.padding_mode != "zeros":
                raise UnsupportedOp(f"layer {name}: padding mode {layer.padding_mode}")
            acc = F.conv2d(xi, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            acc = F.linear(xi, w, bias)
        x_scale = x.scale

        def finish(scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
            m = mlas.conv_multiplier(x_scale, w_scale, scale)
            if m.dim() == 1:
                m = m.view((1, -1) + (1,) * (acc.dim() - 2))
            return mlas.requantize(acc, m, zp, qmin=qmin, qmax=qmax)

        return Pending(finish, f"layer {name}")

    @staticmethod
    def _add(a: Codes, b: Codes, name: str) -> Pending:
        def finish(scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
            return mlas.qlinear_add(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, scale, zp, qmin=qmin,
                                    qmax=qmax)

        return Pending(finish, f"add {name}")

    @staticmethod
    def _pool(node: fx.Node, module: nn.Module | None, x: Codes) -> Pending:
        global_pool = (isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))) or (
            module is None and node.target in (torch.mean, "mean") and tuple(node.args[1:2]) in (((-1, -2),), ((2, 3),),
                                                                                              ((-2, -1),)))
        if not global_pool:
            raise UnsupportedOp(f"{node.format_node()}: only global average pooling is modelled")

        def finish(scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
            out = mlas.global_average_pool(x.q, x.scale, x.zero_point, scale, zp, qmin=qmin, qmax=qmax)
            return out if module is not None or node.kwargs.get("keepdim") else out.flatten(-2)

        return Pending(finish, f"pool {node.name}")

    def _passthrough(self, node: fx.Node, module: nn.Module | None, args: Any, kwargs: Any) -> Any:
        codes = next((a for a in args if isinstance(a, Codes)), None)
        if codes is None:
            if any(isinstance(a, Pending) for a in args):
                raise UnsupportedOp(f"{node.format_node()} between an integer op and its output quantizer")
            return self._call_float(node, module, args, kwargs)
        if isinstance(module, (nn.Dropout, nn.Identity)):
            return codes
        zp = float(codes.zero_point)
        raw = [a.centered() if isinstance(a, Codes) else a for a in args]
        if node.target is F.pad:  # pads with 0, the zero point in codes
            out = self._call_float(node, module, raw, kwargs)
            return Codes(out + zp, codes.scale, codes.zero_point)
        out = self._call_float(node, module, [codes.q if isinstance(a, Codes) else a for a in args], kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return Codes(out, codes.scale, codes.zero_point)
        return out


__all__ = ["Codes", "IntegerSimulation", "Pending", "UnsupportedOp"]
