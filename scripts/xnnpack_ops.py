"""XNNPACK's operators one by one, each fed XNNPACK's own input codes, against the XNNPACK integer simulation: the
evidence behind :mod:`mqbench.backends.xnnpack`.

    python scripts/xnnpack_ops.py [model weights]    # default: both MobileNets, minmax w8a8-pc, 16 val-1300 images

The QuantSim's PT2E graph for ``litert-xnnpack`` is converted with every activation quantizer's output as an extra
model output, so one run of LiteRT's XNNPACK delegate returns every intermediate tensor's int8 codes. The integer
simulation (:class:`~mqbench.backends.xnnpack.XnnpackSimulation`) then runs the graph with each quantizer's codes
replaced by XNNPACK's: every operator sees exactly XNNPACK's inputs, and its output codes are compared with
XNNPACK's (codes that differ, the largest difference): once with ONNX Runtime's bias codes (the float bias rounded
in float64, as ``ort-qdq``'s export does), once with the codes litert-torch's converter makes of the PT2E graph's
float32 bias. Needs the real data (../shared/data or $MQBENCH_DATA) and ``mqbench[litert]``.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import torch
from xnnpack_layers import calibrated  # type: ignore[import-not-found]  # scripts/ is on the path of a script run from it

from mqbench.backends.litert import LiteRtXnnpack, convert
from mqbench.backends.ort.integer_sim import Codes, IntegerSimulation, Pending
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.pt2e import LITERT, QuantizeDequantize, pt2e_module
from mqbench.backends.xnnpack import XnnpackSimulation
from mqbench.quant import functional as Q
from mqbench.quant.qsim import Quantizer, QuantSim

MODELS = (("mobilenet_v1", "qat-1.0-224"), ("mobilenet_v2", "tf2ptq"))


def xnnpack_codes(qsim: QuantSim, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every activation quantizer's int8 codes as LiteRT's XNNPACK delegate computes them, by quantizer name."""
    from ai_edge_litert.interpreter import Interpreter

    module = pt2e_module(qsim, LITERT)
    names = [str(n.target) for n in module.graph.nodes
             if n.op == "call_module" and isinstance(module.get_submodule(str(n.target)), QuantizeDequantize)]
    nodes = {str(n.target): n for n in module.graph.nodes if n.op == "call_module"}
    output = next(n for n in module.graph.nodes if n.op == "output")
    output.args = ((output.args[0], *(nodes[name] for name in names)),)
    module.recompile()
    interpreter = Interpreter(model_content=convert(module, x, quantized=True), num_threads=2)
    (given,) = interpreter.get_input_details()
    scale, zero_point = given["quantization"]
    codes = Q.quantize(x, torch.tensor(scale), torch.tensor(zero_point), qmin=-128, qmax=127).to(torch.int8)
    outputs = interpreter.get_signature_runner()(args_0=codes.numpy())  # output_k: the graph's k-th output
    assert len(outputs) == len(names) + 1
    quantizers = dict(qsim.model.named_modules())
    result = {}
    for k, name in enumerate(names, 1):
        value = torch.from_numpy(outputs[f"output_{k}"].copy())
        if value.dtype == torch.float32:  # the logits come out dequantized: (q - z) * s, so the codes come back exact
            q = quantizers[name]
            assert isinstance(q, Quantizer) and q.scale is not None and q.zero_point is not None
            value = torch.round(value / q.scale) + (int(q.zero_point) - 128)
        result[quantizers[name].name] = value.float()  # type: ignore[union-attr]
    return result


class FedSimulation(XnnpackSimulation):
    """The integer simulation with every activation quantizer's codes replaced by XNNPACK's, after comparing them.
    ``ort_bias``: ONNX Runtime's bias codes (float64 rounding of the float bias) instead of the converter's."""

    def __init__(self, qsim: QuantSim, xnnpack: dict[str, torch.Tensor], ort_bias: bool = False) -> None:
        super().__init__(qsim)
        if ort_bias:
            self._bias_codes = IntegerSimulation._bias_codes  # type: ignore[method-assign]
        self.xnnpack = xnnpack
        self.report: list[tuple[str, str, int, int, float]] = []  # quantizer, operator, codes differing, of, max

    def _quantize(self, quantizer: Quantizer, value: Any) -> Codes:
        what = value.what if isinstance(value, Pending) else ("input" if not isinstance(value, Codes) else "pass")
        codes = super()._quantize(quantizer, value)
        theirs = self.xnnpack[quantizer.name]
        if theirs.dim() == 4 and theirs.shape != codes.q.shape:  # litert-torch left this extra output in NHWC
            assert theirs.permute(0, 3, 1, 2).shape == codes.q.shape, (theirs.shape, codes.q.shape)
            theirs = theirs.permute(0, 3, 1, 2)
        ours = codes.q.reshape(theirs.shape)
        if what != "pass":
            differ = ours != theirs
            self.report.append((quantizer.name, what, int(differ.sum()), ours.numel(),
                                float((ours - theirs).abs().max())))
        c = (theirs - codes.zero_point).reshape(codes.c.shape)
        if c.dim() == 4:
            c = c.contiguous(memory_format=torch.channels_last)
        return Codes(c, codes.scale, codes.zero_point, codes.bound)


def main(models: tuple[tuple[str, str], ...]) -> None:
    print(f"CPU ISA: {', '.join(cpu_isa())}")
    for name, weights in models:
        qsim, x, _, _ = calibrated(LiteRtXnnpack(), name, weights)
        codes = xnnpack_codes(qsim, x)
        for ort_bias, label in ((True, "XnnpackSimulation with ONNX Runtime's float64 bias codes"),
                                (False, "XnnpackSimulation (litert-torch's bias codes)")):
            fed = FedSimulation(qsim, codes, ort_bias)
            fed(x)
            print(f"\n{name} ({weights}) minmax w8a8-pc, 16 images: each operator from XNNPACK's input codes, its "
                  f"output codes against {label}")
            kinds: Counter[str] = Counter()
            for quantizer, what, differ, total, largest in fed.report:
                kinds[what.split()[0]] += differ
                print(f"  {quantizer:40s} {what:36s} {differ:8d} of {total:9d} differ, max {largest:.0f}")
            print("  differing codes by operator kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main(((sys.argv[1], sys.argv[2]),) if len(sys.argv) == 3 else MODELS)
