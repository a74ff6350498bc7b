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
``DequantizeLinear`` does. On x86 CPUs without VNNI the U8S8 kernels add pairs of products in int16 with
saturation; ``int16_pairs`` models that (:func:`mqbench.backends.ort.mlas.int16_pair_excess`), by default where
this machine does.

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
from mqbench.layers import tf_same_pad
from mqbench.quant import functional as Q
from mqbench.quant.qsim import (
    QuantConv2d,
    Quantizer,
    QuantLinear,
    QuantSim,
    activation_bounds,
    is_activation,
    is_add,
    is_passthrough,
    is_pool,
)


class UnsupportedOp(IntegerSimulationUnavailable):
    """The graph holds an op the integer simulation does not model."""


@dataclass
class Codes:
    """An integer tensor as the runtime holds it, carried as ``c = q - zero_point`` (float32 holding integers:
    what an integer kernel multiplies), with its qparams and ``bound``, the largest ``|c|`` its type allows."""

    c: torch.Tensor
    scale: torch.Tensor
    zero_point: int
    bound: float

    @classmethod
    def of(cls, c: torch.Tensor, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int) -> Codes:
        return cls(c, scale, zero_point, float(max(abs(qmin - zero_point), abs(qmax - zero_point))))

    @property
    def q(self) -> torch.Tensor:
        """The codes themselves (``c + zero_point``)."""
        return self.c + float(self.zero_point) if self.zero_point else self.c

    def max_abs(self) -> float:
        """``max |c|`` measured, in one pass over the codes (a tighter bound than ``bound``)."""
        lo, hi = torch.aminmax(self.c)
        return max(abs(float(lo)), abs(float(hi)))


@dataclass
class Pending:
    """An integer op's result before requantization: ``finish(scale, zero_point, qmin, qmax)`` gives the
    output codes; ``clamps`` are the fused activation's bounds, applied to the codes afterwards."""

    finish: Callable[[torch.Tensor, int, int, int], torch.Tensor]
    what: str
    clamps: list[tuple[Any, Any]] = field(default_factory=list)


def _activation_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Any, Any]:
    try:
        return activation_bounds(node, modules)
    except ValueError as exc:
        raise UnsupportedOp(str(exc)) from None


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
    """The layer's weight codes minus their zero point (float32, exact for 8-bit codes) and the weight scale."""
    wq = layer.weight_quantizer
    if wq.scale is None or wq.zero_point is None:
        raise RuntimeError(f"weight quantizer {wq.name} has no qparams: calibrate before simulating")
    codes = Q.quantize(layer.weight.detach(), wq.scale, wq.zero_point, qmin=wq.saturate_min, qmax=wq.saturate_max,
                       axis=wq.axis).to(torch.float32)
    zp = wq.zero_point.to(torch.float32)
    if zp.dim() == 1:
        zp = zp.view((-1,) + (1,) * (codes.dim() - 1))
    return codes - zp, wq.scale


EXACT_F32 = 2.0 ** 24  # float32 holds every integer below it: sums that stay below it are exact in any order


@dataclass
class _LayerCodes:
    """A layer's integer operands, made on first use and kept (the simulated QuantSim's qparams no longer change):
    weight codes minus their zero point (float32), the weight scale, the largest row sum of ``|w|``, and the bias
    codes for the input scale they were computed at."""

    w: torch.Tensor
    w_scale: torch.Tensor
    row_sum: float
    x_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None  # float64
    bias_hi: torch.Tensor | None = None  # the nearest float32 to each bias code
    bias_lo: torch.Tensor | None = None  # bias - bias_hi, small integers (float32)
    bias_max: float = 0.0
    bias_lo_max: float = 0.0
    w_rows: torch.Tensor | None = None  # raw int8 weight codes as the GEMM's (C, K) rows, K in NHWC im2col order


def _weight_rows(layer: QuantConv2d | QuantLinear) -> torch.Tensor | None:
    """The raw weight codes as (C, K) rows in the U8S8 GEMM's K order (kernel row, column, input channel), or
    None where no U8S8 GEMM runs the layer (uint8 weights: the U8U8 kernels widen to int16 first; depthwise)."""
    wq = layer.weight_quantizer
    assert wq.scale is not None and wq.zero_point is not None
    if wq.saturate_min >= 0 or (isinstance(layer, QuantConv2d) and layer.groups != 1):
        return None
    codes = Q.quantize(layer.weight.detach(), wq.scale, wq.zero_point, qmin=wq.saturate_min, qmax=wq.saturate_max,
                       axis=wq.axis).to(torch.float32)
    return codes.permute(0, 2, 3, 1).flatten(1) if codes.dim() == 4 else codes


def _saturation(layer: QuantConv2d | QuantLinear, xc: torch.Tensor, zero_point: int,
                w_rows: torch.Tensor) -> torch.Tensor | None:
    """What the int16 pair saturation takes off the layer's accumulators, (N, C, positions), or None if nothing."""
    if isinstance(layer, QuantLinear):
        return mlas.int16_pair_excess((xc + float(zero_point)).unsqueeze(-1), w_rows)
    kh, kw = layer.kernel_size
    cols = F.unfold(xc, (kh, kw), layer.dilation, layer.padding, layer.stride)  # type: ignore[arg-type]
    n, cin, length = cols.shape[0], xc.shape[1], cols.shape[2]
    cols = cols.view(n, cin, kh * kw, length).transpose(1, 2).reshape(n, cin * kh * kw, length) + float(zero_point)
    return mlas.int16_pair_excess(cols, w_rows)


class IntegerSimulation(nn.Module):
    """A calibrated QuantSim evaluated in ONNX Runtime's integer arithmetic (module docstring)."""

    def __init__(self, qsim: QuantSim, signed_activations: bool = False, int16_pairs: bool | None = None) -> None:
        """``signed_activations``: the runtime holds 8-bit activations as int8 codes ``q - 128`` with zero point
        ``zp - 128`` (ONNX Runtime's S8S8 kernels, :func:`~mqbench.backends.ort.export.signed_activations`); the
        same values, but QLinearAdd computes on the shifted codes and rounds otherwise. ``int16_pairs``: the U8S8
        kernels saturate pairs of products in int16 (x86 without VNNI); None: as this machine's kernels do. With
        int8 activations the pairs are of the int8 codes (a product is at most 16384 in magnitude: a pair can pass
        32767 only as two products of -128 by -128); ONNX Runtime's S8S8 kernels agree on the tests' networks."""
        super().__init__()
        if int16_pairs is None:
            from mqbench.backends.ort.runtime import cpu_isa  # runtime imports this module

            int16_pairs = mlas.sums_pairs_in_int16(cpu_isa())
        self.int16_pairs = int16_pairs
        self.activation_offset = -128 if signed_activations else 0
        if not qsim.placement.int32_bias:
            raise ValueError("the integer simulation models ONNX Runtime (int32 biases); this QuantSim was placed "
                             "for a runtime that adds float biases")
        self.qsim = qsim
        self.modules_by_name = dict(qsim.model.named_modules())
        self._layers: dict[str, _LayerCodes] = {}

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
        if isinstance(result, Codes):  # (q - zp) * scale, q - zp being exactly c
            return mlas.dequantize_linear(result.c, result.scale, 0)
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
        if self.activation_offset and (lo, hi) == (0, 255):  # uint8 activations held as int8 codes
            zp, lo, hi = zp + self.activation_offset, lo + self.activation_offset, hi + self.activation_offset
        if isinstance(value, Pending):
            c = value.finish(scale, zp, lo, hi)
            return Codes.of(self._clamp(c, value.clamps, scale, zp, lo, hi), scale, zp, lo, hi)
        if isinstance(value, Codes):
            if torch.equal(value.scale, scale) and value.zero_point == zp:
                return value
            raise UnsupportedOp(f"requantizing an integer tensor at {quantizer.name}")
        c = mlas.quantize_linear(value, scale, zp, qmin=lo, qmax=hi, centered=True)
        if c.dim() == 4:
            c = c.contiguous(memory_format=torch.channels_last)
        return Codes.of(c, scale, zp, lo, hi)

    @staticmethod
    def _clamp(c: torch.Tensor, clamps: list[tuple[Any, Any]], scale: torch.Tensor, zp: int, qmin: int,
               qmax: int) -> torch.Tensor:
        """The fused activations' bounds applied to centered codes ``c`` (a bound the code range already
        enforces costs nothing)."""
        for lo, hi in clamps:
            lo_codes = _bound_codes(lo, scale, zp, qmin, qmax, c.dim())
            hi_codes = _bound_codes(hi, scale, zp, qmin, qmax, c.dim())
            if lo_codes is not None and (lo_codes.numel() > 1 or float(lo_codes) > qmin):
                c = torch.maximum(c, lo_codes - zp)
            if hi_codes is not None and (hi_codes.numel() > 1 or float(hi_codes) < qmax):
                c = torch.minimum(c, hi_codes - zp)
        return c

    def _operands(self, layer: QuantConv2d | QuantLinear, name: str, x_scale: torch.Tensor) -> _LayerCodes:
        ops = self._layers.get(name)
        if ops is None:
            w, w_scale = _weight_codes(layer)
            if w.dim() == 4:
                w = w.contiguous(memory_format=torch.channels_last)
            ops = self._layers[name] = _LayerCodes(w, w_scale, float(w.abs().flatten(1).sum(1).max()))
            if self.int16_pairs:
                ops.w_rows = _weight_rows(layer)
        if layer.bias is not None and (ops.x_scale is None or not torch.equal(ops.x_scale, x_scale)):
            ops.bias = self._bias_codes(layer, x_scale, ops.w_scale)
            ops.bias_hi = ops.bias.float()
            ops.bias_lo = (ops.bias - ops.bias_hi.double()).float()
            ops.x_scale, ops.bias_max, ops.bias_lo_max = x_scale, float(ops.bias.abs().max()), float(ops.bias_lo.abs().max())
        return ops

    @staticmethod
    def _bias_codes(layer: QuantConv2d | QuantLinear, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        """The int32 bias codes the runtime adds: ONNX Runtime's export rounds the float bias in float64."""
        assert layer.bias is not None
        return mlas.bias_codes(layer.bias.detach(), x_scale, w_scale)

    def _layer(self, layer: QuantConv2d | QuantLinear, x: Any, name: str) -> Pending:
        if not isinstance(x, Codes):
            raise UnsupportedOp(f"layer {name} takes a float input: the integer simulation needs its input quantized")
        ops = self._operands(layer, name, x.scale)
        xc = x.c
        if isinstance(layer, QuantConv2d):
            if layer.padding_mode != "zeros":
                raise UnsupportedOp(f"layer {name}: padding mode {layer.padding_mode}")
            if layer.tf_same:  # zero-padding centered codes pads with the zero point
                xc = tf_same_pad(xc, layer.kernel_size, layer.stride, layer.dilation)  # type: ignore[arg-type]
        excess = None if ops.w_rows is None else _saturation(layer, xc, x.zero_point, ops.w_rows)
        acc = _accumulate(layer, xc, x, ops, excess)
        x_scale, w_scale = x.scale, ops.w_scale
        finished: list[bool] = []

        def finish(scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
            m = mlas.conv_multiplier(x_scale, w_scale, scale)
            if m.dim() == 1:
                m = m.view((1, -1) + (1,) * (acc.dim() - 2))
            first = not finished  # the accumulator is scratch for the first requantization (usually the only one)
            finished.append(True)
            return mlas.requantize(acc, m, zp, qmin=qmin, qmax=qmax, centered=True, overwrite=first)

        return Pending(finish, f"layer {name}")

    def _add(self, a: Codes, b: Codes, name: str) -> Pending:
        def finish(scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
            q = self._add_codes(a, b, scale, zp, qmin, qmax)
            return q - float(zp) if zp else q

        return Pending(finish, f"add {name}")

    @staticmethod
    def _add_codes(a: Codes, b: Codes, scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
        """The add's output codes (not centred): ONNX Runtime's QLinearAdd."""
        return mlas.qlinear_add(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, scale, zp, qmin=qmin, qmax=qmax)

    def _pool(self, node: fx.Node, module: nn.Module | None, x: Codes) -> Pending:
        global_pool = (isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))) or (
            module is None and node.target in (torch.mean, "mean") and tuple(node.args[1:2]) in (((-1, -2),), ((2, 3),),
                                                                                              ((-2, -1),)))
        if not global_pool:
            raise UnsupportedOp(f"{node.format_node()}: only global average pooling is modelled")

        def finish(scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
            # sum(q) - zp_x * N is sum(c), exactly
            out = self._mean_codes(x, scale, zp, qmin, qmax)
            return out if module is not None or node.kwargs.get("keepdim") else out.flatten(-2)

        return Pending(finish, f"pool {node.name}")

    @staticmethod
    def _mean_codes(x: Codes, scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
        """The global mean's centred output codes (kept 1x1): ONNX Runtime's QLinearGlobalAveragePool."""
        return mlas.global_average_pool(x.c, x.scale, 0, scale, zp, qmin=qmin, qmax=qmax, centered=True)

    def _passthrough(self, node: fx.Node, module: nn.Module | None, args: Any, kwargs: Any) -> Any:
        codes = next((a for a in args if isinstance(a, Codes)), None)
        if codes is None:
            if any(isinstance(a, Pending) for a in args):
                raise UnsupportedOp(f"{node.format_node()} between an integer op and its output quantizer")
            return self._call_float(node, module, args, kwargs)
        if isinstance(module, (nn.Dropout, nn.Identity)):
            return codes
        # On centered codes: zero padding (F.pad) pads with the zero point, max pooling and reshapes commute with it.
        out = self._call_float(node, module, [a.c if isinstance(a, Codes) else a for a in args], kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return Codes(out, codes.scale, codes.zero_point, codes.bound)
        return out


def _accumulate(layer: QuantConv2d | QuantLinear, xc: torch.Tensor, x: Codes, ops: _LayerCodes,
                excess: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's accumulator ``sum(c * w) + bias``, rounded to float32 once as ONNX Runtime converts its int32
    (or a float64 holding it exactly). Sums of integers are exact in float32 (oneDNN's kernels, any summation
    order) while every partial sum stays below ``2**24``. ``|sum(c * w)|`` is bounded by the code range, or
    else by the codes' measured ``max |c|``. A bias too large for that bound is split into ``hi`` (the nearest
    float32) and ``lo`` (the small integer rest): ``lo`` goes into the convolution, ``hi`` is added after it,
    a float32 addition whose one rounding of the exact sum is the conversion's. Where even ``sum(c * w)`` may pass
    ``2**24``, ``c = 16 * hi + lo`` is split so that both halves' sums are exact, joined in float64 (float64
    throughout where the halves could pass it too). ``excess``, the int16 saturation's (integer) correction, joins
    the integer sum before the bias's float32 part."""

    def apply(inputs: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(layer, QuantConv2d):
            return F.conv2d(inputs, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.linear(inputs, w, bias)

    def saturated(acc: torch.Tensor) -> torch.Tensor:
        return acc if excess is None else acc.add_(excess.to(acc.dtype).view(acc.shape))

    largest = x.bound
    if largest * ops.row_sum >= EXACT_F32:
        largest = x.max_abs()
    if largest * ops.row_sum + ops.bias_max < EXACT_F32:
        return saturated(apply(xc, ops.w, ops.bias_hi))  # no bias, or every bias code below 2**24 (hi is the bias)
    assert ops.bias is not None and ops.bias_hi is not None
    shape = (1, -1) + (1,) * (xc.dim() - 2)
    if largest * ops.row_sum + ops.bias_lo_max < EXACT_F32:
        return saturated(apply(xc, ops.w, ops.bias_lo)).add_(ops.bias_hi.view(shape))
    if (largest / 16 + 1) * ops.row_sum < EXACT_F32:
        hi = torch.floor(xc / 16)  # exact: a division by a power of two, then floor
        acc = apply(hi, ops.w, None).double().mul_(16).add_(apply(xc - 16 * hi, ops.w, None))
        return saturated(acc).add_(ops.bias.view(shape))
    return saturated(apply(xc.double(), ops.w.double(), ops.bias))


__all__ = ["Codes", "IntegerSimulation", "Pending", "UnsupportedOp"]
