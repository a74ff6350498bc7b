"""Which toolkit wins on which runtime, from the committed records only.

    python scripts/toolkit_ranking.py [results]      # Markdown on stdout

For every ImageNet model and W8A8 scheme with toolkit rows, per runtime: the toolkit recipes and mqbench's most
accurate pipeline on that runtime (the published leaderboard's Toolkits table, `mqbench/report/publish.py`), best
first, then one line per runtime naming the winner and its margin over the runner-up, with McNemar's p where the two
are paired on the same images; and every toolkit row whose runtime ran compute operators on float operands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mqbench.metrics.accuracy import mcnemar_p, unpack_bits
from mqbench.report.leaderboard import rows_from_records
from mqbench.report.publish import _float_ops, _toolkit_rows
from mqbench.store import Store, newest_per_config


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _outcomes(records: dict[str, dict[str, Any]], row: dict[str, Any]) -> Any:
    acc = (((records.get(row["record"]) or {}).get("metrics") or {}).get("deployed") or {}).get("accuracy") or {}
    return unpack_bits(acc["top1_outcomes"], acc["n"]) if acc.get("top1_outcomes") else None


def main(results: Path) -> None:
    loaded = Store(results).load()
    by_file = {Path(r.get("_path", "")).name: r for r in newest_per_config(loaded.records)}
    rows = [r for r in rows_from_records(loaded.records) if r["dataset"] == "imagenet"]
    models = sorted({(r["model"], r["weights"]) for r in rows if r["toolkit_row"]})
    print("| model | scheme | runtime | rank | quantizer | top-1 % | Δ vs fp32 | agree % | calib s | b32 img/s 2t | speedup "
          "| ran in float |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts, silent = [], []
    for model, weights in models:
        group = [r for r in rows if (r["model"], r["weights"]) == (model, weights)]
        for block in _toolkit_rows(group):
            for rank, (r, _) in enumerate(block, 1):
                name = r["pipeline"] if r["toolkit_row"] else f"mqbench: {r['pipeline']}"
                ips = "" if r["ips_b32_tall"] is None else f"{r['ips_b32_tall']:.0f}"
                speed = "" if r["speedup_b32_tall"] is None else f"{r['speedup_b32_tall']:.2f}x"
                floats = _float_ops(str(r["note"] or ""))
                delta = "" if r["delta_top1"] is None else f"{100 * r['delta_top1']:+.2f}"
                seconds = "" if r["method_s"] is None else f"{r['method_s']:.0f}"
                print(f"| {model} ({weights}) | {r['scheme']} | {r['backend']} | {rank} | {name} | {_pct(r['top1'])} | "
                      f"{delta} | {_pct(r['agreement'])} | {seconds} | {ips} | {speed} | {floats} |")
                if r["toolkit_row"] and floats.startswith("float ops:") and r["backend"] != "openvino":
                    silent.append(f"{model} ({weights}) {r['pipeline']} {r['scheme']} on {r['backend']}: {floats}")
            ok = [r for r, _ in block if r["top1"] is not None]
            if len(ok) >= 2:
                first, second = ok[0], ok[1]
                a, b = _outcomes(by_file, first), _outcomes(by_file, second)
                p = f", McNemar p={mcnemar_p(a, b):.2g}" if a is not None and b is not None else ""
                verdicts.append(f"- {model} ({weights}) {first['scheme']} on {first['backend']}: {first['pipeline']} "
                                f"{_pct(first['top1'])} leads {second['pipeline']} {_pct(second['top1'])} by "
                                f"{100 * (first['top1'] - second['top1']):.2f} points{p}")
    print("\nWinner per runtime (the runner-up is the next row):\n")
    print("\n".join(verdicts))
    print("\nToolkit rows whose runtime ran compute operators on float operands (OpenVINO's float input quantize "
          "left out):\n")
    print("\n".join(f"- {s}" for s in silent) or "- none")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results"))
