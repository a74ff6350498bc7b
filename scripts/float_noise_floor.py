"""The noise floor of fake-quant simulation: one calibrated QuantSim computed in float32 and in float64.

Both compute the same quantized network (same scales, zero points, weight codes); only the float arithmetic
between the quantizers differs, so every top-1 decision on which they disagree is one that rounding ties
alone decide. A simulation that is not bit-exact to a runtime's arithmetic cannot be expected to agree with
the runtime more often than with itself in another float precision.

    python scripts/float_noise_floor.py mobilenet_v2 tf2ptq        # measured: 97.77% on val-1300
    python scripts/float_noise_floor.py mobilenet_v1 qat-1.0-224   # measured: 98.46%
"""

from __future__ import annotations

import torch
from ort_rounding_evidence import minmax_qsim, parse_args  # the same calibrated QuantSim as that script

from mqbench.metrics.accuracy import agreement


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], images=None)
    qsim, evalset = minmax_qsim(args)
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
