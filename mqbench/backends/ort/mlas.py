"""ONNX Runtime's x86-64 integer kernels (MLAS), bit for bit, as pure functions on torch tensors.

A fake-quantization simulation computes every layer in float and rounds once at its output quantizer; ONNX
Runtime's kernels accumulate in int32 and requantize with float32 arithmetic of their own. The two differ at
rounding ties, a few codes in a million at the first layer, and MobileNets multiply those differences block
by block until 1-3% of the top-1 decisions differ (``scripts/ort_rounding_evidence.py``). These functions
reproduce the kernels' arithmetic exactly, so a simulation built on them (:mod:`mqbench.backends.ort.integer_sim`)
predicts the runtime's every code.

Read in onnxruntime's sources (``onnxruntime/core/mlas/lib``, x86-64, and
``providers/cpu/quantization/qlinearconv.cc``) and checked against onnxruntime bit for bit by
``tests/test_mlas.py``:

* **QuantizeLinear** (``quantize.cpp``): ``clamp(x / scale, qmin - zp, qmax - zp)`` in float32 (a division,
  not a multiplication by the reciprocal), rounded half to even, plus the zero point.
* **QLinearConv, QGemm** (``MlasRequantizeOutput``): the int32 accumulator ``sum((x - zp_x) * w) + bias``,
  converted to float32, times the float32 multiplier ``(x_scale * w_scale[c]) / y_scale`` (computed in that
  order), clamped to ``[qmin - zp_y, qmax - zp_y]``, rounded half to even, plus ``zp_y``.
* **QLinearGlobalAveragePool** (``qlgavgpool.cpp``, SSE2 path): ``sum(x) - zp_x * N`` in int32, requantized
  as above with the multiplier ``x_scale / (y_scale * float(N))``.
* **QLinearAdd** (``intrinsics/avx2/qladd_avx2.cpp``, every AVX2 machine): with ``r_a = a_scale / c_scale``
  and ``r_b = b_scale / c_scale`` in float32 and ``fixed = zp_c - (r_a * zp_a + r_b * zp_b)`` (which the
  compiler contracts to ``zp_c - fma(r_a, zp_a, r_b * zp_b)``: the uncontracted form misses 3 codes in a
  million), the code is ``fma(a, r_a, fma(b, r_b, fixed))`` on the raw codes, rounded half to even and
  saturated to the type. (An input of one element takes a broadcast path that adds without fusing; the
  residual adds of a network never do.)

* **The U8S8 dot products** (``QgemmU8X8KernelAvx2.asm``, ``SymQgemmU8KernelAvx512.asm``): with VNNI
  (``vpdpbusds``; AVX512-VNNI, AVX-VNNI, AMX) every product is summed in int32, exactly. Without it (AVX2 or
  AVX512BW alone) ``vpmaddubsw`` multiplies the raw uint8 codes by the int8 weights and adds adjacent pairs of
  products in int16 *with saturation*, then ``vpmaddwd`` widens to int32: a pair over 32767 is cut to 32767
  (:func:`int16_pair_excess`). Pairs are adjacent along the GEMM's K dimension, which for a convolution is the
  NHWC im2col order (kernel row, kernel column, input channel); depthwise convolutions run another kernel that
  widens to int16 first and never saturates. Only two large weights of one sign side by side (``|w_a| + |w_b|``
  over 128) with large input codes can pass 32767.

Machines without AVX2 run a different QLinearAdd (``qladd.cpp``'s SSE2 path); ARM machines requantize some
operators in fixed point. :func:`supported_isa` says whether this machine runs the kernels modelled here.

Codes are carried in float32 tensors (exact for 8-bit integers) and accumulators in float32 or float64:
float32 sums integers exactly while every partial sum stays below 2**24, float64 below 2**53.
"""

from __future__ import annotations

import platform

import torch

F32 = torch.float32
F64 = torch.float64


def supported_isa(flags: list[str]) -> str | None:
    """None when this machine runs the kernels modelled here (x86-64 with AVX2), else why not."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"the integer simulation models ONNX Runtime's x86-64 kernels; this machine is {machine}"
    if "avx2" not in flags:
        return "the integer simulation models ONNX Runtime's AVX2 kernels; this CPU has no AVX2"
    return None


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def sums_pairs_in_int16(flags: list[str]) -> bool:
    """Whether ONNX Runtime's U8S8 kernels on this x86-64 CPU add pairs of products in int16 with saturation
    (no VNNI: ``vpmaddubsw``), rather than every product in int32."""
    return not any(flag in flags for flag in VNNI_FLAGS)


def int16_pair_excess(cols: torch.Tensor, w: torch.Tensor, chunk: int = 64) -> torch.Tensor | None:
    """What ``vpmaddubsw``'s saturation takes off exact int32 dot products: ``cols`` (N, K, L) raw uint8 (or
    int8) activation codes (float32), ``w`` (C, K) int8 weight codes (float32), K in the kernel's order; products of positions
    ``2j, 2j + 1`` are summed and saturated to ``[-32768, 32767]``. Returns ``sum_j (sat(p_j) - p_j)`` as
    (N, C, L) float32 integers, or None where no pair of weights can saturate. Only the pairs that can
    (``255 * (|w_a| + |w_b|) > 32767``) are computed, ``chunk`` at a time."""
    if w.shape[1] % 2:
        cols, w = torch.nn.functional.pad(cols, (0, 0, 0, 1)), torch.nn.functional.pad(w, (0, 1))
    wa, wb = w[:, 0::2], w[:, 1::2]
    out_channel, pair = torch.nonzero((wa.abs() + wb.abs()) * 255 > 32767, as_tuple=True)
    if out_channel.numel() == 0:
        return None
    excess = cols.new_zeros(cols.shape[0], w.shape[0], cols.shape[2])
    for start in range(0, out_channel.numel(), chunk):
        k, j = out_channel[start:start + chunk], pair[start:start + chunk]
        p = cols[:, 2 * j] * wa[k, j].view(1, -1, 1) + cols[:, 2 * j + 1] * wb[k, j].view(1, -1, 1)
        excess.index_add_(1, k, p.clamp(-32768, 32767).sub_(p))
    return excess


def _f32(x: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(x).to(F32)


def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, *, qmin: int,
                    qmax: int, centered: bool = False) -> torch.Tensor:
    """QuantizeLinear on a float32 tensor: integer codes (float32). ``scale``/``zero_point`` broadcast.
    ``centered``: the codes minus the zero point (what an integer kernel consumes), one pass fewer."""
    zp = torch.as_tensor(zero_point).to(F32)
    v = x.to(F32) / _f32(scale)
    v = torch.minimum(torch.maximum(v, qmin - zp), qmax - zp)
    return torch.round(v) if centered else torch.round(v) + zp


def dequantize_linear(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int) -> torch.Tensor:
    """DequantizeLinear: ``(codes - zero_point) * scale`` in float32."""
    return (codes.to(F32) - torch.as_tensor(zero_point).to(F32)) * _f32(scale)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: torch.Tensor | int, *, qmin: int,
               qmax: int, centered: bool = False, overwrite: bool = False) -> torch.Tensor:
    """``MlasRequantizeOutput``: int32 accumulators (float32/64 holding integers) to output codes (float32).
    ``multiplier`` is float32, broadcast against ``acc`` (one per output channel, or one). ``centered``: the
    codes minus the zero point. ``overwrite``: a float32 ``acc`` is the caller's scratch, computed on in place.
    (In place either way: torch's out-of-place multiplication broadcasting a per-channel multiplier is several
    times slower than a copy and an in-place one.)"""
    v = acc.to(F32, copy=not overwrite).mul_(_f32(multiplier))
    if isinstance(zero_point, int):
        v = v.clamp_(qmin - zero_point, qmax - zero_point).round_()
        return v if centered else v.add_(zero_point)
    zp = zero_point.to(F32)
    v = torch.round(torch.minimum(torch.maximum(v, qmin - zp), qmax - zp))
    return v if centered else v + zp


def conv_multiplier(x_scale: torch.Tensor, w_scale: torch.Tensor, y_scale: torch.Tensor) -> torch.Tensor:
    """QLinearConv's and QGemm's requantization multiplier, ``(x_scale * w_scale) / y_scale`` in float32."""
    return (_f32(x_scale) * _f32(w_scale)) / _f32(y_scale)


def bias_codes(bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """A float bias as int32 codes at scale ``float32(x_scale * w_scale)`` (what the exporter stores; float64)."""
    scale = (_f32(x_scale) * _f32(w_scale)).to(F64)
    return torch.clamp(torch.round(bias.to(F64) / scale), -(2 ** 31), 2 ** 31 - 1)


def pool_multiplier(x_scale: torch.Tensor, y_scale: torch.Tensor, count: int) -> torch.Tensor:
    """QLinearGlobalAveragePool's multiplier, ``x_scale / (y_scale * float(count))`` in float32."""
    return _f32(x_scale) / (_f32(y_scale) * _f32(float(count)))


def global_average_pool(codes: torch.Tensor, x_scale: torch.Tensor, x_zero_point: int, y_scale: torch.Tensor,
                        y_zero_point: int, *, qmin: int, qmax: int, centered: bool = False) -> torch.Tensor:
    """QLinearGlobalAveragePool over the last two dimensions of NCHW ``codes`` (kept as 1x1); ``centered``: the
    output codes minus their zero point."""
    count = codes.shape[-1] * codes.shape[-2]
    acc = codes.to(F64).sum(dim=(-2, -1), keepdim=True) - float(x_zero_point * count)
    return requantize(acc, pool_multiplier(x_scale, y_scale, count), y_zero_point, qmin=qmin, qmax=qmax,
                      centered=centered)


def _fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``fma(a, b, c)``: one rounding of the exact ``a * b + c``. Exact here because ``a`` holds 8-bit
    codes: ``a * b`` needs at most 32 significant bits and the float64 sum keeps every bit of it and of ``c``
    (their exponents lie within 20 bits of each other for quantization scales), so float64 rounds nothing
    and the single conversion to float32 is the fused operation's rounding."""
    return (a.to(F64) * b.to(F64) + c.to(F64)).to(F32)


def qlinear_add(a: torch.Tensor, a_scale: torch.Tensor, a_zero_point: int, b: torch.Tensor, b_scale: torch.Tensor,
                b_zero_point: int, c_scale: torch.Tensor, c_zero_point: int, *, qmin: int, qmax: int) -> torch.Tensor:
    """QLinearAdd as the AVX2 kernel computes it (module docstring); codes in, codes out (float32)."""
    ratio_a = _f32(a_scale) / _f32(c_scale)
    ratio_b = _f32(b_scale) / _f32(c_scale)
    # ``zp_c - (r_a * zp_a + r_b * zp_b)`` as the compiler contracts it: zp_c - fma(r_a, zp_a, r_b * zp_b).
    fixed = _f32(float(c_zero_point)) - _fma_f32(ratio_a, _f32(float(a_zero_point)), ratio_b * float(b_zero_point))
    v = _fma_f32(a, ratio_a, _fma_f32(b, ratio_b, fixed))
    return torch.clamp(torch.round(v), qmin, qmax)


__all__ = ["VNNI_FLAGS", "bias_codes", "conv_multiplier", "dequantize_linear", "global_average_pool",
           "int16_pair_excess", "pool_multiplier", "qlinear_add", "quantize_linear", "requantize",
           "sums_pairs_in_int16", "supported_isa"]
