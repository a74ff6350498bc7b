"""Which groups ONNX Runtime runs in integer for the QuantSim's QDQ graph with uint8 activations (U8S8), with int8
activations in its default x86 session, and with int8 activations and ``session.qdqisint8allowed=1`` (S8S8).

    python scripts/ort_s8s8_fusion.py            # MobileNetV2 tf2ptq minmax w8a8-pc, 128 calibration images

Prints per configuration the arithmetic operators of the optimised graph (integer ones and those left in float) and
whether the logits on 64 val-1300 images equal U8S8's and the integer simulation's (on int8 codes for the int8 graphs).
Needs the real data (../shared/data or $MQBENCH_DATA).
"""

from __future__ import annotations

import torch

from mqbench.backends.ort.export import export_qdq, signed_activations
from mqbench.backends.ort.integer_sim import IntegerSimulation
from mqbench.backends.ort.runtime import OnnxModel, OrtQDQ
from mqbench.harness import Workspace
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.schemes import parse_scheme


def main() -> None:
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get("mobilenet_v2").get_weights("tf2ptq").preprocess
    model, _ = ws.float_model("mobilenet_v2", "tf2ptq")
    qsim = OrtQDQ().quantsim(model, parse_scheme("w8a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, ws.split("imagenet", "calib", 128, preprocess), minmax_observer)
    qsim.eval()
    x = next(iter(ws.split("imagenet", "test", 64, preprocess).batches(64)))[0]
    configs = {"U8S8 (ort-qdq)": (lambda e: export_qdq(qsim, e), {}, False),
               "int8 activations, default session": (lambda e: signed_activations(export_qdq(qsim, e)), {}, True),
               "S8S8, session.qdqisint8allowed=1 (ort-qdq-s8s8)":
                   (lambda e: signed_activations(export_qdq(qsim, e)), {"session.qdqisint8allowed": "1"}, True)}
    reference = None
    for name, (build, config, signed) in configs.items():
        deployed = OnnxModel(build, threads=2, config=config)
        out = deployed(x)
        reference = out if reference is None else reference
        summary = next(iter(deployed.deployment_info().values()))
        integer = {op: n for op, n in summary["ops"].items() if op.startswith(("QLinear", "QGemm"))}
        simulated = IntegerSimulation(qsim, signed_activations=signed)(x)
        print(f"{name}: integer {integer}, float {summary['float_compute_ops']}, logits equal U8S8's: "
              f"{torch.equal(out, reference)}, equal the integer simulation's: {torch.equal(out, simulated)}")


if __name__ == "__main__":
    main()
