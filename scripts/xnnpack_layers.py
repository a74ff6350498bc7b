"""ExecuTorch's XNNPACK delegate against the simulations layer by layer, and its convolution's requantization.

    python scripts/xnnpack_layers.py [model weights]     # default mobilenet_v1 qat-1.0-224, minmax w8a8-pc

The PT2E graph of the calibrated QuantSim (:func:`~mqbench.backends.pt2e.pt2e_module`) is cut after an
activation quantizer, lowered to XNNPACK and run on 16 val-1300 images; its output codes are compared with the
fake-quant simulation's and the PT2E reference graph's (run by PyTorch) at the same quantizer, from the input to
the logits. Then the first convolution is computed from its integer codes: int32 accumulator, bias codes, and
three float32 forms of the requantization multiplier, each counted against XNNPACK's output codes. Needs the
real data (../shared/data or $MQBENCH_DATA) and ``mqbench[executorch]``.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import fx

from mqbench.backends import Runtime
from mqbench.backends.executorch import ExecuTorchModel, ExecuTorchXnnpack
from mqbench.backends.pt2e import Pt2eConv2d, pt2e_module
from mqbench.harness import Workspace
from mqbench.layers import tf_same_pad
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import Quantizer, QuantSim
from mqbench.schemes import parse_scheme


def cut(gm: fx.GraphModule, name: str) -> fx.GraphModule:
    """``gm`` computing only up to the node called ``name``."""
    graph = copy.deepcopy(gm.graph)
    next(n for n in graph.nodes if n.op == "output").args = (next(n for n in graph.nodes if n.name == name),)
    module = fx.GraphModule(gm, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def first_conv(reference: fx.GraphModule, x: torch.Tensor, et_codes: torch.Tensor, out_scale: torch.Tensor,
               out_zero_point: int) -> None:
    conv = next(m for m in reference.modules() if isinstance(m, Pt2eConv2d))
    si, sw, so = torch.tensor(conv.input.scale), conv.weight_scale.float(), out_scale.float()
    xq = torch.clamp(torch.round(x * (1.0 / si)) + conv.input.zero_point, -128, 127) - conv.input.zero_point
    if conv.tf_same:
        xq = tf_same_pad(xq, conv.kernel_size, conv.stride, conv.dilation)  # type: ignore[arg-type]
    acc = F.conv2d(xq.double(), conv.codes.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert conv.bias is not None
    acc = (acc + torch.round(conv.bias.double() / (si * sw).double()).view(1, -1, 1, 1)).float()
    hi = float(torch.clamp(torch.round(6.0 / so) + out_zero_point, max=127))  # its ReLU6
    forms = {"(s_x * s_w) / s_y": (si * sw) / so, "s_x * (s_w / s_y)": si * (sw / so),
             "float64, then float32": ((si.double() * sw.double()) / so.double()).float()}
    print("first convolution, acc * multiplier rounded half to even, against XNNPACK's codes:")
    for label, multiplier in forms.items():
        codes = torch.clamp(torch.round(acc * multiplier.view(1, -1, 1, 1)) + out_zero_point, out_zero_point, hi)
        print(f"  multiplier {label:22s} differs on {int((codes != et_codes).sum())} of {codes.numel()} codes")


def calibrated(runtime: Runtime, name: str, weights: str) -> tuple[QuantSim, torch.Tensor, list[fx.Node], list[int]]:
    """``name``'s QuantSim for ``runtime`` calibrated with minmax w8a8-pc on 128 images, 16 val-1300 images, its
    activation quantizers' nodes and the indices of those compared."""
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get(name).get_weights(weights).preprocess
    model, _ = ws.float_model(name, weights)
    qsim = runtime.quantsim(model, parse_scheme("w8a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, ws.split("imagenet", "calib", 128, preprocess), minmax_observer)
    qsim.eval()
    x = next(iter(ws.split("imagenet", "test", 16, preprocess).batches(16)))[0].clone()
    modules = dict(qsim.model.named_modules())
    points = [n for n in qsim.model.graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)], Quantizer)]
    return qsim, x, points, sorted({0, 1, 2, 3, 4, 6, 8, 12, 16, 20, len(points) - 3, len(points) - 2, len(points) - 1})


def main(name: str, weights: str) -> None:
    qsim, x, points, picks = calibrated(ExecuTorchXnnpack(), name, weights)
    reference = pt2e_module(qsim)
    modules = dict(qsim.model.named_modules())
    print(f"{name} ({weights}) minmax w8a8-pc, 16 images: output codes at activation quantizer k (int8 codes)")
    first: tuple[torch.Tensor, torch.Tensor, int] | None = None
    for k in picks:
        node, q = points[k], modules[str(points[k].target)]
        assert isinstance(q, Quantizer) and q.scale is not None and q.zero_point is not None
        zero_point = int(q.zero_point) - 128

        def codes(t: torch.Tensor, q: Quantizer = q, zero_point: int = zero_point) -> torch.Tensor:
            return torch.round(t / q.scale) + zero_point

        with torch.no_grad():
            sim, ref = codes(cut(qsim.model, node.name)(x)), codes(cut(reference, node.name)(x))
        et = codes(ExecuTorchModel(cut(reference, node.name), 2)(x))
        print(f"  {k:3d} {node.target!s:38s} {sim.numel():9d} codes: XNNPACK != simulation "
              f"{int((et != sim).sum()):7d} (max {int((et - sim).abs().max())}), != PT2E reference "
              f"{int((et != ref).sum()):7d}; simulation != PT2E reference {int((sim != ref).sum())}")
        if k == 1:
            first = (et, q.scale, zero_point)
    if first is not None:
        first_conv(reference, x, *first)


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) > 2 else ("mobilenet_v1", "qat-1.0-224")))
