"""XNNPACK's int8 arithmetic, code for code: the integer simulation of ``litert-xnnpack`` and ``executorch-xnnpack``
(XNNPACK's x86-64 kernels).

Read off XNNPACK's outputs operator by operator, each fed XNNPACK's own input codes (``scripts/xnnpack_ops.py``,
output in ``results/bench/``): on int8 activations (the QuantSim's uint8 code minus 128) XNNPACK's convolutions,
depthwise convolutions, fully connected layer and global mean compute what ONNX Runtime's kernels compute
(:class:`~mqbench.backends.ort.integer_sim.IntegerSimulation`: int32 accumulation, requantization by the float32
multiplier ``(s_x * s_w) / s_y`` rounded half to even, the mean's ``s_x / (s_y * n)``), without the int16 pair
saturation of CPUs without VNNI (XNNPACK's x86 kernels widen to int32 before adding). What differs is the bias:
the PT2E graph holds it as float32 values on its int32 grid (the QuantSim's own fake-quantized bias), and
litert-torch's converter turns each back into an int32 code as ``round(float64(b) / float64(s_x * s_w))``,
saturated to int32 (ExecuTorch's XNNPACK lowering gives the same codes: the deployed logits equal this simulation's
on both). Where the QuantSim's float32 rounding of a bias and ONNX Runtime's float64 rounding part ways (a code off
by one on a few channels), or a code passes float32's 24 bits, or a dead channel's tiny weight scale puts it beyond
int32, the deployed bias is the converter's, and so is this simulation's: with ONNX Runtime's bias codes instead,
XNNPACK's outputs differ from it on 1 to 140 codes per layer of MobileNetV1, and its top-1 on 1-2% of images.

On ARM XNNPACK picks other requantization kernels (fixed-point ``rndnu`` among them): :func:`simulation_unsupported`.
"""

from __future__ import annotations

import torch

from mqbench.backends.ort.integer_sim import IntegerSimulation
from mqbench.quant.qsim import QuantConv2d, QuantLinear, QuantSim, quantized_bias

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


__all__ = ["XnnpackSimulation", "converter_bias_codes", "simulation_unsupported"]
