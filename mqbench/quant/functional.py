"""Quantize / dequantize / fake-quantize and quantization parameters from ranges.

Pure, fully-argued functions in the style of torchao: nothing here reads global state. Per-tensor
parameters are 0-d tensors; per-channel parameters are 1-d tensors applied along ``axis``.

Conventions (those of int8 runtimes):

* affine mapping ``q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)``,
  ``x' = (q - zero_point) * scale``, ``round`` half to even; multiplying by the float32 inverse scale
  (rather than dividing) is what torch's quantize kernels and fbgemm do, so codes match them bit for bit;
* the range is always widened to contain 0, so 0 is exactly representable (zero padding is exact);
* symmetric: ``zero_point = 0`` and ``scale = max(|min|, |max|) / qmax`` (for int8: amax / 127, the
  TFLite / max-abs convention; the grid is ``[-128, 127]`` and the data uses ``[-127, 127]``);
* asymmetric: ``scale = (max - min) / (qmax - qmin)``, ``zero_point = qmin - round(min / scale)``;
* power-of-two: the scale is rounded *up* to ``2**ceil(log2(scale))`` so the range stays covered;
* a zero-width range (an all-zero or constant-zero tensor) gets ``scale = eps`` (float32 eps), never 0.
"""

from __future__ import annotations

import torch

EPS = float(torch.finfo(torch.float32).eps)


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit integer, e.g. (-128, 127) or (0, 255)."""
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 2..16, got {bits!r}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check_finite(x: torch.Tensor, what: str) -> None:
    if torch.isnan(x).any():
        raise ValueError(f"{what} contains NaN; quantization needs finite values (check the model or its input)")


def qparams_from_range(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    *,
    bits: int,
    symmetric: bool,
    signed: bool,
    power_of_two: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` covering ``[min_val, max_val]`` (widened to include 0).

    ``min_val``/``max_val`` are 0-d (per-tensor) or 1-d (per-channel) float tensors of equal shape.
    ``zero_point`` is an int64 tensor of the same shape. Raises ValueError on NaN, on ``min > max``
    or on a bad bit width.
    """
    qmin, qmax = quant_range(bits, signed)
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got {tuple(min_val.shape)} and {tuple(max_val.shape)}")
    _check_finite(min_val, "min_val")
    _check_finite(max_val, "max_val")
    if bool((min_val > max_val).any()):
        raise ValueError("min_val must not exceed max_val")
    lo = torch.minimum(min_val, torch.zeros_like(min_val))
    hi = torch.maximum(max_val, torch.zeros_like(max_val))
    if symmetric:
        amax = torch.maximum(-lo, hi)
        # Unsigned symmetric (e.g. after ReLU): [0, amax] over [0, qmax]; signed: [-amax, amax] over qmax.
        scale = amax / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.clamp(scale, min=EPS)
    if power_of_two:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    if not symmetric:
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)
    return scale, zero_point


def _broadcast(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if p.dim() == 0:
        return p
    if axis is None:
        raise ValueError("per-channel qparams (1-d) need an axis")
    ax = axis % x.dim()
    if p.numel() != x.shape[ax]:
        raise ValueError(f"{p.numel()} per-channel qparams do not match {x.shape[ax]} channels on axis {axis}")
    shape = [1] * x.dim()
    shape[ax] = -1
    return p.view(shape)


def _broadcast_qparams(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (as float32) shaped to broadcast against ``x``."""
    s = _broadcast(torch.as_tensor(scale, dtype=torch.float32), x, axis)
    z = _broadcast(torch.as_tensor(zero_point), x, axis).to(torch.float32)
    return s, z


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes ``clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)`` as an int32 tensor."""
    _check_finite(x, "the tensor to quantize")
    s, z = _broadcast_qparams(x, scale, zero_point, axis)
    return torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax).to(torch.int32)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    axis: int | None = None,
) -> torch.Tensor:
    """Float values ``(q - zero_point) * scale``."""
    s, z = _broadcast_qparams(q, scale, zero_point, axis)
    return (q.to(torch.float32) - z) * s


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float, with a straight-through gradient inside the range.

    Gradients pass unchanged where ``x`` falls inside the representable range and are zero where it
    clamps (the STE of Bengio et al. / LSQ), so training-based methods can reuse this function.

    ``check_finite=False`` skips the NaN check (a pass over ``x``) where the caller lets NaN through: per
    tensor, a NaN in ``x`` is NaN in the output (every path here propagates it), as the QuantSim's activation
    quantizers rely on (the evaluation refuses non-finite logits). Per channel without gradients, torch's kernel
    would turn NaN into a code, so that path always checks.
    """
    if check_finite:
        _check_finite(x, "the tensor to fake-quantize")
    if not (x.requires_grad and torch.is_grad_enabled()) and x.dtype == torch.float32:
        scale = torch.as_tensor(scale, dtype=torch.float32)
        zero_point = torch.as_tensor(zero_point)
        if scale.dim() == 0:
            if torch.onnx.is_in_onnx_export():  # the op the ONNX exporter writes as QuantizeLinear/DequantizeLinear
                return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
            return fake_quantize_per_tensor_inference(x, scale, int(zero_point), qmin=qmin, qmax=qmax)
        if axis is None:
            raise ValueError("per-channel qparams (1-d) need an axis")
        if not check_finite:
            _check_finite(x, "the tensor to fake-quantize")
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point.to(torch.int32), axis % x.dim(), qmin, qmax)
    s, z = _broadcast_qparams(x, scale, zero_point, axis)
    q = torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax)
    out = (q - z) * s
    lo, hi = (qmin - z) * s, (qmax - z) * s
    inside = (x >= lo) & (x <= hi)
    return torch.where(inside, x + (out - x).detach(), out.detach())


def fake_quantize_per_tensor_inference(x: torch.Tensor, scale: torch.Tensor, zero_point: int, *, qmin: int,
                                       qmax: int) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)`` bit for bit on finite float32
    input, without gradients, in four vectorised passes: ``clamp(round(x * (1 / scale)), qmin - zp, qmax - zp) *
    scale``. (torch's CPU kernel computes the same per element in a scalar loop that also writes a mask, 8x slower
    on a MobileNet activation; it also turns NaN into a code, where this propagates it.) ``scale``: 0-d float32."""
    out = torch.mul(x, 1.0 / scale)
    return out.round_().clamp_(qmin - zero_point, qmax - zero_point).mul_(scale)
