"""Depthwise-separable against regular CNNs: how fast quantization error accumulates with depth (Yun & Wong 2021).

Reads the analysed records of a results directory (``mqbench analyze`` / ``mqbench run --layerwise``) and
writes, for the given pipeline, a Markdown table (per model and scheme: layers, accumulated SQNR after the
first and after the last layer, the dB lost between them in all and per layer, the least-squares slope, float
and simulated top-1) and one PNG with
the accumulated SQNR of every model against relative depth, one panel per scheme, depthwise-separable
models solid and regular CNNs dashed. Everything comes from the records; nothing is recomputed.

    mqbench analyze --model mobilenet_v2:tf2ptq --model mobilenet_v1:qat-1.0-224 --method minmax --scheme w8a8-pt --scheme w8a8-pc
    mqbench analyze --model resnet20:cifar10 --model resnet56:cifar10 --method minmax --scheme w8a8-pt --scheme w8a8-pc
    python scripts/error_accumulation_study.py --results results --out results/analysis
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mqbench.report.layerwise import analysed
from mqbench.store import Store


def _is_dws(detail: dict[str, Any]) -> bool:
    return any(layer["kind"] == "depthwise" for layer in detail["layers"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="results directory (default ./results)")
    parser.add_argument("--pipeline", default="minmax", help="pipeline to compare (default minmax)")
    parser.add_argument("--out", default=None, help="folder for the PNG (default RESULTS/analysis)")
    args = parser.parse_args()
    store = Store(args.results)
    records = store.load().records
    rows = [r for r in analysed(records) if r["config"]["pipeline"] == args.pipeline]
    if not rows:
        raise SystemExit(f"no analysed {args.pipeline} records in {args.results}: run `mqbench analyze` first")
    floats = {(r["config"]["model"], r["config"]["weights"]): r["metrics"]["sim"]["accuracy"]["top1"]["value"]
              for r in records if r["status"] == "ok" and r["config"]["pipeline"] == "fp32" and r.get("metrics")}
    series: dict[str, list[tuple[str, bool, list[float]]]] = {}
    print("| model | kind | dataset | scheme | layers | acc. SQNR dB, first layer | final | lost | lost per layer "
          "| slope dB/layer | float top-1 | sim top-1 | images |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["config"]["scheme"], not _is_dws(store.attachment(r, "layerwise")),
                                         r["layerwise"]["layers"])):
        c, lw = r["config"], r["layerwise"]
        detail = store.attachment(r, "layerwise")
        acc = [layer["accumulated"]["sqnr_db"] for layer in detail["layers"]]
        lost = acc[0] - acc[-1]
        dws = _is_dws(detail)
        top1 = r["metrics"]["sim"]["accuracy"]["top1"]["value"]
        flt = floats.get((c["model"], c["weights"]))
        print(f"| {c['model']} ({c['weights']}) | {'DWSCNN' if dws else 'regular CNN'} | {c['dataset']} | {c['scheme']} "
              f"| {lw['layers']} | {acc[0]:.1f} | {acc[-1]:.1f} | {lost:.1f} | {lost / max(1, len(acc) - 1):.2f} "
              f"| {lw['slope_db_per_layer']:+.3f} | {'' if flt is None else f'{100 * flt:.2f}'} | {100 * top1:.2f} "
              f"| {lw['images']} |")
        series.setdefault(c["scheme"], []).append((f"{c['model']} ({c['weights']})", dws, acc))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 5), dpi=110, squeeze=False, sharey=True)
    for ax, (scheme, lines) in zip(axes[0], sorted(series.items()), strict=True):
        for i, (label, dws, acc) in enumerate(lines):
            xs = [k / max(1, len(acc) - 1) for k in range(len(acc))]
            ax.plot(xs, acc, "-" if dws else "--", color=f"C{i}", lw=1.6,
                    label=f"{label}, {len(acc)} layers ({'DWS' if dws else 'regular'})")
        ax.set_title(f"{args.pipeline} {scheme}: accumulated SQNR")
        ax.set_xlabel("relative depth (layer index / last index)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("accumulated SQNR vs float (dB)")
    fig.tight_layout()
    out = Path(args.out) if args.out else store.root / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"error-accumulation-study-{args.pipeline}.png"
    fig.savefig(path, metadata={"Software": None})
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
