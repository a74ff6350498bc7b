"""Where ExecuTorch's XNNPACK delegate and the simulations part ways on the same calibrated QuantSim.

    python scripts/xnnpack_arithmetic.py        # MobileNetV2 tf2ptq and MobileNetV1 qat, minmax w8a8-pc, 256 images

For each model the QuantSim (128 calibration images) runs on ``executorch-xnnpack`` and is compared, top-1 and
logit SQNR, with: the fake-quant simulation (what a cell's ``agree %`` compares with), the PT2E reference graph
(:func:`~mqbench.backends.pt2e.pt2e_module` run by PyTorch: ``quantized_decomposed`` semantics, which
quantize as ``round(x * (1 / s))`` in float32) and ONNX Runtime's integer simulation (its arithmetic code for
code). Then the same with the images snapped to the input quantizer's grid, so no input sits on a rounding tie.
Printed too: how many input codes ``round(x / s)`` and ``round(x * (1 / s))`` give differently. Needs the real
data (../shared/data or $MQBENCH_DATA) and ``mqbench[executorch]``.
"""

from __future__ import annotations

import torch

from mqbench.backends.executorch import ExecuTorchXnnpack
from mqbench.backends.ort.integer_sim import IntegerSimulation
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.pt2e import pt2e_module
from mqbench.harness import Workspace
from mqbench.metrics.accuracy import agreement
from mqbench.plugins import get_plugins
from mqbench.quant import functional as Q
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme

MODELS = (("mobilenet_v2", "tf2ptq"), ("mobilenet_v1", "qat-1.0-224"))
IMAGES, BATCH = 256, 32


def _logits(model: object, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])  # type: ignore[operator]


def _compare(name: str, deployed: torch.Tensor, reference: torch.Tensor) -> None:
    result = agreement(reference, deployed)
    print(f"    executorch-xnnpack vs {name:28s} top-1 agreement {result['top1_agreement']:.4f}, "
          f"logit SQNR {result['logit_sqnr_db']:.1f} dB, max |diff| {result['max_abs_logit_diff']:.3f}")


def _snap(qsim: QuantSim, x: torch.Tensor) -> torch.Tensor:
    """``x`` moved onto its input quantizer's grid (the dequantized codes): no rounding ties at the input."""
    q = next(iter(qsim.act_quantizers.values()))
    assert q.scale is not None and q.zero_point is not None
    codes = Q.quantize(x, q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax)
    return ((codes - q.zero_point) * q.scale).float()


def main() -> None:
    print(f"CPU ISA: {', '.join(cpu_isa())}")
    ws = Workspace(get_plugins())
    runtime = ExecuTorchXnnpack()
    for name, weights in MODELS:
        preprocess = ws.plugins.models.get(name).get_weights(weights).preprocess
        model, _ = ws.float_model(name, weights)
        qsim = runtime.quantsim(model, parse_scheme("w8a8-pc"))
        calibrate_weights(qsim, minmax_observer)
        calibrate_activations(qsim, ws.split("imagenet", "calib", 128, preprocess), minmax_observer)
        qsim.eval()
        x = next(iter(ws.split("imagenet", "test", IMAGES, preprocess).batches(IMAGES)))[0].clone()
        q = next(iter(qsim.act_quantizers.values()))
        assert q.scale is not None
        divided = torch.round(x / q.scale)
        multiplied = torch.round(x * (1.0 / q.scale.float()))
        print(f"{name} ({weights}) minmax w8a8-pc, {IMAGES} val-1300 images: input codes round(x / s) != "
              f"round(x * (1 / s)): {int((divided != multiplied).sum())} of {x.numel()}")
        deployed = runtime.deploy(qsim)
        reference, integer = pt2e_module(qsim), IntegerSimulation(qsim)
        for label, inputs in (("images as preprocessed", x), ("images snapped to the input grid", _snap(qsim, x))):
            print(f"  {label}:")
            out = _logits(deployed, inputs)
            _compare("fake-quant simulation", out, _logits(qsim, inputs))
            _compare("PT2E reference graph", out, _logits(reference, inputs))
            _compare("ONNX Runtime integer simulation", out, _logits(integer, inputs))


if __name__ == "__main__":
    main()
