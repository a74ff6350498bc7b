"""Where simulation and ONNX Runtime's integer kernels part: evidence for the agreement figures.

For one model and scheme (minmax calibration, as ``mqbench run`` does it) this exports the QuantSim as QDQ
ONNX and runs the same graph two ways in ONNX Runtime:

* ``reference``: graph optimizations off, so every QuantizeLinear / DequantizeLinear / Conv runs as the ONNX
  specification defines it, in float (what a fake-quant simulation computes);
* ``integer``: all optimizations on, every group fused into an integer kernel (QLinearConv, ...), int32
  accumulation and the kernel's own requantization (``float(acc) * (s_x * s_w / s_y)``, round half to even).

It prints the top-1 agreement and logit SQNR of each pair among the QuantSim, the reference and the integer
run, and, for each quantized activation in graph order, the share of its codes on which the reference and the
integer kernels differ and the largest difference. Codes that differ by one step at the first layers (ties of
the rounding, a few per million) that then multiply layer by layer are the signature of rounding-order
differences, not of a wrong quantization parameter (which would differ everywhere from its layer on).

    python scripts/ort_rounding_evidence.py mobilenet_v2 tf2ptq --scheme w8a8-pc --images 256

The arithmetic of those kernels (QLinearConv / QGemm requantization, QLinearAdd, QLinearGlobalAveragePool) is
reproduced in :mod:`mqbench.backends.ort.mlas`; the integer simulation built on it (``integer sim`` below,
:class:`mqbench.backends.ort.integer_sim.IntegerSimulation`) gives the integer run's logits bit for bit.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from mqbench.backends.ort.export import export_qdq
from mqbench.backends.ort.integer_sim import IntegerSimulation
from mqbench.backends.ort.runtime import OrtQDQ
from mqbench.data import Split
from mqbench.data.paths import DATA_ENV
from mqbench.harness.workspace import Workspace
from mqbench.metrics.accuracy import agreement
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme


def parse_args(description: str, images: int | None) -> argparse.Namespace:
    """The arguments every evidence script takes (model, weights, scheme, data sizes, data folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model")
    parser.add_argument("weights")
    parser.add_argument("--scheme", default="w8a8-pc")
    parser.add_argument("--dataset", default="imagenet")
    parser.add_argument("--calib", type=int, default=512, help="calibration images (default 512, as the suite)")
    parser.add_argument("--images", type=int, default=images,
                        help=f"evaluation images compared (default {images or 'all'})")
    parser.add_argument("--data-dir", help=f"real data folder (default ${DATA_ENV} or ../shared/data)")
    args = parser.parse_args()
    if args.data_dir:
        os.environ[DATA_ENV] = args.data_dir
    return args


def minmax_qsim(args: argparse.Namespace) -> tuple[QuantSim, Split]:
    """The QuantSim placed for ONNX Runtime and calibrated with minmax, as ``mqbench run`` does it, and the
    evaluation images."""
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get(args.model).get_weights(args.weights).preprocess
    calib = ws.split(args.dataset, "calib", args.calib, preprocess)
    evalset = ws.split(args.dataset, "test", args.images, preprocess)
    model, _ = ws.float_model(args.model, args.weights)
    qsim = OrtQDQ().prepare(model, parse_scheme(args.scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    return qsim.eval(), evalset


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], images=256)
    import onnx
    import onnxruntime as ort

    qsim, evalset = minmax_qsim(args)
    x = torch.cat([b for b, _ in evalset.batches(256)])
    graph = export_qdq(qsim, x[:1])
    points = [n.output[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    del graph.graph.output[:]
    for name in [*points, "logits"]:
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))

    def session(level: object) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    reference_session = session(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    integer_session = session(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    differing = dict.fromkeys(points, 0)
    largest = dict.fromkeys(points, 0)
    sizes = dict.fromkeys(points, 0)
    logits: dict[str, list[torch.Tensor]] = {"sim": [], "reference": [], "integer": [], "integer sim": []}
    exact = IntegerSimulation(qsim)
    for batch in x.split(64):  # batch by batch: every activation of every image would not fit in memory
        reference = dict(zip([*points, "logits"], reference_session.run(None, {"input": batch.numpy()}), strict=True))
        integer = dict(zip([*points, "logits"], integer_session.run(None, {"input": batch.numpy()}), strict=True))
        with torch.no_grad():
            logits["sim"].append(qsim(batch))
        logits["reference"].append(torch.from_numpy(reference["logits"]))
        logits["integer"].append(torch.from_numpy(integer["logits"]))
        logits["integer sim"].append(exact(batch))
        for name in points:
            diff = integer[name].astype(np.int32) - reference[name].astype(np.int32)
            differing[name] += int(np.count_nonzero(diff))
            largest[name] = max(largest[name], int(np.abs(diff).max()))
            sizes[name] += diff.size
    print(f"{args.model}:{args.weights} {args.scheme}, {len(x)} images")
    for a, b in (("sim", "reference"), ("reference", "integer"), ("sim", "integer"), ("integer sim", "integer")):
        res = agreement(torch.cat(logits[a]), torch.cat(logits[b]))
        sqnr = res["logit_sqnr_db"]
        print(f"  {a:11s} vs {b:9s}: top-1 agreement {100 * res['top1_agreement']:6.2f}%, logit SQNR "
              + (f"{sqnr:5.1f} dB" if sqnr is not None else "identical"))
    print("\n  quantized activation (graph order)                    codes differing   max |diff|")
    for name in points:
        print(f"  {name[:52]:52s} {differing[name] / sizes[name]:14.6%} {largest[name]:10d}")

if __name__ == "__main__":
    main()
