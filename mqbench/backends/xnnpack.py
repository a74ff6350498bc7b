"""XNNPACK's int8 arithmetic, code for code: the integer simulation of ``litert-xnnpack`` and ``executorch-xnnpack``
(XNNPACK's x86-64 kernels).

Read off XNNPACK's outputs operator by operator, each fed XNNPACK's own input codes (``scripts/xnnpack_ops.py``,
output in ``results/bench/``), and in XNNPACK's sources: on int8 activations (the QuantSim's uint8 code minus 128)
XNNPACK's convolutions, depthwise convolutions and fully connected layer compute what ONNX Runtime's kernels compute
(:class:`~mqbench.backends.ort.integer_sim.IntegerSimulation`: int32 accumulation, requantization by the float32
multiplier ``(s_x * s_w) / s_y`` rounded half to even), without the int16 pair saturation of CPUs without VNNI.
Three things differ, each modelled here:

* the bias: the PT2E graph holds it as float32 values on its int32 grid (the QuantSim's own fake-quantized bias),
  and litert-torch's converter turns each back into a code as ``round(float64(b) / float64(s_x * s_w))``,
  saturated to int32 (ExecuTorch's lowering gives the same codes). Where the QuantSim's float32 rounding of a bias
  and ONNX Runtime's float64 one part ways (a code off by one) or a code passes float32's 24 bits (off by up to
  128), ONNX Runtime's codes miss 1 to 140 output codes per layer of MobileNetV1 (both saturate at int32);
* the residual add is fixed point (``xnn_qs8_vadd_minmax``, :func:`xnnpack_add`): 21-bit multipliers, round half up;
* the global mean's multiplier is ``float32(s_x / s_y) * float32(1 / n)`` (:func:`mean_multiplier`), one float32
  step from ONNX Runtime's ``s_x / (s_y * n)`` for some scales.

On ARM XNNPACK picks other requantization kernels (fixed-point ``rndnu`` among them): :func:`simulation_unsupported`.
"""

from __future__ import annotations

import math

import torch

from mqbench.backends import w8a8_problem
from mqbench.backends.ort.integer_sim import Codes, IntegerSimulation
from mqbench.quant.qsim import QuantConv2d, QuantLinear, QuantSim, quantized_bias
from mqbench.schemes import QuantScheme

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def converter_bias_codes(bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """The int32 codes litert-torch's converter gives a float32 ``bias`` at scale ``float32(x_scale * w_scale)``:
    ``round(float64(bias) / float64(scale))`` (half to even), saturated to int32; float64 holding integers."""
    scale = (x_scale.float() * w_scale.float()).double()
    return torch.clamp(torch.round(bias.double() / scale), INT32_MIN, INT32_MAX)


def simulation_unsupported(machine: str | None = None) -> str | None:
    """Why :class:`XnnpackSimulation` does not model this machine's XNNPACK kernels, or None (x86-64: XNNPACK's x86
    int8 kernels widen products to int32 and requantize in float32; checked on AVX-512 VNNI)."""
    import platform

    machine = machine or platform.machine()
    if machine.lower() in ("x86_64", "amd64"):
        return None
    return f"none on {machine}: XNNPACK's int8 kernels there requantize otherwise (fixed-point rndnu), not modelled"


def add_multipliers(a_scale: torch.Tensor, b_scale: torch.Tensor, y_scale: torch.Tensor) -> tuple[int, int, int]:
    """XNNPACK's fixed-point form of ``a * (s_a / s_y) + b * (s_b / s_y)`` (``xnn_init_qs8_add_minmax_scalar_params``):
    the two float32 ratios scaled by ``2**shift`` and rounded to integers, the larger in ``[2**20, 2**21)``."""
    ratios = [float(a_scale.float() / y_scale.float()), float(b_scale.float() / y_scale.float())]
    exponent = math.frexp(max(abs(r) for r in ratios))[1] - 1  # the float32 exponent of the larger ratio
    shift = 20 - exponent
    a_multiplier, b_multiplier = (round(r * 2.0 ** shift) for r in ratios)  # exact scaling, then half to even
    return a_multiplier, b_multiplier, shift


def xnnpack_add(a: torch.Tensor, a_scale: torch.Tensor, a_zero_point: int, b: torch.Tensor, b_scale: torch.Tensor,
                b_zero_point: int, y_scale: torch.Tensor, y_zero_point: int, *, qmin: int, qmax: int) -> torch.Tensor:
    """XNNPACK's quantized add (``xnn_qs8_vadd_minmax`` kernels) on codes ``a`` and ``b`` (float32 holding integers):
    ``floor((m_a * (a - z_a) + m_b * (b - z_b) + 2**(shift - 1)) / 2**shift) + z_y`` in integers, then the clamp;
    codes out (float32). Rounds half up, and its multipliers keep 21 bits: ONNX Runtime's float32 QLinearAdd
    differs on a few codes in a million."""
    a_multiplier, b_multiplier, shift = add_multipliers(a_scale, b_scale, y_scale)
    bias = (1 << (shift - 1)) - a_multiplier * a_zero_point - b_multiplier * b_zero_point
    acc = a.to(torch.int64) * a_multiplier + b.to(torch.int64) * b_multiplier + bias
    return torch.clamp(torch.div(acc, 1 << shift, rounding_mode="floor") + y_zero_point, qmin, qmax).to(torch.float32)


def mean_multiplier(x_scale: torch.Tensor, y_scale: torch.Tensor, count: int) -> torch.Tensor:
    """XNNPACK's global mean multiplier: ``float32(s_x / s_y) * float32(1 / n)`` in float32 (``reduce-nd.c``: the
    operator's scale, multiplied by ``1.0f / n`` at reshape), not ONNX Runtime's ``s_x / (s_y * n)``."""
    ratio = x_scale.float() / y_scale.float()
    return ratio * torch.tensor(1.0 / count, dtype=torch.float32)


def xnnpack_global_mean(c: torch.Tensor, x_scale: torch.Tensor, y_scale: torch.Tensor, y_zero_point: int, *,
                        qmin: int, qmax: int) -> torch.Tensor:
    """The mean over the last two dimensions of centred codes ``c`` (``q - z_x``, kept as 1x1): the int32 sum, in
    float32 times :func:`mean_multiplier`, rounded half to even; centred output codes (``q - z_y``)."""
    count = c.shape[-1] * c.shape[-2]
    acc = c.to(torch.float64).sum(dim=(-2, -1), keepdim=True).to(torch.float32)
    v = torch.round(acc * mean_multiplier(x_scale, y_scale, count))
    return torch.clamp(v, qmin - y_zero_point, qmax - y_zero_point)


def scheme_problem(scheme: QuantScheme, runtime: str) -> str | None:
    """Why XNNPACK's int8 kernels (under ``runtime``, e.g. "LiteRT") cannot run ``scheme``, or None: 8-bit weights
    and activations, symmetric weights, full 8-bit activation codes."""
    problem = w8a8_problem(scheme, f"{runtime}'s XNNPACK int8 kernels")
    if problem:
        return problem
    if not scheme.weight_symmetric:
        return f"{runtime}'s XNNPACK int8 kernels take symmetric weights (zero point 0): drop -asym"
    if scheme.reduce_range:
        return f"{runtime} stores full 8-bit activations: drop -rr"
    return None


class XnnpackSimulation(IntegerSimulation):
    """A calibrated QuantSim in XNNPACK's int8 arithmetic as LiteRT deploys it (module docstring)."""

    def __init__(self, qsim: QuantSim) -> None:
        super().__init__(qsim, signed_activations=True, int16_pairs=False)

    @staticmethod
    def _bias_codes(layer: QuantConv2d | QuantLinear, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        """The converter's codes of the PT2E graph's float32 bias (the QuantSim's fake-quantized bias)."""
        bias = quantized_bias(layer.bias, layer.weight_quantizer, layer.input_quantizer)
        assert bias is not None
        return converter_bias_codes(bias.detach(), x_scale, w_scale)

    @staticmethod
    def _add_codes(a: Codes, b: Codes, scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
        return xnnpack_add(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, scale, zp, qmin=qmin, qmax=qmax)

    @staticmethod
    def _mean_codes(x: Codes, scale: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
        return xnnpack_global_mean(x.c, x.scale, scale, zp, qmin=qmin, qmax=qmax)


__all__ = ["XnnpackSimulation", "add_multipliers", "converter_bias_codes", "scheme_problem", "simulation_unsupported",
           "xnnpack_add"]
