"""The ``mqbench`` command line: list, plugins, run, leaderboard.

Exit codes: 0 success; 1 some cells failed (summary printed); 2 usage error (unknown name, bad
scheme, unusable results directory); 130 interrupted (every finished cell is stored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mqbench import __version__
from mqbench.data.paths import DATA_ENV
from mqbench.errors import UsageError
from mqbench.metrics.latency import LatencySettings
from mqbench.plugins import DISABLE_ENV, Plugins, get_plugins
from mqbench.progress import Reporter, make_progress
from mqbench.report import leaderboard
from mqbench.store import Store
from mqbench.suites import DEFAULT_SUITE

KINDS = ("models", "datasets", "methods", "backends", "suites", "metrics")
DEFAULT_RESULTS = "results"
RESULTS_ENV = "MQBENCH_RESULTS"

# Piped output gets wide lines instead of rich's 80-column default, so tables stay readable in logs.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


def _describe(kind: str, item: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": item.name, "description": getattr(item, "description", "")}
    if kind == "models":
        d.update(family=item.family, input_size=item.input_size, weights=[w.name for w in item.weights])
    elif kind == "methods":
        d.update(stage=item.stage, quantizes=item.quantizes, version=item.version,
                 config=item.default_config().to_dict())
    elif kind == "backends":
        d.update(simulation_only=item.simulation_only, version=item.version, unavailable=item.unavailable())
    elif kind == "datasets":
        d.update(num_classes=item.num_classes, image_size=item.image_size)
    elif kind == "suites":
        d.update(dataset=item.dataset, models=list(item.models), pipelines=list(item.pipelines),
                 backends=list(item.backends), schemes=list(item.schemes), seeds=list(item.seeds))
    return d


def cmd_list(args: argparse.Namespace, plugins: Plugins) -> int:
    kinds = [args.kind] if args.kind else list(KINDS)
    data = {k: [{**_describe(k, item), "plugin": plugins.registries[k[:-1]].owner(item.name)}
                for item in plugins.registries[k[:-1]]] for k in kinds}
    if args.json:
        print(json.dumps(data if args.kind is None else data[args.kind], indent=1, sort_keys=True))
        return 0
    for kind, items in data.items():
        table = Table(title=kind, title_justify="left")
        for col in ("name", "description", "plugin"):
            table.add_column(col)
        for item in items:
            extra = ""
            if kind == "methods":
                params = ", ".join(f"{k}={v}" for k, v in item["config"].items() if k != "version")
                extra = f" [{item['stage']}]" + (f" parameters: {params}" if params else "")
            elif kind == "models":
                extra = f" (weights: {', '.join(item['weights'])})"
            elif kind == "backends" and item["unavailable"]:
                extra = f" [unavailable: {item['unavailable']}]"
            table.add_row(item["name"], escape(item["description"] + extra), item["plugin"])
        out.print(table)
    return 0


def cmd_plugins(args: argparse.Namespace, plugins: Plugins) -> int:
    infos = list(plugins.infos.values())
    unavailable = {i.name: {name: why for name in i.registered.get("backend", [])
                            if (why := plugins.backends.get(name).unavailable())} for i in infos}
    if args.json:
        print(json.dumps([{**i.to_dict(), "unavailable_backends": unavailable[i.name]} for i in infos], indent=1,
                         sort_keys=True))
        return 0
    table = Table(title="plugins", title_justify="left")
    for col in ("name", "source", "version", "hooks", "registered", "status"):
        table.add_column(col)
    for i in infos:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in i.registered.items())
        source = i.source + (f" ({i.distribution})" if i.distribution else "")
        status = i.status + (f": {i.error}" if i.error else "")
        status += "".join(f"; backend {name} unavailable: {why}" for name, why in unavailable[i.name].items())
        table.add_row(i.name, source, i.version or "", ", ".join(h.removeprefix("mqbench_") for h in i.hooks),
                      registered, status, style="red" if i.status == "failed" else None)
    out.print(table)
    if any(i.status == "disabled" for i in infos):
        out.print(f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')}", style="dim")
    return 0


def _results_dir(args: argparse.Namespace) -> str:
    return str(args.results or os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from mqbench import runner

    if not (args.all or args.suite or args.model or args.method or args.backend or args.scheme):
        raise UsageError("nothing to run: give --all (the default suite), --suite S, or --model/--method/"
                         "--backend/--scheme to vary the default suite (see `mqbench run --help`)")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be a positive number of images, got {args.limit}")
    if args.data_dir:
        if not os.path.isdir(args.data_dir):
            raise UsageError(f"--data-dir {args.data_dir} is not a directory")
        os.environ[DATA_ENV] = args.data_dir
    suite = plugins.suites.get(args.suite or DEFAULT_SUITE)
    cells = runner.expand(plugins, suite, args.model or (), args.method or (), args.backend or (),
                          args.scheme or (), eval_limit=args.limit)
    store = Store(_results_dir(args))
    store.ensure_writable()
    progress = make_progress(enabled=not args.quiet)
    try:
        timing = None if args.no_latency else LatencySettings(min_runs=args.latency_runs, min_time_s=args.latency_time)
    except ValueError as exc:
        raise UsageError(f"--latency-runs / --latency-time: {exc}") from None
    ws = runner.Workspace(plugins, Reporter(progress), batch_size=args.batch_size, latency=timing)

    def report(record: dict[str, Any]) -> None:
        c = record["config"]
        label = f"{c['model']} {c['pipeline']} {c['scheme']} {c['backend']}"
        secs = sum(record["timings_s"].values())
        if record["status"] == "ok":
            _, acc = leaderboard._accuracy(record)
            top1 = f"top-1 {100 * acc['top1']['value']:.2f}%" if acc else ""
            progress.console.print(f"[green]done[/] {label}: {top1} ({secs:.1f} s)")
        elif record["status"] == "skipped":
            progress.console.print(f"[yellow]skipped[/] {label}: {record['skip_reason']}")
        else:
            progress.console.print(f"[red]FAILED[/] {label}: {record['error']['type']}: {record['error']['message']}")

    err.print(f"suite {suite.name}: {len(cells)} cells; results in {store.root}")
    try:
        with progress:
            summary = runner.run(cells, store, ws, force=args.force, on_record=report)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: every finished cell is stored; run the same command again to do "
                  "only the missing cells")
        return 130
    if summary.already_stored:
        err.print(f"{summary.already_stored} of {len(cells)} cells already stored, not rerun (use --force to rerun)")
    loaded = store.load()
    for path, problem in loaded.problems:
        err.print(f"[yellow]warning[/]: skipped {path}: {problem}")
    if not args.quiet:
        leaderboard.print_rich(loaded, out)
    if summary.failed:
        err.print(f"[red]{len(summary.failed)} of {summary.to_run} cells failed:[/]")
        for r in summary.failed:
            c = r["config"]
            err.print(f"  {c['model']} {c['pipeline']} {c['scheme']} {c['backend']}: "
                      f"{r['error']['type']}: {r['error']['message']}")
        return 1
    return 0


def cmd_leaderboard(args: argparse.Namespace, plugins: Plugins) -> int:
    store = Store(_results_dir(args))
    loaded = store.load()
    for path, problem in loaded.problems:
        err.print(f"warning: skipped {path}: {problem}")
    if args.format == "rich":
        leaderboard.print_rich(loaded, out)
    else:
        sys.stdout.write(leaderboard.RENDERERS[args.format](loaded))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqbench", description="Benchmark quantization methods for mobile CNNs on simulated and real int8 "
        "backends, with provenance-carrying records and leaderboards derived from them.")
    parser.add_argument("--version", action="version", version=f"mqbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered models, datasets, methods, backends, suites, metrics",
                       description="List what the loaded plugins registered.")
    p.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plugins", help="list loaded plugins, their hooks, and failures",
                       description=f"Show every plugin (built-in and entry point), the hooks it implements, what it "
                       f"registered, and plugins that failed to load. {DISABLE_ENV}=a,b skips plugins by name.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "run", help="run the cells of a suite and store one record per cell",
        description="Expand a suite into cells (model x pipeline x backend x scheme x seed), run the cells "
        "that are not stored yet, write one record per cell atomically, and print the leaderboard. "
        "--model/--method/--backend/--scheme replace that dimension of the suite (repeat to give several).",
        epilog="Examples: mqbench run --all;  mqbench run --model quick_cnn --method minmax --scheme w4a8-pc;  "
        "mqbench run --suite quick --limit 200 --results /tmp/r")
    p.add_argument("--all", action="store_true", help=f"run the whole default suite ({DEFAULT_SUITE})")
    p.add_argument("--suite", metavar="S", help=f"suite to run (default {DEFAULT_SUITE}; see `mqbench list suites`)")
    p.add_argument("--model", action="append", metavar="M", help="model, or model:weights (repeatable)")
    p.add_argument("--method", action="append", metavar="P",
                   help="pipeline (repeatable): method names joined by '+', each optionally with parameters, e.g. "
                   "'cle+mse+bias_correction', 'percentile(percentile=99.9)' (quote it for the shell); "
                   "`mqbench list methods` shows every parameter and default")
    p.add_argument("--backend", action="append", metavar="B", help="backend (repeatable)")
    p.add_argument("--scheme", action="append", metavar="S", help="scheme such as w8a8-pt, w8a8-pc, w4a8 (repeatable)")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.add_argument("--data-dir", metavar="DIR", help=f"real data folder holding imagenet/ and cifar10/ (default "
                   f"${DATA_ENV}, else ../shared/data)")
    p.add_argument("--force", action="store_true", help="rerun cells that are already stored (adds new records)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate on the first N test images only")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="evaluation batch size (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no final table")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the latency measurement of real-kernel backends (by default each such cell times "
                        "the deployed and the float model at batch 1 and 32, with 1 thread and every core)")
    p.add_argument("--latency-runs", type=int, default=20, metavar="N",
                   help="latency: at least N timed calls per setting, after 3 warm-up calls (default 20)")
    p.add_argument("--latency-time", type=float, default=2.0, metavar="S",
                   help="latency: and at least S seconds of timed calls per setting (default 2)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("leaderboard", help="render the leaderboard from stored records",
                       description="Render the leaderboard from the records in the results directory only.")
    p.add_argument("--format", choices=("rich", "md", "csv", "json"), default="rich", help="output format")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plugins = get_plugins()
        return int(args.func(args, plugins))
    except UsageError as exc:
        err.print(f"mqbench: error: {exc}", markup=False, highlight=False)
        return 2


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
