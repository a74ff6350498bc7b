"""Error-accumulation tables and plots, derived from records (and their layer-wise attachments) only.

* :func:`error_rows`: one row per analysed cell (the newest record of each config): final accumulated SQNR,
  its slope in dB per layer, the layer with the largest drop and the one with the lowest local SQNR.
* :func:`layer_table`: a rich table of one analysis, layer by layer.
* :func:`plot_sqnr`: accumulated (solid) and local (dotted) SQNR against depth for several pipelines of one
  model, depthwise layers marked; :func:`plot_weight_ranges`: the per-channel weight ranges of each layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from mqbench.metrics.layerwise import SQNR_CAP_DB
from mqbench.report.escape import term
from mqbench.store import newest_per_config

ERROR_FIELDS = ("dataset", "model", "weights", "pipeline", "scheme", "backend", "seed", "images", "layers",
                "final_sqnr_db", "slope_db_per_layer", "largest_drop_layer", "largest_drop_db", "worst_local_layer",
                "worst_local_sqnr_db", "dw_weight_range_ratio", "sim_top1", "record")


def analysed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each config that holds a layer-wise analysis, in a stable order."""
    out = [r for r in newest_per_config(records) if r["status"] == "ok" and r.get("layerwise")]
    return sorted(out, key=lambda r: tuple(str(r["config"].get(k)) for k in
                                           ("dataset", "model", "weights", "scheme", "backend", "pipeline", "seed")))


def error_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in analysed(records):
        c, lw = r["config"], r["layerwise"]
        drop = (lw.get("largest_drops") or [None])[0]
        local = (lw.get("worst_local") or [None])[0]
        sim = (((r.get("metrics") or {}).get("sim") or {}).get("accuracy") or {}).get("top1") or {}
        rows.append({
            "dataset": c.get("dataset"), "model": c.get("model"), "weights": c.get("weights"),
            "pipeline": c.get("pipeline"), "scheme": c.get("scheme"), "backend": c.get("backend"), "seed": c.get("seed"),
            "images": lw.get("images"), "layers": lw.get("layers"), "final_sqnr_db": lw.get("final_sqnr_db"),
            "final_sqnr_capped": lw.get("final_sqnr_capped"), "slope_db_per_layer": lw.get("slope_db_per_layer"),
            "largest_drop_layer": drop["layer"] if drop else None, "largest_drop_db": drop["drop_db"] if drop else None,
            "worst_local_layer": f"{local['layer']} ({local['kind']})" if local else None,
            "worst_local_sqnr_db": local["sqnr_db"] if local else None,
            "dw_weight_range_ratio": (lw.get("weight_range_ratio_median_by_kind") or {}).get("depthwise"),
            "sim_top1": sim.get("value"), "record": Path(r.get("_path", "")).name,
        })
    return rows


def sqnr_text(value: float | None, capped: bool | None = False) -> str:
    """An SQNR in dB for a table; a capped one as ``>=cap`` (no error) or ``<=-cap``."""
    if value is None:
        return ""
    if capped:
        return f">={SQNR_CAP_DB:.0f}" if value > 0 else f"<=-{SQNR_CAP_DB:.0f}"
    return f"{value:.1f}"


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


ERROR_HEADER = ["model", "pipeline", "scheme", "backend", "images", "final acc. SQNR dB", "slope dB/layer",
                "largest drop (dB)", "lowest local SQNR (dB)", "dw range ratio", "sim top-1 %"]

ERROR_LEGEND = ("Error accumulation: SQNR of each quantized layer's output against the float model on the same "
                "images; `final acc. SQNR`: with every quantizer on, at the last layer (the logits); `slope`: "
                "least-squares slope of the accumulated SQNR against layer index; `largest drop`: the layer where "
                "the accumulated SQNR falls most; `lowest local SQNR`: the layer that loses most when quantized "
                "alone on float input; `dw range ratio`: median over depthwise layers of the largest / median "
                "per-channel weight range (what one per-tensor grid must span). `mqbench analyze` shows every layer.")


def error_cells(row: dict[str, Any]) -> list[str]:
    drop = f"{row['largest_drop_layer']} ({row['largest_drop_db']:.1f})" if row["largest_drop_layer"] else ""
    local = f"{row['worst_local_layer']} ({row['worst_local_sqnr_db']:.1f})" if row["worst_local_layer"] else ""
    return [f"{row['model']} ({row['weights']})", str(row["pipeline"]), str(row["scheme"]), str(row["backend"]),
            str(row["images"]), sqnr_text(row["final_sqnr_db"], row["final_sqnr_capped"]),
            _num(row["slope_db_per_layer"], "+.2f"), drop, local, _num(row["dw_weight_range_ratio"], ".1f"),
            "" if row["sim_top1"] is None else f"{100 * row['sim_top1']:.2f}"]


def error_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="error accumulation", title_justify="left")
    for i, col in enumerate(ERROR_HEADER):
        table.add_column(col, justify="left" if i < 4 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(term(c) for c in error_cells(row)))
    return table


def layer_table(record: dict[str, Any], detail: dict[str, Any]) -> Table:
    """Every layer of one analysis: local and accumulated SQNR, cosine, mean shift, ranges, distribution shift."""
    c = record["config"]
    table = Table(title=f"{c['model']} ({c['weights']}) {c['pipeline']} {c['scheme']} on {c['backend']}: "
                        f"{detail['images']} images", title_justify="left")
    for i, col in enumerate(("#", "layer", "kind", "local SQNR dB", "acc. SQNR dB", "acc. cosine", "acc. mean shift",
                             "w range ratio", "act range", "W1/std")):
        table.add_column(col, justify="left" if i in (1, 2) else "right")
    drops = {d["layer"] for d in record["layerwise"].get("largest_drops") or []}
    for entry in detail["layers"]:
        loc, acc = entry["local"], entry["accumulated"]
        act = entry["activation_range"]
        style = "bold red" if entry["layer"] in drops else ("cyan" if entry["kind"] == "depthwise" else None)
        table.add_row(str(entry["index"]), entry["layer"], entry["kind"], sqnr_text(loc["sqnr_db"], loc["sqnr_capped"]),
                      sqnr_text(acc["sqnr_db"], acc["sqnr_capped"]), f"{acc['cosine']:.4f}",
                      f"{acc['mean_shift_rel']:.4f}", f"{entry['weight_range']['ratio_max_median']:.1f}",
                      f"[{act['min']:.2f}, {act['max']:.2f}]", f"{entry['wasserstein1_rel']:.4f}", style=style)
    return table


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(str(p) for p in parts)).strip("_")


def png_metadata() -> dict[str, str]:
    """PNG tags that keep a plot's bytes reproducible: no timestamp, and the matplotlib version that drew it (the
    bytes are the same for the same version)."""
    import matplotlib

    return {"Software": f"matplotlib {matplotlib.__version__}"}


def plot_sqnr(series: Sequence[tuple[str, dict[str, Any]]], title: str, path: Path) -> Path:
    """Accumulated (solid) and local (dotted) SQNR against layer index, one colour per ``(label, detail)``,
    depthwise layers marked with triangles, capped values drawn at the cap; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for i, (label, detail) in enumerate(series):
        color = f"C{i}"
        layers = detail["layers"]
        xs = [e["index"] for e in layers]
        acc = [e["accumulated"]["sqnr_db"] for e in layers]
        loc = [e["local"]["sqnr_db"] for e in layers]
        ax.plot(xs, acc, "-", color=color, lw=1.8, label=f"{label}: accumulated")
        ax.plot(xs, loc, ":", color=color, lw=1.2, label=f"{label}: local")
        dw = [k for k, e in enumerate(layers) if e["kind"] == "depthwise"]
        ax.plot([xs[k] for k in dw], [acc[k] for k in dw], "v", color=color, ms=5, ls="none")
    if series:
        layers = series[0][1]["layers"]
        ax.set_xticks([e["index"] for e in layers][::max(1, len(layers) // 26)])
    ax.set_xlabel("layer index (execution order); ▼ depthwise")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata=png_metadata())
    plt.close(fig)
    return path


def plot_weight_ranges(series: Sequence[tuple[str, dict[str, Any]]], title: str, path: Path) -> Path:
    """For each ``(label, detail)`` a panel: every output channel's max |w| per layer (dots, log scale), the
    layer's range (the per-tensor grid's span) and the median channel's; depthwise layers shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(11, 3.2 * max(1, len(series))), dpi=110, squeeze=False,
                             sharex=True)
    for ax, (label, detail) in zip(axes[:, 0], series, strict=True):
        dead = 0
        for e in detail["layers"]:
            ranges = [v for v in e["weight_range"]["per_channel"] if v > 0]  # a log axis has no room for 0
            dead += len(e["weight_range"]["per_channel"]) - len(ranges)
            if e["kind"] == "depthwise":
                ax.axvspan(e["index"] - 0.5, e["index"] + 0.5, color="C1", alpha=0.12, lw=0)
            ax.plot([e["index"]] * len(ranges), ranges, ".", color="C0", ms=1.5, alpha=0.35)
        xs = [e["index"] for e in detail["layers"]]
        ax.plot(xs, [e["weight_range"]["layer"] for e in detail["layers"]], "-", color="C3", lw=1.2,
                label="layer range (per-tensor)")
        ax.plot(xs, [e["weight_range"]["channel_median"] for e in detail["layers"]], "-", color="k", lw=1.0,
                label="median channel")
        ax.set_yscale("log")
        ax.set_ylabel("max |w| per channel")
        ax.set_title(f"{title}: {label} (shaded: depthwise" + (f"; {dead} all-zero channels not drawn)" if dead else ")"),
                     fontsize=10)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("layer index (execution order)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata=png_metadata())
    plt.close(fig)
    return path


def render_plots(records: Sequence[dict[str, Any]], load_detail: Any, out_dir: Path) -> list[Path]:
    """The SQNR plot of every (model, weights, scheme, backend) with its analysed pipelines overlaid, and the
    weight-range plot of every (model, weights) with one panel per distinct transform (pipelines that share
    their float weights share a panel). ``load_detail(record)`` returns a record's layer-wise attachment."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in analysed(records):
        c = r["config"]
        groups.setdefault((c["model"], c["weights"], c["scheme"], c["backend"]), []).append(r)
    written = []
    by_model: dict[tuple[str, str], dict[str, tuple[str, dict[str, Any]]]] = {}
    for (model, weights, scheme, backend), rs in sorted(groups.items()):
        series = [(r["config"]["pipeline"], load_detail(r)) for r in rs]
        written.append(plot_sqnr(series, f"{model} ({weights}) {scheme} on {backend}: SQNR against depth",
                                 out_dir / f"sqnr-{_slug(model, weights, scheme, backend)}.png"))
        for r, (_label, detail) in zip(rs, series, strict=True):
            transforms = "+".join(s["method"] for s in r["config"].get("steps", []) if s["stage"] == "transform")
            by_model.setdefault((model, weights), {}).setdefault(transforms or "no transform",
                                                                  (transforms or "no transform", detail))
    for (model, weights), panels in sorted(by_model.items()):
        written.append(plot_weight_ranges([panels[k] for k in sorted(panels)], f"{model} ({weights})",
                                          out_dir / f"weight-ranges-{_slug(model, weights)}.png"))
    return written


__all__ = ["ERROR_FIELDS", "ERROR_HEADER", "ERROR_LEGEND", "analysed", "error_cells", "error_rows", "error_table",
           "layer_table", "plot_sqnr", "plot_weight_ranges", "png_metadata", "render_plots", "sqnr_text"]
