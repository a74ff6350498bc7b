"""``mqbench leaderboard --publish``: the published leaderboard, a build product of the records only.

It writes into the results directory (beside ``records/``):

* ``LEADERBOARD.md``: one section per suite and per model (weights, machine and library versions): the accuracy
  table (simulated and deployed top-1, delta to fp32 with significance marks, agreement), the latency table and
  the error-accumulation table, each row linked to its record; the plots; a legend; the files left out.
* ``leaderboard.csv`` and ``leaderboard.json``: every row (the ``--format csv/json`` output).
* ``plots/*.png``: per model the top-1 of every pipeline and scheme, and, for analysed cells, SQNR against depth and
  the per-channel weight ranges. The folder is rebuilt on every publish.
* ``.mqbench-published.json``: the files the last publish wrote. Publishing replaces only those: it refuses a
  results directory whose ``index.html``, ``LEADERBOARD.md``, ... or ``plots/`` files it did not write.
* ``index.html``: one self-contained page (styles, script and plots inline, no network at view time) with the
  same sections; its tables sort on a click on a column header and filter as one types.

Re-rendering the same records gives byte-identical files: nothing depends on the time, the host or the order
files are listed in. PNGs (and the page that embeds them) are identical for the same matplotlib version, which each
PNG names in its ``Software`` tag.
Rows of different environments (machine, ISA flags, threads, torch / onnxruntime / mqbench versions) are never
mixed in one table: a model measured in two environments gets two tables, each saying where its figures came from.
Files in ``records/`` that are not records this mqbench can read (another schema version, written by a newer
mqbench, corrupt) are listed by name with the reason, and left out.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqbench import __version__
from mqbench.errors import ResultsDirError
from mqbench.fsutil import atomic_write
from mqbench.report import layerwise, leaderboard, papers
from mqbench.report.escape import md_cell, md_link, md_paragraph
from mqbench.store import LoadResult, newest_per_config

OUTPUTS = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json", "index.html")
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, the value it sorts by (None: the text) and an optional link."""

    text: str
    sort: float | str | None = None
    link: str | None = None


@dataclass
class Table:
    anchor: str
    caption: str
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Section:
    """A heading (``level`` 2 or 3) with paragraphs (a Markdown subset: `code`, [text](link), **bold**),
    tables and images (``(caption, path relative to the results directory)``)."""

    level: int
    title: str
    anchor: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- building the page from the records


def _slug(*parts: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)


def _pct_cell(v: float | None) -> Cell:
    return Cell(leaderboard._pct(v), _num(v))


def _describe(values: Sequence[Any], fmt: Callable[[Any], str] = str) -> str:
    distinct = sorted({fmt(v) for v in values if v is not None})
    if not distinct:
        return "?"
    return distinct[0] if len(distinct) == 1 else "several: " + ", ".join(distinct)


def _provenance(records: Sequence[dict[str, Any]], environment: str) -> str:
    """What a group's figures came from: weights, data, machine and versions, code commits."""
    weights = [r.get("weights") or {} for r in records]
    data = [r.get("data") or {} for r in records]
    evals = [d.get("eval") or {} for d in data]
    calib = [(d.get("calib") or {}).get("size") for d in data if d.get("calib")]
    commits = [((r.get("provenance") or {}).get("git") or {}).get("commit") for r in records]
    sha = _describe([w.get("sha256") for w in weights], lambda s: str(s)[:16])
    source = _describe([w.get("source") for w in weights], lambda s: Path(str(s).removeprefix("file:")).name)
    images = _describe([e.get("size") for e in evals])
    split = _describe([e.get("split") for e in evals])
    fingerprint = _describe([e.get("fingerprint") for e in evals], lambda s: str(s)[:12])
    text = (f"Weights: `{_describe([w.get('name') for w in weights])}` (sha256 `{sha}`, file `{source}`). "
            f"Data: `{_describe([d.get('dataset') for d in data])}` {split} split, {images} images (fingerprint "
            f"`{fingerprint}`)")
    if calib:
        text += f", calibrated on {_describe(calib)} images"
    text += f". Measured on: {environment}."
    runtimes = sorted({v for v in map(leaderboard.runtime_version, records) if v})
    if runtimes:
        text += f" Runtimes: {', '.join(runtimes)}."
    commit_list = sorted({str(c)[:10] for c in commits if c})
    if commit_list:
        text += " Code: commit " + ", ".join(f"`{c}`" for c in commit_list) + "."
    return text


def _accuracy_table(anchor: str, group: Sequence[dict[str, Any]]) -> Table:
    header = ["pipeline", "scheme", "backend", "top-1 % [95% CI]", "top-5 %", "Δ top-1 vs fp32", "vs scheme's best",
              "n", "sim top-1 %", "agree %", "int-sim agree %", "method s", "status", "record"]
    rows = []
    for r in group:
        status = leaderboard.STATUS_TEXT[r["status"]] + (f" ({r['note']})" if r["note"] else "")
        rows.append([Cell(r["pipeline"]), Cell(r["scheme"]), Cell(r["backend"]),
                     Cell(leaderboard._ci(r, "top1"), _num(r["top1"])), _pct_cell(r["top5"]),
                     Cell(leaderboard._sig(r), _num(r["delta_top1"])),
                     # sorts by McNemar's p against the scheme's leader; the leader itself above every p (<= 1)
                     Cell(leaderboard._vs_best(r), _num(r["p_vs_best"]) if not r["best_in_scheme"] else 2.0),
                     Cell(str(r["n"] or ""), _num(r["n"])), _pct_cell(r["sim_top1"]), _pct_cell(r["agreement"]),
                     _pct_cell(r["agreement_int_sim"]), Cell(leaderboard._seconds(r["method_s"]), _num(r["method_s"])),
                     Cell(status.strip()), Cell("record", r["record"], f"records/{r['record']}")])
    return Table(anchor, "Accuracy", header, rows)


def _latency_table(anchor: str, group: Sequence[dict[str, Any]]) -> Table | None:
    with_latency = [r for r in group if r["lat_b1_t1_ms"] is not None or r["ips_b32_tall"] is not None]
    if not with_latency:
        return None
    header = [*leaderboard._latency_header(group), "record"]
    keys = ("lat_b1_t1_ms", "lat_b1_tall_ms", "ips_b32_t1", "ips_b32_tall", "float_ips_b32_tall", "speedup_b32_tall",
            "size_bytes")
    rows = []
    for r, cells in zip(with_latency, leaderboard._latency_rows(with_latency), strict=True):
        rows.append([Cell(c) for c in cells[:3]] + [Cell(c, _num(r[k])) for c, k in zip(cells[3:], keys, strict=True)]
                    + [Cell("record", r["record"], f"records/{r['record']}")])
    return Table(anchor, "Latency", header, rows)


TOOLKITS_TEXT = (
    "Other projects' quantizers, each running its own recipe (`toolkit:recipe`, `mqbench list toolkits`) on the same "
    "float weights, the same calibration images and the same evaluation images as mqbench's pipelines, deployed on the "
    "runtimes their output runs on, ranked against mqbench's most accurate pipeline on that runtime and scheme "
    "(`mqbench: <pipeline>`). `vs mqbench`: exact McNemar test against that row on the same images. `toolkit sim`: the "
    "toolkit's own simulation of what it made (a QDQ file run unfused; a PT2E graph run by PyTorch) and `agree %` the "
    "deployed model's top-1 agreement with it; for mqbench's row, its QuantSim. `calib s`: the whole quantization "
    "(export, calibration, writing the model; for mqbench's row its transform, calibrate and refine steps). `ran in "
    "float`: compute operators the runtime ran on float operands, from the record's deployment.")


def _float_ops(note: str) -> str:
    """The ``float ops: ...`` part of a row's note, and a SLOWER THAN FLOAT flag."""
    parts = [p.strip() for p in note.split(";")]
    return "; ".join(p for p in parts if p.startswith(("float ops:", "SLOWER THAN FLOAT")))


def _vs_mqbench(row: dict[str, Any], delta: float) -> Cell:
    """A toolkit row against mqbench's best on its runtime (``delta``: its top-1 minus that row's)."""
    if not row["toolkit_row"]:
        return Cell("mqbench's best here", 2.0)
    p, best = row["p_vs_mqbench_best"], row["mqbench_best"]
    if p is None or best is None:
        return Cell("", None)
    shown = f"p={p:.2g}" if p > 0 else "p<1e-300"
    if p >= leaderboard.ALPHA:
        return Cell(f"≈ mqbench ({shown})", p)
    return Cell(f"{'>' if delta > 0 else '<'} mqbench ({shown})", p)


def _toolkit_rows(group: Sequence[dict[str, Any]]) -> list[list[tuple[dict[str, Any], float]]]:
    """Per (scheme, runtime) holding a toolkit row: its toolkit rows and mqbench's best pipeline there, best first,
    each with its top-1 minus that pipeline's (0 where there is none)."""
    blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in group:
        if r["toolkit_row"] and r["status"] != "skipped":
            blocks.setdefault((str(r["scheme"]), str(r["backend"])), []).append(r)
    out = []
    for (scheme, backend), kit_rows in sorted(blocks.items()):
        names = {r["mqbench_best"] for r in kit_rows if r["mqbench_best"]}
        ours = [r for r in group if r["pipeline"] in names and r["scheme"] == scheme and r["backend"] == backend
                and not r["toolkit_row"]]
        block = sorted(kit_rows + ours[:1], key=lambda r: -(r["top1"] if r["top1"] is not None else -1.0))
        theirs = ours[0]["top1"] if ours else None
        out.append([(r, r["top1"] - theirs if theirs is not None and r["top1"] is not None else 0.0) for r in block])
    return out


def _toolkits_table(anchor: str, group: Sequence[dict[str, Any]]) -> Table | None:
    blocks = _toolkit_rows(group)
    if not blocks:
        return None
    header = ["scheme", "runtime", "rank", "quantizer", "top-1 % [95% CI]", "Δ top-1 vs fp32", "vs mqbench",
              "toolkit sim top-1 %", "agree %", "calib s", "b32 img/s", "speedup", "ran in float", "record"]
    rows = []
    for block in blocks:
        for rank, (r, delta) in enumerate(block, 1):
            name = r["pipeline"] if r["toolkit_row"] else f"mqbench: {r['pipeline']}"
            status = "" if r["status"] == "ok" else f"FAILED ({r['note']})"
            rows.append([Cell(r["scheme"]), Cell(r["backend"]), Cell(str(rank), rank), Cell(name),
                         Cell(leaderboard._ci(r, "top1") or status, _num(r["top1"])),
                         Cell(leaderboard._sig(r), _num(r["delta_top1"])), _vs_mqbench(r, delta),
                         _pct_cell(r["sim_top1"]), _pct_cell(r["agreement"]),
                         Cell(leaderboard._seconds(r["method_s"]), _num(r["method_s"])),
                         Cell("" if r["ips_b32_tall"] is None else f"{r['ips_b32_tall']:.0f}", _num(r["ips_b32_tall"])),
                         Cell("" if r["speedup_b32_tall"] is None else f"{r['speedup_b32_tall']:.2f}x",
                              _num(r["speedup_b32_tall"])),
                         Cell(_float_ops(str(r["note"] or ""))), Cell("record", r["record"], f"records/{r['record']}")])
    return Table(anchor, "Toolkits against mqbench's best pipeline, per runtime", header, rows)


def _toolkits_sections(groups: dict[tuple[str, ...], list[dict[str, Any]]]) -> list[Section]:
    """The ``Toolkits`` section: one table per model holding toolkit rows (ImageNet first)."""
    by_model: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for (_, dataset, model, weights, env), group in groups.items():
        by_model.setdefault((dataset, model, weights, env), []).extend(group)
    out: list[Section] = []
    for (dataset, model, weights, env), group in sorted(by_model.items(), key=lambda kv: (kv[0][0] != "imagenet", kv[0])):
        anchor = _slug("toolkits", model, weights, dataset)
        table = _toolkits_table(f"{anchor}-table", group)
        if table is None:
            continue
        calib = sorted({str(r["calib_n"]) for r in group if r["toolkit_row"] and r["calib_n"]})
        n = sorted({str(r["n"]) for r in group if r["toolkit_row"] and r["n"]})
        out.append(Section(3, f"{model} ({weights}) on {dataset}", anchor,
                           [f"Every row: {', '.join(calib) or '?'} calibration images, {', '.join(n) or '?'} evaluation "
                            f"images; {env}."], [table]))
    if out:
        out.insert(0, Section(2, "Toolkits", "toolkits", [TOOLKITS_TEXT]))
    return out


def _error_table(anchor: str, errors: Sequence[dict[str, Any]]) -> Table | None:
    if not errors:
        return None
    rows = []
    for e in errors:
        cells = layerwise.error_cells(e)
        rows.append([Cell(c) for c in cells] + [Cell("record", e["record"], f"records/{e['record']}")])
    return Table(anchor, "Error accumulation", [*layerwise.ERROR_HEADER, "record"], rows)


def _papers_sections(records: Sequence[dict[str, Any]],
                     load_detail: Callable[[dict[str, Any]], Any] | None) -> list[Section]:
    """The papers section: per seed paper, its claim, a table of the paper's figures beside ours, the verdict."""
    values, record = papers.measurements(records, load_detail)
    out = [Section(2, "Papers", "papers", [
        "Each seed paper's claim beside our measurement of the same setting on the data we have, with a verdict "
        "computed from the numbers in the table by the rule stated under it (`mqbench/report/papers.py`). "
        "Our figures come from the newest record of each cell (run them with `mqbench run --suite papers`; the "
        "error-accumulation figures with `mqbench analyze`); a number without a record reads \"not run\"."])]
    claims = Section(2, "Toolkits' published figures", "toolkit-claims", [
        "Each toolkit's own published figure for MobileNetV2 beside our measurement of its recipe on our weights, "
        "images and runtime, as drops from the float model (the checkpoints differ), with the verdict's rule."])
    entries: list[papers.Paper | Section] = [*papers.PAPERS, claims, *papers.TOOLKIT_CLAIMS]
    for paper in entries:
        if isinstance(paper, Section):
            out.append(paper)
            continue
        verdict, why = paper.verdict(values)
        section = Section(3, paper.citation, _slug("paper", paper.key), [
            f"[{paper.url}]({paper.url}). Claim: {paper.claim}",
            f"**Verdict: {verdict}.** {why[:1].upper() + why[1:]}.",
            f"Rule: {paper.rule}."])
        rows = []
        for row in paper.rows:
            v, rec = values(row.ours), record(row.ours)
            m = row.ours
            ours_text = "not run" if v is None else f"{v:.2f}"
            rows.append([Cell(row.setting), Cell(row.paper), Cell(row.source),
                         Cell(f"{m.dataset}, {m.model}, {m.pipeline}, {m.scheme}, {m.backend}"),
                         Cell("SQNR lost, dB" if m.quantity == "sqnr_lost_db" else "top-1 %"),
                         Cell(ours_text, v), Cell("record", rec, f"records/{rec}") if rec else Cell("")])
        section.tables.append(Table(_slug("paper", paper.key, "table"), "The paper's figures and ours",
                                    ["setting", "paper", "source in the paper", "ours: data, model, pipeline, scheme, "
                                     "backend", "quantity", "ours", "record"], rows))
        out.append(section)
    return out


def plot_accuracy(group: Sequence[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Top-1 (with its 95% interval) of every evaluated row of one model, fp32 dashed; None when there is none."""
    rows = [r for r in group if r["top1"] is not None and r["status"] == "ok"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(rows))  # the table's first row at the top
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.28 * len(rows)), dpi=100)
    ys = list(range(len(rows)))
    values = [100 * r["top1"] for r in rows]
    lo = [100 * (r["top1"] - r["top1_lo"]) for r in rows]
    hi = [100 * (r["top1_hi"] - r["top1"]) for r in rows]
    colors = ["C7" if r["pipeline"] == "fp32" else ("C0" if r["evaluated"] == "sim" else "C2") for r in rows]
    ax.barh(ys, values, xerr=[lo, hi], color=colors, height=0.7, error_kw={"lw": 0.8, "capsize": 2})
    for r in rows:
        if r["pipeline"] == "fp32":
            ax.axvline(100 * r["top1"], color="C3", ls="--", lw=1)
    ax.set_yticks(ys, [f"{r['pipeline']} · {r['scheme']} · {r['backend']}" for r in rows], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 % (95% interval; grey: fp32, blue: simulated, green: deployed on real kernels)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata=layerwise.png_metadata())
    plt.close(fig)
    return path


def build_page(loaded: LoadResult, load_detail: Callable[[dict[str, Any]], Any] | None, results_dir: Path,
               extra: Sequence[Section] = ()) -> list[Section]:
    """The page's sections; writes the plots under ``results_dir/plots`` as a side effect."""
    rows = leaderboard.rows_from_records(loaded.records)
    by_file = {Path(r.get("_path", "")).name: r for r in newest_per_config(loaded.records)}
    errors = layerwise.error_rows(loaded.records)
    plots = results_dir / PLOTS_DIR
    intro = (f"Derived from the {len(by_file)} newest records (one per cell) in `records/` by `mqbench leaderboard "
             f"--publish` (mqbench {__version__}); every figure links to its record. Re-rendering the same records "
             "gives the same files.")
    if loaded.problems:
        intro += f" {len(loaded.problems)} file(s) in `records/` were left out: see [Left out](#left-out)."
    sections = [Section(1, "mqbench leaderboard", "top", [intro])]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["suite"] or "(no suite)"), str(r["dataset"]), str(r["model"]), str(r["weights"]),
                           str(r["environment"])), []).append(r)
    envs_per_model: dict[tuple[str, ...], list[str]] = {}
    for suite, dataset, model, weights, env in groups:
        envs_per_model.setdefault((suite, dataset, model, weights), []).append(env)
    sections.extend(_toolkits_sections(groups))
    for suite in sorted({k[0] for k in groups}):
        sections.append(Section(2, f"Suite {suite}", _slug("suite", suite)))
        for key in sorted(k for k in groups if k[0] == suite):
            _, dataset, model, weights, env = key
            group = groups[key]
            envs = envs_per_model[key[:4]]
            title = f"{model} ({weights}) on {dataset}"
            if len(envs) > 1:
                title += f", environment {envs.index(env) + 1} of {len(envs)}"
            anchor = _slug(suite, model, weights, *([dataset] if dataset != suite else []),
                           *(["env", envs.index(env) + 1] if len(envs) > 1 else []))
            while anchor in {x.anchor for x in sections}:  # names that differ only in punctuation
                anchor += "-x"
            records = [by_file[r["record"]] for r in group if r["record"] in by_file]
            section = Section(3, title, anchor, [_provenance(records, env)])
            section.tables.append(_accuracy_table(f"{anchor}-accuracy", group))
            latency = _latency_table(f"{anchor}-latency", group)
            if latency is not None:
                section.tables.append(latency)
            files = {r["record"] for r in group}
            error = _error_table(f"{anchor}-errors", [e for e in errors if e["record"] in files])
            if error is not None:
                section.tables.append(error)
            png = plot_accuracy(group, f"{title}: top-1", plots / f"accuracy-{anchor}.png")
            if png is not None:
                section.images.append((f"Top-1 of {title}", png.relative_to(results_dir).as_posix()))
            analysed = [r for r in records if r["status"] == "ok" and r.get("layerwise")]
            if analysed and load_detail is not None:
                for p in layerwise.render_plots(analysed, load_detail, plots / anchor):
                    section.images.append((p.stem.replace("-", " "), p.relative_to(results_dir).as_posix()))
            sections.append(section)
    sections.extend(_papers_sections(loaded.records, load_detail))
    sections.extend(extra)
    legend = Section(2, "Legend", "legend", [leaderboard.LEGEND, leaderboard.LATENCY_LEGEND, layerwise.ERROR_LEGEND])
    sections.append(legend)
    left_out = Section(2, "Left out", "left-out")
    if loaded.problems:
        left_out.paragraphs.append("These files in `records/` are not records this mqbench reads; they are not used:")
        left_out.tables.append(Table("left-out-files", "Files left out", ["file", "why"],
                                     [[Cell(p.name), Cell(why)] for p, why in sorted(loaded.problems)]))
    else:
        left_out.paragraphs.append("Nothing: every file in `records/` was read.")
    sections.append(left_out)
    return sections


# ---------------------------------------------------------------- Markdown


def _md_cell(cell: Cell) -> str:
    text = md_cell(cell.text)
    return f"[{text}]({md_link(cell.link)})" if cell.link and text else text


def render_markdown(sections: Sequence[Section]) -> str:
    lines: list[str] = []
    for s in sections:
        lines += ["#" * s.level + " " + md_cell(s.title), ""]
        if s.level == 1:
            toc = [x for x in sections if x.level in (2, 3)]
            lines += [*map(md_paragraph, s.paragraphs), ""]
            for x in toc:
                lines.append("  " * (x.level - 2) + f"- [{md_cell(x.title)}](#{x.anchor})")
            lines.append("")
            continue
        for p in s.paragraphs:
            lines += [md_paragraph(p), ""]
        for t in s.tables:
            lines += [f"{md_cell(t.caption)}:", "", "| " + " | ".join(map(md_cell, t.header)) + " |",
                      "|" + "---|" * len(t.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        for caption, path in s.images:
            lines += [f"![{md_cell(caption)}]({md_link(path)})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- HTML


def _inline(text: str) -> str:
    """The paragraph subset of Markdown (`code`, **bold**, [text](link)) as HTML, everything else escaped."""
    out = html.escape(text, quote=True)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def _sort_attr(cell: Cell) -> str:
    if cell.sort is None:
        return ""
    if isinstance(cell.sort, float | int):
        return f' data-sort="{cell.sort!r}"'
    return f' data-sort="{html.escape(str(cell.sort), quote=True)}"'


def _html_table(t: Table) -> str:
    numeric = [all(isinstance(row[i].sort, float | int) or not row[i].text for row in t.rows)
               and any(isinstance(row[i].sort, float | int) for row in t.rows) for i in range(len(t.header))]
    head = "".join(f'<th scope="col" data-type="{"num" if numeric[i] else "text"}" aria-sort="none">'
                   f'<button type="button">{html.escape(h)}</button></th>' for i, h in enumerate(t.header))
    body = []
    for row in t.rows:
        cells = []
        for c, is_num in zip(row, numeric, strict=True):
            text = html.escape(c.text)
            if c.link:
                text = f'<a href="{html.escape(c.link, quote=True)}">{text}</a>'
            cells.append(f'<td{" class=num" if is_num else ""}{_sort_attr(c)}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-block"><div class="table-tools"><label>Filter {html.escape(t.caption.lower())}: '
            f'<input type="search" class="filter" data-table="{t.anchor}" placeholder="e.g. w8a8-pc minmax"></label> '
            f'<span class="count" data-table="{t.anchor}">{len(t.rows)} rows</span></div>\n'
            f'<div class="scroll"><table id="{t.anchor}" class="sortable"><caption>{html.escape(t.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table></div></div>")


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header,main{max-width:1500px;margin:0 auto;padding:0 24px}
header{padding-top:18px}h1{font-size:26px;margin:8px 0}h2{font-size:21px;margin:34px 0 6px;border-bottom:2px solid #d5d9e0}
h3{font-size:17px;margin:26px 0 6px}nav ul{font-size:13px;margin:4px 0}code{background:#eceff3;padding:0 3px;border-radius:3px}
.scroll{overflow-x:auto;background:#fff;border:1px solid #d5d9e0;border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:13px}caption{text-align:left;font-weight:600;padding:6px 8px}
th,td{padding:4px 8px;border-bottom:1px solid #e6e9ee;white-space:nowrap;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef1f5;position:sticky;top:0}th button{all:unset;cursor:pointer;font-weight:600}
th[aria-sort=ascending] button::after{content:" \\25B2"}th[aria-sort=descending] button::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafbfc}tbody tr:hover{background:#eef5ff}
.table-tools{margin:10px 0 4px;font-size:13px}.table-tools input{padding:3px 6px;width:260px}.count{color:#667}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #d5d9e0;background:#fff}figcaption{font-size:12px;color:#556}
"""

SCRIPT = """
(function(){
  function key(td,type){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
    if(type==='num'){var x=parseFloat(v);return isNaN(x)?null:x;}return v.toLowerCase();}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.querySelector('button').addEventListener('click',function(){
        var type=th.getAttribute('data-type');var asc=th.getAttribute('aria-sort')!=='ascending';
        table.querySelectorAll('th').forEach(function(o){o.setAttribute('aria-sort','none');});
        th.setAttribute('aria-sort',asc?'ascending':'descending');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.forEach(function(r,i){r._i=i;});
        rows.sort(function(a,b){var x=key(a.cells[col],type),y=key(b.cells[col],type);
          if(x===y)return a._i-b._i;if(x===null||x==='')return 1;if(y===null||y==='')return -1;
          return (x<y?-1:1)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});});});});
  document.querySelectorAll('input.filter').forEach(function(input){
    input.addEventListener('input',function(){
      var table=document.getElementById(input.getAttribute('data-table'));
      var terms=input.value.toLowerCase().split(/\\s+/).filter(Boolean);var shown=0;
      Array.prototype.forEach.call(table.tBodies[0].rows,function(r){var t=r.textContent.toLowerCase();
        var ok=terms.every(function(w){return t.indexOf(w)>=0;});r.hidden=!ok;if(ok)shown++;});
      document.querySelector('span.count[data-table="'+input.getAttribute('data-table')+'"]').textContent=
        shown+' of '+table.tBodies[0].rows.length+' rows';});});
})();
"""


def render_html(sections: Sequence[Section], results_dir: Path) -> str:
    """One self-contained page: the plots are embedded as data URIs, styles and script inline."""
    parts = ['<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>mqbench leaderboard</title>", f"<style>{STYLE}</style></head><body>"]
    for s in sections:
        if s.level == 1:
            parts.append(f'<header><h1 id="{s.anchor}">{html.escape(s.title)}</h1>')
            parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
            parts.append("<nav><ul>")
            for x in sections:
                if x.level in (2, 3):
                    style = ' style="margin-left:1.2em"' if x.level == 3 else ""
                    parts.append(f'<li{style}><a href="#{x.anchor}">{html.escape(x.title)}</a></li>')
            parts.append("</ul></nav></header><main>")
            continue
        parts.append(f'<section><h{s.level} id="{s.anchor}">{html.escape(s.title)}</h{s.level}>')
        parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        parts += [_html_table(t) for t in s.tables]
        for caption, path in s.images:
            data = base64.b64encode((results_dir / path).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(caption, quote=True)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')
        parts.append("</section>")
    parts.append(f"</main><script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- writing

MANIFEST = ".mqbench-published.json"  # the files the last publish wrote: what the next one may replace


def owned_files(results_dir: Path) -> set[str]:
    """The files (relative paths) that ``--publish`` wrote into ``results_dir`` last time, from its manifest."""
    path = results_dir / MANIFEST
    if not path.exists():
        return set()
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        raise ResultsDirError(f"{path} is not a manifest mqbench can read ({type(exc).__name__}); remove it and the "
                              "published files it listed (they are rebuilt from records/), then publish again") from None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ResultsDirError(f"{path} does not list the published files; remove it and the published files, then "
                              "publish again")
    return set(files)


def check_ownership(results_dir: Path, owned: set[str]) -> None:
    """ResultsDirError naming the first file that publishing would replace or delete but did not write."""
    plots = results_dir / PLOTS_DIR
    if plots.exists() and not plots.is_dir():
        raise ResultsDirError(f"{plots} is not a folder; publishing needs {PLOTS_DIR}/ for its plots: move it away")
    theirs = [name for name in OUTPUTS if (results_dir / name).exists() and name not in owned]
    if plots.is_dir():
        theirs += sorted(p.relative_to(results_dir).as_posix() for p in plots.rglob("*")
                         if not p.is_dir() and p.relative_to(results_dir).as_posix() not in owned)
    if theirs:
        more = f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""
        raise ResultsDirError(
            f"{results_dir / theirs[0]}{more} was not written by `mqbench leaderboard --publish` (it is not in "
            f"{MANIFEST}), and publishing would replace it: move it away or publish another --results directory")


def publish(loaded: LoadResult, results_dir: Path, load_detail: Callable[[dict[str, Any]], Any] | None = None,
            extra: Sequence[Section] = ()) -> list[Path]:
    """Render every output into ``results_dir``; returns the files written.

    Everything is built in a temporary folder inside ``results_dir`` first, so a failure while rendering leaves the
    published site as it was. Then each output and ``plots/`` are swapped in by renames (undone if one fails), and
    ``MANIFEST`` lists what was written. Publishing refuses (ResultsDirError, before any work) to replace a file it
    did not write: an ``index.html`` or a ``plots/`` file of someone else's stays untouched."""
    if not loaded.records:
        raise ResultsDirError(f"{results_dir / 'records'} holds no record this mqbench reads: nothing to publish "
                              "(run `mqbench run` first, or give the --results directory that holds the records)")
    owned = owned_files(results_dir)
    check_ownership(results_dir, owned)
    try:
        build = Path(tempfile.mkdtemp(dir=results_dir, prefix=".publish-"))
    except OSError as exc:
        raise ResultsDirError(f"cannot publish into {results_dir} ({exc.strerror or exc}); make it writable or "
                              "publish another --results directory") from None
    try:
        files = _render_into(build, loaded, load_detail, extra)
        _swap_in(build, results_dir, files, owned)
    except OSError as exc:
        raise ResultsDirError(f"publishing into {results_dir} failed ({exc.strerror or exc}); the published files "
                              "are as they were: free space or make the directory writable, then publish again") from None
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return [results_dir / f for f in files]


def _render_into(build: Path, loaded: LoadResult, load_detail: Callable[[dict[str, Any]], Any] | None,
                 extra: Sequence[Section]) -> list[str]:
    """Every output rendered into the empty folder ``build``; their paths relative to it."""
    sections = build_page(loaded, load_detail, build, extra)
    outputs = {
        "LEADERBOARD.md": render_markdown(sections),
        "leaderboard.csv": leaderboard.render_csv(loaded),
        "leaderboard.json": leaderboard.render_json(loaded),
        "index.html": render_html(sections, build),
    }
    for name in OUTPUTS:
        atomic_write(build / name, outputs[name].encode("utf-8"), overwrite=False)
    plots = sorted(p.relative_to(build).as_posix() for p in (build / PLOTS_DIR).rglob("*.png"))
    return [*OUTPUTS, *plots]


def _swap_in(build: Path, results_dir: Path, files: list[str], owned: set[str]) -> None:
    """Move the built outputs and ``plots/`` over the published ones (kept in ``build`` until the end, and put back
    if a move fails). The manifest names the old and the new files while they are swapped, the new ones after."""
    _write_manifest(results_dir, owned | set(files))
    backup = build / ".previous"
    backup.mkdir()
    done: list[tuple[Path, Path | None]] = []
    try:
        for name in (*OUTPUTS, PLOTS_DIR):
            target, new = results_dir / name, build / name
            old = backup / name if target.exists() else None
            if old is not None:
                os.replace(target, old)
            done.append((target, old))
            if new.exists():
                os.replace(new, target)
    except OSError:
        for target, old in reversed(done):
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if old is not None:
                os.replace(old, target)
        _write_manifest(results_dir, owned)
        raise
    _write_manifest(results_dir, set(files))


def _write_manifest(results_dir: Path, files: set[str]) -> None:
    body = {"written_by": "mqbench leaderboard --publish", "files": sorted(files)}
    atomic_write(results_dir / MANIFEST, (json.dumps(body, indent=1) + "\n").encode(), overwrite=True)


__all__ = ["MANIFEST", "OUTPUTS", "PLOTS_DIR", "Cell", "Section", "Table", "build_page", "plot_accuracy", "publish",
           "render_html", "render_markdown"]
