"""Where OpenVINO's CPU plugin and ONNX Runtime part ways on the same QDQ model, activation by activation.

    python scripts/openvino_arithmetic.py        # MobileNetV2 tf2ptq minmax w8a8-pc, 128 calibration images

Both runtimes run the QuantSim's QDQ export (what ``ort-qdq`` and ``openvino`` deploy) with every activation
quantizer's uint8 codes added as graph outputs, on 32 val-1300 images; ONNX Runtime's codes are those of the
integer simulation (bit for bit, tests/unit/test_integer_sim.py). Printed per activation: how many codes differ
and by how much, first for the images as preprocessed, then for the same images snapped to the input quantizer's
grid (no rounding ties at the input), and the top-1 agreement of the logits. Also the fractional part of
``x / scale`` where the input codes differ, and how well OpenVINO's input codes are predicted by its FakeQuantize
arithmetic: ``round_half_even(x * a + b)`` in float32 with ``a = 255 / (hi - lo)``, ``b = -lo * a`` (``lo, hi``
the quantizer's range), where ONNX computes ``round_half_even(x / scale) + zero_point``.
On a CPU without VNNI both runtimes saturate pairs of products in int16, each in its own order, which
dominates the differences after the input (the script says which CPU it ran on). Needs the real data
(../shared/data or $MQBENCH_DATA) and ``mqbench[openvino]``.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from mqbench.backends.openvino import compile_onnx
from mqbench.backends.ort.export import export_qdq
from mqbench.backends.ort.mlas import sums_pairs_in_int16
from mqbench.backends.ort.runtime import OrtQDQ, cpu_isa, make_session
from mqbench.harness import Workspace
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.schemes import parse_scheme

SHOW = 8  # activations printed from each end of the network


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return values


def _compare(names: list[str], ort_out: list[np.ndarray], ov_out: list[np.ndarray]) -> None:
    rows = list(zip(names, ort_out, ov_out, strict=True))
    for i, (name, a, b) in enumerate(rows[1:]):
        if SHOW <= i < len(rows) - 1 - SHOW:
            if i == SHOW:
                print("  ...")
            continue
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        print(f"  {name.removeprefix('/model/').removesuffix('/QuantizeLinear_output_0'):28s} codes differ "
              f"{np.count_nonzero(diff):9d} of {a.size:9d}  max {int(diff.max())}")
    print(f"  top-1 agreement of the logits: {(ort_out[0].argmax(1) == ov_out[0].argmax(1)).mean():.4f} "
          f"({len(ort_out[0])} images), max |logit diff| {np.abs(ort_out[0] - ov_out[0]).max():.3f}")


def main() -> None:
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get("mobilenet_v2").get_weights("tf2ptq").preprocess
    model, _ = ws.float_model("mobilenet_v2", "tf2ptq")
    qsim = OrtQDQ().quantsim(model, parse_scheme("w8a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, ws.split("imagenet", "calib", 128, preprocess), minmax_observer)
    qsim.eval()
    x = next(iter(ws.split("imagenet", "test", 32, preprocess).batches(32)))[0].numpy()
    proto = export_qdq(qsim, torch.from_numpy(x[:1]))
    codes = [n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    for name in codes:
        proto.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    session = make_session(proto, threads=2)
    compiled = compile_onnx(proto, x.shape, threads=2)
    names = ["logits", *codes]

    def both(inputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        result = compiled(inputs)
        by_name = {name: value for out, value in result.items() for name in out.get_names()}
        return session.run(None, {"input": inputs}), [by_name[name] for name in names]

    first = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    constants = _constants(proto)
    scale, zp = constants[first.input[1]], constants[first.input[2]].astype(np.float64)
    print(f"MobileNetV2 tf2ptq, minmax w8a8-pc (128 calibration images), {len(x)} val-1300 images; input scale "
          f"{float(scale):.9g}, zero point {int(zp)}")
    pairs = sums_pairs_in_int16(cpu_isa())
    sums = "no VNNI: both runtimes add pairs of uint8 x int8 products in int16, saturating" if pairs else "VNNI: exact"
    print(f"CPU {cpu_isa()}, {sums}")
    ort_out, ov_out = both(x)
    print("As preprocessed (p / 127.5 - 1):")
    _compare(names, ort_out, ov_out)
    ratio = x.astype(np.float64) / float(scale)
    differ = ort_out[1] != ov_out[1]
    frac = np.round(ratio - np.floor(ratio), 3)[differ]
    shift = ov_out[1][differ].astype(np.int64) - ort_out[1][differ].astype(np.int64)
    print(f"  input codes that differ: {differ.sum()} of {differ.size}; fractional part of x / scale there: "
          f"{dict(zip(*np.unique(frac, return_counts=True), strict=True))}; OpenVINO's code minus ONNX "
          f"Runtime's: {dict(zip(*np.unique(shift, return_counts=True), strict=True))}")
    lo, hi = np.float32((0 - zp) * scale), np.float32((255 - zp) * scale)
    a = np.float32(255) / (hi - lo)
    b = -lo * a
    predicted = np.clip(np.round(x * a + b), 0, 255).astype(np.uint8)
    print(f"  OpenVINO's input codes predicted by round_half_even(x * a + b) in float32: "
          f"{np.count_nonzero(predicted != ov_out[1])} of {predicted.size} differ")
    snapped = ((ort_out[1].astype(np.float32) - np.float32(zp)) * scale).astype(np.float32)
    print("Snapped to the input grid (no ties at the input quantizer):")
    _compare(names, *both(snapped))


if __name__ == "__main__":
    main()
