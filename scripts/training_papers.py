"""The training-based papers on CIFAR-10, next to their ImageNet figures: Sheng et al. 2018 (the
quantization-friendly separable convolution) and Bae et al. 2022 (MSQE-based against gradient-based
hardware-friendly weight quantization during QAT).

Reads the records of a results directory and prints Markdown tables (top-1 on the CIFAR-10 test split, the
training cost of each trained step from the record). Nothing is recomputed; a missing cell prints "not run".

    mqbench run --suite cifar10 --model mobilenet_v1_cifar:mqbench-tf-x0.5 --model qf_mobilenet_v1_cifar:mqbench-x0.5 \\
        --method fp32 --method minmax --scheme w8a8-pt --scheme w8a8-pc --no-latency
    mqbench run --suite cifar10 --model mobilenet_v1_cifar:mqbench-tf-x0.5 --method 'qf_sepconv+fp32' \\
        --method 'qf_sepconv+minmax' --scheme w8a8-pt --scheme w8a8-pc --no-latency
    python scripts/training_papers.py --results results
"""

from __future__ import annotations

import argparse
from typing import Any

from mqbench.store import Store

SHENG = [  # (row label, model:weights, pipeline prefix, paper float, paper 8-bit) -- Sheng et al. 2018, Table 1 / abstract
    ("MobileNetV1 (TF recipe: no weight decay on depthwise)", "mobilenet_v1_cifar:mqbench-tf-x0.5", "", 70.50, 1.80),
    ("quantization-friendly MobileNetV1, trained from scratch", "qf_mobilenet_v1_cifar:mqbench-x0.5", "", 70.77, 68.03),
    ("quantization-friendly MobileNetV1, `qf_sepconv` from the row above's weights",
     "mobilenet_v1_cifar:mqbench-tf-x0.5", "qf_sepconv+", None, None),
]


def _top1(record: dict[str, Any] | None) -> str:
    if record is None:
        return "not run"
    if record["status"] != "ok":
        return record["status"]
    metrics = record.get("metrics") or {}
    acc = (metrics.get("deployed") or metrics.get("sim") or {}).get("accuracy") or {}
    return f"{100 * acc['top1']['value']:.2f}"


def _cost(record: dict[str, Any] | None) -> str:
    training = (record or {}).get("training") or {}
    return "; ".join(f"{name}: {c['epochs']} ep., {c['images_seen']} images, {c['seconds']:.0f} s"
                     for name, c in training.items()) or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="results directory (default ./results)")
    args = parser.parse_args()
    records = Store(args.results).load().records
    newest: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in records:  # records are in write order: the newest of each cell wins
        c = r["config"]
        if c.get("dataset") == "cifar10" and c.get("backend") == "simulated":
            newest[(f"{c['model']}:{c['weights']}", c["pipeline"], c["scheme"], str(c.get("seed", 0)))] = r

    def cell(model: str, pipeline: str, scheme: str) -> dict[str, Any] | None:
        return newest.get((model, pipeline, scheme, "0"))

    print("### Sheng et al. 2018 on CIFAR-10 (top-1 %, simulated; paper: ImageNet, TF MobileNetV1 1.0)\n")
    print("| model | float | minmax w8a8-pt | minmax w8a8-pc | paper float | paper 8-bit | training of the step |")
    print("|---|---|---|---|---|---|---|")
    for label, model, prefix, paper_float, paper_8 in SHENG:
        fp = cell(model, f"{prefix}fp32", "fp32")
        pt, pc = cell(model, f"{prefix}minmax", "w8a8-pt"), cell(model, f"{prefix}minmax", "w8a8-pc")
        paper = (f"{paper_float:.2f} | {paper_8:.2f}" if paper_float is not None else "| ")
        print(f"| {label} | {_top1(fp)} | {_top1(pt)} | {_top1(pc)} | {paper} | {_cost(fp or pt)} |")

    print("\n### Bae et al. 2022 on CIFAR-10: 4-bit power-of-two per-channel weights, float activations "
          "(`w4-pc-pow2`; top-1 %, simulated)\n")
    rows = [("MSQE, post-training (`msqe`)", "msqe"),
            ("MSQE-based QAT (`msqe_qat`)", "msqe+msqe_qat"),
            ("MSQE-based QAT with remedies", "msqe+msqe_qat(remedies=true)"),
            ("gradient-based QAT, TQT (`tqt_qat`)", "msqe+tqt_qat"),
            ("gradient-based QAT, TQT with remedies", "msqe+tqt_qat(remedies=true)")]
    models = ["mobilenet_v1_cifar:mqbench-x0.5", "mobilenet_v2_cifar:mqbench-x0.5"]
    print("| method | " + " | ".join(models) + " | training |")
    print("|---|" + "---|" * len(models) + "---|")
    print("| float | " + " | ".join(_top1(cell(m, "fp32", "fp32")) for m in models) + " | |")
    for label, pipeline in rows:
        found = [_match(newest, m, pipeline, "w4-pc-pow2") for m in models]
        print(f"| {label} | " + " | ".join(_top1(r) for r in found) + f" | {_cost(next((r for r in found if r), None))} |")

    print("\n### LSQ w4a4 QAT of MobileNetV2-CIFAR (`minmax+lsq_qat`, `mse+lsq_qat`; `-fl8`: first and last layers at 8 bits)\n")
    print("| weights | scheme | pipeline | top-1 % | float top-1 % | gap to float | training |")
    print("|---|---|---|---|---|---|---|")
    for v2 in sorted({m for (m, _, _, _) in newest if m.startswith("mobilenet_v2_cifar:")}):
        fp = cell(v2, "fp32", "fp32")
        for scheme in ("w4a4-pc", "w4a4-pc-fl8"):
            for (m, p, s, _), r in sorted(newest.items(), key=lambda kv: kv[1]["created"]):
                if m == v2 and s == scheme and (p in ("minmax", "mse") or "lsq_qat" in p):
                    gap = (f"{float(_top1(r)) - float(_top1(fp)):+.2f}" if fp is not None and r["status"] == "ok"
                           and fp["status"] == "ok" else "")
                    print(f"| {v2.split(':')[1]} | {scheme} | `{p}` | {_top1(r)} | {_top1(fp)} | {gap} | {_cost(r)} |")


def _match(newest: dict[tuple[str, str, str, str], dict[str, Any]], model: str, pipeline: str,
           scheme: str) -> dict[str, Any] | None:
    """The cell whose pipeline is ``pipeline`` up to the parameters that size or lay out the training (epochs,
    train_limit, channels_last)."""
    def base(p: str) -> str:
        import re
        return re.sub(r",?(epochs|train_limit|channels_last|batch_size)=[0-9a-z]+", "", p).replace("()", "").replace("(,", "(")

    hits = [r for (m, p, s, _), r in newest.items() if m == model and s == scheme and base(p) == base(pipeline)]
    return hits[-1] if hits else None


if __name__ == "__main__":
    main()
