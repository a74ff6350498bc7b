"""The runtimes ranked by int8 throughput on this machine, from the committed records only.

    python scripts/runtime_ranking.py [results]      # Markdown on stdout

For each ImageNet MobileNet cell of the runtimes matrix (MobileNetV2 tf2ptq and MobileNetV1 qat-1.0-224; ``minmax``
w8a8-pc and the model's best w8a8-pt pipeline), every real-kernel runtime's newest record of that cell in the
leaderboard's environment, sorted by images/s at batch 32 on every core: top-1, agreement with the simulation
(and with the runtime's integer simulation, where one exists),
batch-1 latency on 1 thread, throughput on 1 thread and on every core, the same runtime's float throughput and the
speedup over it, the model size. An int8 row slower than its own float is marked, as in the leaderboard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mqbench.report.leaderboard import rows_from_records
from mqbench.store import Store

CELLS = (("mobilenet_v2", "tf2ptq", "minmax", "w8a8-pc"),
         ("mobilenet_v2", "tf2ptq", "cle+mse+bias_correction", "w8a8-pt"),
         ("mobilenet_v1", "qat-1.0-224", "minmax", "w8a8-pc"),
         ("mobilenet_v1", "qat-1.0-224", "minmax+bias_correction", "w8a8-pt"))
HEADER = ("runtime", "top-1", "agree %", "int-sim agree %", "b1 ms 1t", "b32 img/s 1t", "b32 img/s 2t", "float b32 img/s 2t",
          "speedup", "MB", "record")


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _line(row: dict[str, Any]) -> str:
    speedup = row["speedup_b32_tall"]
    marked = f"{speedup:.2f}x" + (" SLOWER THAN FLOAT" if speedup is not None and speedup < 1 else "") \
        if speedup is not None else ""
    size = row["size_bytes"] / 1e6 if row["size_bytes"] else None
    agree = 100 * row["agreement"] if row["agreement"] is not None else None
    exact = 100 * row["agreement_int_sim"] if row["agreement_int_sim"] is not None else None
    cells = [f"`{row['backend']}`", _fmt(row["top1"], ".4f"), _fmt(agree, ".2f"), _fmt(exact, ".2f"),
             _fmt(row["lat_b1_t1_ms"], ".2f"),
             _fmt(row["ips_b32_t1"], ".0f"), _fmt(row["ips_b32_tall"], ".0f"), _fmt(row["float_ips_b32_tall"], ".0f"),
             marked, _fmt(size, ".1f"), f"`{row['record']}`"]
    return "| " + " | ".join(cells) + " |"


def main(results: Path) -> None:
    rows = [r for r in rows_from_records(Store(results).load().records)
            if r["status"] == "ok" and r["dataset"] == "imagenet" and r["ips_b32_tall"] is not None
            and r["backend"] not in ("simulated", "null")]
    environments = sorted({r["environment"] for r in rows})
    for env in environments:
        print(f"Environment: {env}\n")
        for model, weights, pipeline, scheme in CELLS:
            cell = [r for r in rows if (r["model"], r["weights"], r["pipeline"], r["scheme"], r["environment"])
                    == (model, weights, pipeline, scheme, env)]
            if not cell:
                continue
            print(f"{model} ({weights}), {pipeline} {scheme}:\n")
            print("| " + " | ".join(HEADER) + " |")
            print("|" + "---|" * len(HEADER))
            for row in sorted(cell, key=lambda r: -r["ips_b32_tall"]):
                print(_line(row))
            print()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results"))
