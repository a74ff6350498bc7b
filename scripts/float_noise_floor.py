"""The noise floor of fake-quant simulation: one calibrated QuantSim computed in float32 and in float64.

Both compute the same quantized network (same scales, zero points, weight codes); only the float arithmetic
between the quantizers differs, so every top-1 decision on which they disagree is one that rounding ties
alone decide. A simulation that is not bit-exact to a runtime's arithmetic cannot be expected to agree with
the runtime more often than with itself in another float precision.

    python scripts/float_noise_floor.py mobilenet_v2 tf2ptq        # measured: 97.77% on val-1300
    python scripts/float_noise_floor.py mobilenet_v1 qat-1.0-224   # measured: 98.46%
"""

from __future__ import annotations

import argparse
import os

import torch

from mqbench.backends.ort_int8 import OrtQDQ
from mqbench.data.paths import DATA_ENV
from mqbench.metrics.accuracy import agreement
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.runner import Workspace
from mqbench.schemes import parse_scheme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("weights")
    parser.add_argument("--scheme", default="w8a8-pc")
    parser.add_argument("--calib", type=int, default=512, help="calibration images (default 512, as the suite)")
    parser.add_argument("--images", type=int, default=None, help="evaluation images (default all of val-1300)")
    parser.add_argument("--data-dir", help=f"real data folder (default ${DATA_ENV} or ../shared/data)")
    args = parser.parse_args()
    if args.data_dir:
        os.environ[DATA_ENV] = args.data_dir
    ws = Workspace(get_plugins())
    preprocess = ws.plugins.models.get(args.model).get_weights(args.weights).preprocess
    calib = ws.split("imagenet", "calib", args.calib, preprocess)
    evalset = ws.split("imagenet", "test", args.images, preprocess)
    model, _ = ws.float_model(args.model, args.weights)
    qsim = OrtQDQ().prepare(model, parse_scheme(args.scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    qsim.eval()
    with torch.no_grad():
        single = torch.cat([qsim(x) for x, _ in evalset.batches(128)])
        qsim.double()
        for quantizer in qsim.quantizers():  # qparams stay the float32 values the runtime would get
            if quantizer.scale is not None:
                quantizer.scale = quantizer.scale.float()
        double = torch.cat([qsim(x.double()).float() for x, _ in evalset.batches(128)])
    result = agreement(single, double)
    print(f"{args.model}:{args.weights} {args.scheme}, {len(single)} images: float32 vs float64 top-1 agreement "
          f"{100 * result['top1_agreement']:.2f}%, logit SQNR {result['logit_sqnr_db']:.1f} dB")


if __name__ == "__main__":
    main()
