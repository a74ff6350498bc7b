"""Short LSQ QAT pilots on MobileNetV2-CIFAR: how the learning rate and distillation from the float model change what a
fixed number of steps recovers (the search for the issue's w4a4 target, which a full run costs half an hour to test).

Each pilot calibrates ``minmax`` (or ``mse``, ``--init mse``) on 512 calibration images, runs ``lsq_qat`` for
``--steps`` steps of batch 64 (a complete one-cycle schedule over those steps), and prints the float, post-training
and QAT top-1 on every fifth CIFAR-10 test image (2000 images, every class), with the quantizers whose scale moved most.

    python scripts/lsq_pilot.py --steps 150 --lr 0.003 --distill 1 --init mse
"""

from __future__ import annotations

import argparse
import time

import torch

from mqbench.data import Split
from mqbench.harness.workspace import Workspace
from mqbench.methods import StepContext
from mqbench.methods.mse import MSE, MSEConfig
from mqbench.methods.qat import LSQQAT, QATConfig
from mqbench.plugins import Plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2_cifar:mqbench-8ep-x0.5", help="model:weights")
    parser.add_argument("--scheme", default="w4a4-pc-fl8")
    parser.add_argument("--steps", type=int, default=150, help="training steps of batch 64")
    parser.add_argument("--lr", type=float, default=0.003, help="peak learning rate")
    parser.add_argument("--distill", type=float, default=0.0, help="weight of the distillation term (0: none)")
    parser.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    parser.add_argument("--init", choices=("minmax", "mse"), default="minmax",
                        help="the calibrate step LSQ starts from (mse: the ranges of least squared error)")
    args = parser.parse_args()
    torch.manual_seed(0)
    ws = Workspace(Plugins(entry_points=False, disable=set()))
    name, _, weights = args.model.partition(":")
    model, _ = ws.float_model(name, weights)
    full = ws.split("cifar10", "test")
    test = Split(full.images[::5], full.labels[::5], full.mean, full.std)  # the split is sorted by class
    qsim = QuantSim.from_float(model, parse_scheme(args.scheme))
    if args.init == "mse":
        MSE().calibrate(qsim, ws.split("cifar10", "calib", 512), MSEConfig(), StepContext(seed=0))
    else:
        calibrate_weights(qsim, minmax_observer)
        calibrate_activations(qsim, ws.split("cifar10", "calib", 512), minmax_observer)

    def top1(net: torch.nn.Module) -> float:
        net.eval()
        with torch.no_grad():
            return sum(int((net(x).argmax(1) == y).sum()) for x, y in test.batches(250)) / len(test)

    float_top1, ptq_top1 = top1(model), top1(qsim)
    initial = {(q.kind, q.name): q.scale.clone() for q in qsim.quantizers() if q.scale is not None}
    config = QATConfig(epochs=1, batch_size=64, channels_last=True, train_limit=64 * args.steps, lr=args.lr,
                       distill=args.distill, distill_temperature=args.temperature)
    start = time.perf_counter()
    LSQQAT().refine(qsim, model, ws.split("cifar10", "calib", 512), config,
                    StepContext(train=ws.split("cifar10", "train"), seed=0))
    seconds = time.perf_counter() - start
    print(f"{args.model} {args.scheme}, {args.steps} steps, lr {args.lr}, distill {args.distill} (T {args.temperature}): "
          f"float {100 * float_top1:.2f}, {args.init} {100 * ptq_top1:.2f}, lsq_qat {100 * top1(qsim):.2f} "
          f"({seconds:.0f} s; float model after: {100 * top1(model):.2f})")
    moved = []
    for q in qsim.quantizers():
        if (q.kind, q.name) in initial and q.scale is not None:
            octaves = (q.scale / initial[(q.kind, q.name)]).log2().abs()
            moved.append((float(octaves.max()), q.kind, q.name, int((octaves > 3).sum()), octaves.numel()))
    for octaves, kind, qname, far, n in sorted(moved, reverse=True)[:3]:
        print(f"  largest scale change: {kind} {qname}: {octaves:.1f} octaves ({far} of {n} scales moved > 3 octaves)")


if __name__ == "__main__":
    main()
