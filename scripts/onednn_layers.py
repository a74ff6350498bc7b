"""``torchao-x86`` (Inductor + oneDNN int8) against the simulations layer by layer, and its convolution's requantization.

    python scripts/onednn_layers.py [model weights]     # default mobilenet_v1 qat-1.0-224, minmax w8a8-pc

The X86 Inductor PT2E graph of the calibrated QuantSim (:func:`~mqbench.backends.pt2e.pt2e_module` with
``X86_INDUCTOR``) is cut after an activation quantizer, compiled as ``torchao-x86`` compiles it and run on 16 val-1300
images; its output codes are compared with the fake-quant simulation's, the PT2E reference graph's (run by
PyTorch) and the oneDNN integer simulation's (:func:`~mqbench.backends.torchao_x86.onednn_simulation`, which these
comparisons were used to write) at the same quantizer. Then the first convolution is computed from its integer
codes (int32 accumulator of uint8 input codes minus the zero point times int8 weight codes) in candidate float32
forms of oneDNN's requantization with the float bias, each counted against what oneDNN wrote. Needs the real data
(../shared/data or $MQBENCH_DATA) and ``mqbench[torchao]``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import fx
from xnnpack_layers import calibrated, cut  # type: ignore[import-not-found]  # scripts/ is on the path of a script run from it

from mqbench.backends.pt2e import X86_INDUCTOR, Pt2eConv2d, pt2e_module
from mqbench.backends.torchao_x86 import InductorModel, TorchaoX86, onednn_simulation
from mqbench.layers import tf_same_pad
from mqbench.quant.qsim import Quantizer


def first_conv(reference: fx.GraphModule, x: torch.Tensor, codes: torch.Tensor, out_scale: float,
               out_zero_point: int) -> None:
    conv = next(m for m in reference.modules() if isinstance(m, Pt2eConv2d))
    si, sw, so = torch.tensor(conv.input.scale), conv.weight_scale.float(), torch.tensor(out_scale)
    xq = torch.clamp(torch.round(x * (1.0 / si)) + conv.input.zero_point, 0, 255) - conv.input.zero_point
    if conv.tf_same:
        xq = tf_same_pad(xq, conv.kernel_size, conv.stride, conv.dilation)  # type: ignore[arg-type]
    acc = F.conv2d(xq.double(), conv.codes.double(), None, conv.stride, conv.padding, conv.dilation,
                   conv.groups).float()
    assert conv.bias is not None
    bias, scale = conv.bias.float().view(1, -1, 1, 1), (si * sw).float().view(1, -1, 1, 1)
    bias_codes = torch.round(conv.bias.double() / (si * sw).double()).float().view(1, -1, 1, 1)

    fma = (acc.double() * scale.double() + bias.double()).float()  # one rounding, as a fused multiply-add

    def relu6(v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(v, 0.0, 6.0)

    forms = {
        "round(relu6(acc * (s_x s_w) + b) / s_y)": torch.round(relu6(acc * scale + bias) / so),
        "round(relu6(acc * (s_x s_w) + b) * (1 / s_y))": torch.round(relu6(acc * scale + bias) * (1.0 / so)),
        "round(relu6((acc * s_x) * s_w + b) * (1 / s_y))": torch.round(relu6(acc * si * sw.view(1, -1, 1, 1) + bias)
                                                                   * (1.0 / so)),
        "round(relu6(fma(acc, s_x s_w, b)) * (1 / s_y))": torch.round(relu6(fma) * (1.0 / so)),
        "round(relu6(fma(acc, s_x s_w, b)) / s_y)": torch.round(relu6(fma) / so),
        "round((acc + b_int32) * ((s_x s_w) / s_y)), ReLU6 on codes": torch.clamp(
            torch.round((acc + bias_codes) * (scale / so)), 0, torch.round(6.0 / so)),
    }
    print("first convolution against oneDNN's codes (float32, rounded half to even, + zero point, saturated):")
    for label, rounded in forms.items():
        candidate = torch.clamp(rounded + out_zero_point, 0, 255)
        print(f"  {label:58s} differs on {int((candidate != codes).sum())} of {codes.numel()} codes "
              f"(max {int((candidate - codes).abs().max())})")


def main(name: str, weights: str) -> None:
    qsim, x, points, picks = calibrated(TorchaoX86(), name, weights)
    reference, integer = pt2e_module(qsim, X86_INDUCTOR), onednn_simulation(qsim)
    modules = dict(qsim.model.named_modules())
    print(f"{name} ({weights}) minmax w8a8-pc, 16 images: output codes at activation quantizer k (uint8 codes)")
    first: tuple[torch.Tensor, float, int] | None = None
    for k in picks:
        node, q = points[k], modules[str(points[k].target)]
        assert isinstance(q, Quantizer) and q.scale is not None and q.zero_point is not None

        def codes(t: torch.Tensor, q: Quantizer = q) -> torch.Tensor:
            return torch.round(t / q.scale) + q.zero_point

        with torch.no_grad():
            sim, ref = codes(cut(qsim.model, node.name)(x)), codes(cut(reference, node.name)(x))
            exact = codes(cut(integer, node.name)(x))
        onednn = codes(InductorModel(cut(reference, node.name), quantized=True)(x))
        print(f"  {k:3d} {node.target!s:38s} {sim.numel():9d} codes: oneDNN != fake-quant simulation "
              f"{int((onednn != sim).sum()):7d} (max {int((onednn - sim).abs().max())}), != PT2E reference "
              f"{int((onednn != ref).sum()):7d}, != oneDNN integer simulation {int((onednn != exact).sum())}")
        if k == 1:
            first = (onednn, float(q.scale), int(q.zero_point))
    if first is not None:
        first_conv(reference, x, *first)


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) > 2 else ("mobilenet_v1", "qat-1.0-224")))
