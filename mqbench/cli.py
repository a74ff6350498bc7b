"""The ``mqbench`` command line: list, plugins, run, analyze, train, leaderboard, store.

Exit codes: 0 success; 1 some cells failed (summary printed), or ``store check`` found problems; 2 usage error
(unknown name, bad scheme or option, unusable or full results directory; one line on stderr); 130 interrupted
(every finished cell is stored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mqbench import __version__, allocator
from mqbench.data.paths import DATA_ENV
from mqbench.errors import UsageError
from mqbench.harness.execute import EXECUTORS
from mqbench.harness.workspace import EVAL_BATCH_SIZE
from mqbench.metrics.latency import MAX_TIME_S, LatencySettings
from mqbench.plugins import DISABLE_ENV, Plugins, get_plugins
from mqbench.progress import Reporter, make_progress
from mqbench.report import layerwise as layerwise_report
from mqbench.report import leaderboard, publish
from mqbench.report.escape import term
from mqbench.store import Store
from mqbench.suites import DEFAULT_SUITE

KINDS = ("models", "datasets", "methods", "toolkits", "runtimes", "suites", "metrics")
KIND_ALIASES = {"backends": "runtimes"}  # the first wave's name of runtimes
DEFAULT_RESULTS = "results"
RESULTS_ENV = "MQBENCH_RESULTS"

# Piped output gets wide lines instead of rich's 80-column default, so tables stay readable in logs.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


class Parser(argparse.ArgumentParser):
    """argparse with mqbench's one-line errors: ``mqbench run: error: ...`` and exit 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` to ``hi`` (no upper bound when None)."""
    allowed = f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    return parse


def _plain(x: float) -> str:
    return f"{x:.0f}" if x == int(x) else f"{x:g}"


def float_in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and inf refused."""
    allowed = f"a finite number {'>' if lo_open else '>='} {_plain(lo)} and <= {_plain(hi)}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


IMAGES = int_in(1)              # a number of images
BATCH = int_in(1, 65536)        # a batch size
SECONDS = float_in(0.0, 30 * 24 * 3600.0, lo_open=True)  # a time budget: positive, at most 30 days


def _describe(kind: str, item: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": item.name, "description": getattr(item, "description", "")}
    if kind == "models":
        d.update(family=item.family, input_size=item.input_size, weights=[w.name for w in item.weights])
    elif kind == "methods":
        d.update(stage=item.stage, quantizes=item.quantizes, needs_training=item.needs_training, version=item.version,
                 config=item.default_config().to_dict())
    elif kind == "runtimes":
        d.update(deploys=item.deploys, formats=sorted(item.formats), version=item.version,
                 unavailable=item.unavailable())
    elif kind == "toolkits":
        d.update(output_format=item.output_format, version=item.version, unavailable=item.unavailable(),
                 recipes={name: {"description": r.description, "config": r.config.to_dict(),
                                 "output_format": item.format_of(name)}
                          for name, r in item.recipes.items()})
    elif kind == "datasets":
        d.update(num_classes=item.num_classes, image_size=item.image_size)
    elif kind == "suites" and item.parts:
        d.update(parts=[_describe("suites", part) for part in item.parts])
    elif kind == "suites":
        d.update(dataset=item.dataset, models=list(item.models), pipelines=list(item.pipelines),
                 backends=list(item.backends), schemes=list(item.schemes), seeds=list(item.seeds))
    return d


def cmd_list(args: argparse.Namespace, plugins: Plugins) -> int:
    kind_asked = KIND_ALIASES.get(args.kind, args.kind)
    kinds = [kind_asked] if kind_asked else list(KINDS)
    data = {k: [{**_describe(k, item), "plugin": plugins.registries[k[:-1]].owner(item.name)}
                for item in plugins.registries[k[:-1]]] for k in kinds}
    if args.json:
        print(json.dumps(data if kind_asked is None else data[kind_asked], indent=1, sort_keys=True))
        return 0
    for kind, items in data.items():
        table = Table(title=kind, title_justify="left")
        for col in ("name", "description", "plugin"):
            table.add_column(col)
        for item in items:
            extra = ""
            if kind == "methods":
                params = ", ".join(f"{k}={v}" for k, v in item["config"].items() if k != "version")
                stage = item["stage"] + (", trains: needs the train split" if item["needs_training"] else "")
                extra = f" [{stage}]" + (f" parameters: {params}" if params else "")
            elif kind == "models":
                extra = f" (weights: {', '.join(item['weights'])})"
            elif kind == "toolkits":
                formats = {r["output_format"] for r in item["recipes"].values()}
                recipes = ", ".join(f"{item['name']}:{name}" + (f" writes {r['output_format']}" if len(formats) > 1 else "")
                                    for name, r in item["recipes"].items())
                extra = f" (recipes: {recipes}" + (f"; writes {formats.pop()})" if len(formats) == 1 else ")")
            elif kind == "runtimes":
                extra = f" (runs: {', '.join(item['formats'])})"
            if kind in ("toolkits", "runtimes") and item["unavailable"]:
                extra += f" [unavailable: {item['unavailable']}]"
            table.add_row(item["name"], escape(item["description"] + extra), item["plugin"])
        out.print(table)
    return 0


def cmd_plugins(args: argparse.Namespace, plugins: Plugins) -> int:
    infos = list(plugins.infos.values())
    unavailable = {i.name: {name: why for name in i.registered.get("runtime", [])
                            if (why := plugins.runtimes.get(name).unavailable())} for i in infos}
    toolkits = {i.name: {name: why for name in i.registered.get("toolkit", [])
                         if (why := plugins.toolkits.get(name).unavailable())} for i in infos}
    if args.json:
        print(json.dumps([{**i.to_dict(), "unavailable_backends": unavailable[i.name],
                           "unavailable_toolkits": toolkits[i.name]} for i in infos], indent=1, sort_keys=True))
        return 0
    table = Table(title="plugins", title_justify="left")
    for col in ("name", "source", "version", "hooks", "registered", "status"):
        table.add_column(col)
    for i in infos:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in i.registered.items())
        source = i.source + (f" ({i.distribution})" if i.distribution else "")
        status = i.status + (f": {i.error}" if i.error else "")
        status += "".join(f"; runtime {name} unavailable: {why}" for name, why in unavailable[i.name].items())
        status += "".join(f"; toolkit {name} unavailable: {why}" for name, why in toolkits[i.name].items())
        table.add_row(i.name, source, i.version or "", ", ".join(h.removeprefix("mqbench_") for h in i.hooks),
                      registered, status, style="red" if i.status == "failed" else None)
    out.print(table)
    if any(i.status == "disabled" for i in infos):
        out.print(f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')}", style="dim")
    return 0


def _results_dir(args: argparse.Namespace) -> str:
    """--results, else $MQBENCH_RESULTS, else ./results; an empty one is a UsageError (it would mean the current
    directory, silently)."""
    where = args.results if args.results is not None else os.environ.get(RESULTS_ENV, DEFAULT_RESULTS)
    if not where.strip():
        origin = "--results" if args.results is not None else f"${RESULTS_ENV}"
        raise UsageError(f"{origin} is empty; give the results directory (e.g. --results results)")
    return str(where)


def _use_data_dir(args: argparse.Namespace) -> None:
    """--data-dir checked and made the current data folder."""
    if args.data_dir:
        if not os.path.isdir(args.data_dir):
            raise UsageError(f"--data-dir {args.data_dir} is not a directory")
        os.environ[DATA_ENV] = args.data_dir


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from mqbench import harness

    for recipe in args.toolkit or ():
        if ":" not in recipe.partition("(")[0]:
            raise UsageError(f"--toolkit {recipe}: write toolkit:recipe, e.g. ort:minmax (see `mqbench list toolkits`)")
    quantizers = [*(args.method or ()), *(args.toolkit or ())]
    if not (args.all or args.suite or args.model or quantizers or args.backend or args.scheme):
        raise UsageError("nothing to run: give --all (the default suite), --suite S, or --model/--method/--toolkit/"
                         "--backend/--scheme to vary the default suite (see `mqbench run --help`)")
    _use_data_dir(args)
    suite = plugins.suites.get(args.suite or DEFAULT_SUITE)
    cells = harness.expand(plugins, suite, args.model or (), quantizers, args.backend or (),
                          args.scheme or (), eval_limit=args.limit, train_budget_s=args.train_budget)
    if args.layerwise is not None:
        cells = [dataclasses.replace(c, layerwise_images=args.layerwise) for c in cells]
    return _run_cells(args, plugins, suite.name, cells, print_table=not args.quiet)


def _run_cells(args: argparse.Namespace, plugins: Plugins, suite_name: str, cells: Sequence[Any],
               print_table: bool) -> int:
    from mqbench import harness

    executor = _executor(args)
    store = Store(_results_dir(args))
    store.ensure_writable()
    progress = make_progress(enabled=not args.quiet)
    try:
        timing = None if args.no_latency else LatencySettings(min_runs=args.latency_runs, min_time_s=args.latency_time)
    except ValueError as exc:
        raise UsageError(f"--latency-runs / --latency-time: {exc}") from None
    ws = harness.Workspace(plugins, Reporter(progress), batch_size=args.batch_size, latency=timing,
                           eval_batch_size=args.eval_batch_size,
                           integer_sim=not getattr(args, "no_integer_sim", False))

    def report(record: dict[str, Any]) -> None:
        c = record["config"]
        label = term(f"{c['model']} {c['pipeline']} {c['scheme']} {c['backend']}")
        secs = sum(record["timings_s"].values())
        if record["status"] == "ok":
            _, acc = leaderboard._accuracy(record)
            top1 = f"top-1 {100 * acc['top1']['value']:.2f}%" if acc else ""
            progress.console.print(f"[green]done[/] {label}: {top1} ({secs:.1f} s)")
        elif record["status"] == "skipped":
            progress.console.print(f"[yellow]skipped[/] {label}: {term(record['skip_reason'])}")
        else:
            error = " ".join(f"{record['error']['type']}: {record['error']['message']}".split())
            progress.console.print(f"[red]FAILED[/] {label}: {term(error)}")

    err.print(term(f"suite {suite_name}: {len(cells)} cells; results in {store.root}"))
    try:
        with progress:
            summary = harness.run(cells, store, ws, executor, force=args.force, on_record=report)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: every finished cell is stored; run the same command again to do "
                  "only the missing cells")
        return 130
    if summary.already_stored:
        err.print(f"{summary.already_stored} of {len(cells)} cells already stored, not rerun (use --force to rerun)")
    loaded = store.load()
    for path, problem in loaded.problems:
        err.print(f"[yellow]warning[/]: skipped {term(path)}: {term(problem)}")
    if print_table:
        leaderboard.print_rich(loaded, out)
    if summary.failed:
        err.print(f"[red]{len(summary.failed)} of {summary.to_run} cells failed:[/]")
        for r in summary.failed:
            c = r["config"]
            error = " ".join(f"{r['error']['type']}: {r['error']['message']}".split())
            err.print(f"  {c['model']} {c['pipeline']} {c['scheme']} {c['backend']}: {error}", markup=False,
                      highlight=False)
        return 1
    return 0


def _executor(args: argparse.Namespace) -> Any:
    """The executor ``mqbench run`` asked for; Ray options without ``--executor ray`` are a usage error."""
    from mqbench import harness

    if getattr(args, "executor", "in-process") != "ray":
        given = [opt for opt, value, default in (("--address", getattr(args, "address", None), None),
                                                 ("--cpus-per-cell", getattr(args, "cpus_per_cell", 1.0), 1.0),
                                                 ("--gpus-per-cell", getattr(args, "gpus_per_cell", 0.0), 0.0),
                                                 ("--max-retries", getattr(args, "max_retries", 2), 2))
                 if value != default]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --executor ray")
        return harness.EXECUTORS[getattr(args, "executor", "in-process")]({})
    return harness.EXECUTORS["ray"]({"address": args.address, "cpus_per_cell": args.cpus_per_cell,
                                     "gpus_per_cell": args.gpus_per_cell, "max_retries": args.max_retries})


def _suite_for(plugins: Plugins, model: str) -> str:
    """The first registered suite that evaluates on the dataset ``model`` (``name[:weights]``) classifies."""
    name, _sep, weights = model.partition(":")
    spec = plugins.models.get(name)
    dataset = spec.get_weights(weights or spec.default_weights).dataset
    for suite in plugins.suites:
        if suite.dataset == dataset:
            return str(suite.name)
    raise UsageError(f"no suite evaluates on {dataset!r}, the dataset of {model}; give --suite")


def cmd_analyze(args: argparse.Namespace, plugins: Plugins) -> int:
    from mqbench import harness

    _use_data_dir(args)
    suite = plugins.suites.get(args.suite or _suite_for(plugins, args.model[0]))
    cells = harness.expand(plugins, suite, args.model, args.method or (), args.backend or ("simulated",),
                          args.scheme or (), eval_limit=args.limit)
    cells = [dataclasses.replace(c, layerwise_images=args.images) for c in cells]
    args.no_latency, args.latency_runs, args.latency_time = True, 20, 2.0
    code = _run_cells(args, plugins, suite.name, cells, print_table=False)
    if code == 130:
        return code
    store = Store(_results_dir(args))
    loaded = store.load()
    wanted = {harness.config_hash(harness.cell_config(c, plugins)) for c in cells}
    records = [r for r in layerwise_report.analysed(loaded.records) if r["config_hash"] in wanted]
    newest = {r["config_hash"]: r for r in loaded.records if r["config_hash"] in wanted}
    for r in newest.values():
        if not r.get("layerwise_unavailable"):
            continue
        err.print(f"no layer-wise analysis of {r['config']['model']} {r['config']['pipeline']} {r['config']['scheme']}"
                  f" {r['config']['backend']}: {r['layerwise_unavailable']}")
    details = {r["record_id"]: store.attachment(r, "layerwise") for r in records}
    if not args.quiet:
        for r in records:
            out.print(layerwise_report.layer_table(r, details[r["record_id"]]))
            kinds = r["layerwise"].get("weight_range_ratio_median_by_kind") or {}
            out.print("weight range ratio (largest / median channel), median per layer kind: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    if records:
        out.print(layerwise_report.error_table(layerwise_report.error_rows(records)))
        plots_dir = Path(args.plots) if args.plots else store.root / "analysis"
        written = layerwise_report.render_plots(records, lambda r: details[r["record_id"]], plots_dir)
        for path in written:
            out.print(f"plot: {path}")
    return code


def _build_kwargs(items: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--build {item!r}: write key=value, e.g. --build width_mult=0.5")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def cmd_train(args: argparse.Namespace, plugins: Plugins) -> int:
    from mqbench.errors import MqbenchError
    from mqbench.models.weights import train_to_file
    from mqbench.train import TrainConfig

    _use_data_dir(args)
    spec = plugins.models.get(args.model)
    dataset = plugins.datasets.get(args.dataset)
    dataset.check(("train", "test"))
    try:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                             weight_decay=args.weight_decay, seed=args.seed, flip=not args.no_flip,
                             crop_padding=args.crop_padding, label_smoothing=args.label_smoothing,
                             channels_last=not args.contiguous, depthwise_weight_decay=args.depthwise_weight_decay)
    except ValueError as exc:
        raise UsageError(f"training options: {exc}") from None
    build_kwargs = _build_kwargs(args.build or ())
    try:
        spec.build(dataset.num_classes, **build_kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--build for model {spec.name}: {exc}") from None
    out_dir = Path(args.out) if args.out else Path(_results_dir(args)) / "models"
    progress = make_progress(enabled=not args.quiet)
    command = "mqbench " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else ""
    try:
        with progress:
            path, meta, trained = train_to_file(
                spec, dataset, config, out_dir, build_kwargs=build_kwargs, train_limit=args.train_limit,
                test_limit=args.test_limit, time_budget_s=args.time_budget, force=args.force, command=command,
                reporter=Reporter(progress))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the last finished epoch is checkpointed; run the same command again to "
                  "resume from it")
        return 130
    except MqbenchError as exc:
        err.print(f"mqbench: error: {exc}", markup=False, highlight=False)
        return 2
    top1 = meta.get("test_top1")
    what = "trained" if trained else "already trained (use --force to retrain)"
    out.print(f"{what}: {path}  sha256 {meta['sha256']}  test top-1 "
              f"{'n/a' if top1 is None else f'{100 * top1:.2f}%'} after {meta['epochs_done']} of {args.epochs} epochs "
              f"({meta['train_seconds']:.0f} s)" + ("; stopped by the time budget" if meta["stopped_by_time_budget"]
                                                    else ""), markup=False, highlight=False)
    return 0


def _existing_results(args: argparse.Namespace) -> Store:
    """The store of an existing results directory (leaderboard, store check), or a UsageError saying what is wrong."""
    store = Store(_results_dir(args))
    if not store.root.is_dir():
        raise UsageError(f"results directory {store.root} does not exist; give --results DIR (the folder holding "
                         "records/) or run `mqbench run` first")
    if not store.records_dir.is_dir():
        raise UsageError(f"{store.root} holds no records/ folder, so it is not an mqbench results directory; give "
                         "--results DIR (the folder holding records/)")
    return store


def cmd_leaderboard(args: argparse.Namespace, plugins: Plugins) -> int:
    store = _existing_results(args)
    loaded = store.load()
    for path, problem in loaded.problems:
        err.print(f"warning: skipped {path}: {problem}", markup=False, highlight=False)
    if args.publish:
        written = publish.publish(loaded, store.root, lambda r: store.attachment(r, "layerwise"))
        for path in written:
            out.print(f"wrote {path}", markup=False, highlight=False)
        return 0
    links: list[str] = []
    if args.plots:
        written = layerwise_report.render_plots(loaded.records, lambda r: store.attachment(r, "layerwise"),
                                                Path(args.plots))
        links = [str(p) for p in written]
        for p in written:
            err.print(f"plot: {p}")
    if args.format == "rich":
        leaderboard.print_rich(loaded, out)
    elif args.format == "md":
        sys.stdout.write(leaderboard.render_markdown(loaded, links))
    else:
        sys.stdout.write(leaderboard.RENDERERS[args.format](loaded))
    return 0


def cmd_store(args: argparse.Namespace, plugins: Plugins) -> int:
    from mqbench import record_schema
    from mqbench.store import check_store, repair_store

    if args.action == "schema":
        print(json.dumps(record_schema.RECORD_SCHEMA, indent=1))
        return 0
    store = _existing_results(args)
    found = check_store(store, grace_s=60.0 * args.older_than)
    for path, why in found.problems:
        err.print(f"problem: {path}: {why}", markup=False, highlight=False)
    removed = set(repair_store(found)) if args.repair else set()
    for path, why in found.leftovers:
        verb = "removed" if path in removed else "leftover"
        out.print(f"{verb}: {path}: {why}", markup=False, highlight=False)
    left = len(found.leftovers) - len(removed)
    out.print(f"{found.records} records readable; {len(found.problems)} problem(s); {len(removed)} leftover(s) removed"
              + (f", {left} left (run with --repair to remove them)" if left else ""), markup=False, highlight=False)
    return 1 if found.problems or left else 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mqbench", description="Benchmark quantization methods for mobile CNNs on simulated and real int8 "
        "backends, with provenance-carrying records and leaderboards derived from them.")
    parser.add_argument("--version", action="version", version=f"mqbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered models, datasets, methods, toolkits, runtimes, suites, metrics",
                       description="List what the loaded plugins registered.")
    p.add_argument("kind", nargs="?", choices=(*KINDS, *KIND_ALIASES), help="only this kind ('backends' is "
                   "'runtimes')")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plugins", help="list loaded plugins, their hooks, and failures",
                       description=f"Show every plugin (built-in and entry point), the hooks it implements, what it "
                       f"registered, and plugins that failed to load. {DISABLE_ENV}=a,b skips plugins by name.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "run", help="run the cells of a suite and store one record per cell",
        description="Expand a suite into cells (model x quantizer x runtime x scheme x seed; a quantizer is an "
        "mqbench pipeline or a toolkit recipe), run the cells that are not stored yet, write one record per cell "
        "atomically, and print the leaderboard. --model/--method (--toolkit)/--backend/--scheme replace that "
        "dimension of the suite (repeat to give several).",
        epilog="Examples: mqbench run --all;  mqbench run --model quick_cnn --method minmax --scheme w4a8-pc;  "
        "mqbench run --suite quick --limit 200 --results /tmp/r;  "
        "mqbench run --suite imagenet --model mobilenet_v2:tf2ptq --toolkit ort:minmax --backend ort-qdq --scheme w8a8-pc")
    p.add_argument("--all", action="store_true", help=f"run the whole default suite ({DEFAULT_SUITE})")
    p.add_argument("--suite", metavar="S", help=f"suite to run (default {DEFAULT_SUITE}; see `mqbench list suites`)")
    p.add_argument("--model", action="append", metavar="M", help="model, or model:weights (repeatable)")
    p.add_argument("--method", action="append", metavar="P",
                   help="quantizer (repeatable): a pipeline of method names joined by '+', each optionally with "
                   "parameters, e.g. 'cle+mse+bias_correction', 'percentile(percentile=99.9)' (quote it for the "
                   "shell; `mqbench list methods` shows every parameter and default), or a toolkit recipe such as "
                   "'ort:minmax'")
    p.add_argument("--toolkit", action="append", metavar="T:R",
                   help="a toolkit's recipe as the quantizer (repeatable), e.g. ort:minmax, nncf:performance, "
                   "pt2e:xnnpack, torch.ao:default: another project's own quantizer on the same weights and images, "
                   "deployed on the runtimes that run its output (`mqbench list toolkits`)")
    p.add_argument("--backend", "--runtime", dest="backend", action="append", metavar="B",
                   help="runtime that executes the cell (repeatable; `mqbench list runtimes`): simulated, ort-qdq, "
                   "torch-x86, ...; a quantizer's output it cannot run is a skipped cell with the reason")
    p.add_argument("--scheme", action="append", metavar="S", help="scheme such as w8a8-pt, w8a8-pc, w4a8 (repeatable)")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.add_argument("--data-dir", metavar="DIR", help=f"real data folder holding imagenet/ and cifar10/ (default "
                   f"${DATA_ENV}, else ../shared/data)")
    p.add_argument("--force", action="store_true", help="rerun cells that are already stored (adds new records)")
    p.add_argument("--limit", type=IMAGES, metavar="N", help="evaluate on the first N test images only (a limit "
                   "above the split's size is the whole split, the same cell)")
    p.add_argument("--batch-size", type=BATCH, default=256, metavar="N",
                   help="batch of the calibration passes (the batches a method's observers see), 1 to 65536 "
                        "(default 256)")
    p.add_argument("--eval-batch-size", type=BATCH, default=EVAL_BATCH_SIZE, metavar="N",
                   help=f"evaluation batch, 1 to 65536 (default {EVAL_BATCH_SIZE}); the logits do not depend on it, "
                        "small batches are faster on a CPU (activations stay in cache)")
    p.add_argument("--train-budget", type=SECONDS, metavar="S",
                   help="wall-clock budget in seconds of each training step of a pipeline (qf_sepconv's fine-tuning): "
                        "it stops at the end of the epoch after which another would not fit, and the record says so; "
                        "part of the cell's config (default: none, the step's epochs run in full)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no final table")
    p.add_argument("--no-integer-sim", action="store_true",
                   help="skip the runtime's integer simulation (ort-qdq, ort-qoperator: the QuantSim in ONNX Runtime's "
                        "own arithmetic, about as costly as the simulation's evaluation); the record says it was not "
                        "run (integer_sim_unavailable), and it is the same cell: a later run without the switch finds "
                        "it stored (--force adds a record with it)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the latency measurement of real-kernel backends (by default each such cell times "
                        "the deployed and the float model at batch 1 and 32, with 1 thread and every core)")
    p.add_argument("--latency-runs", type=int_in(3, 100_000), default=LatencySettings.min_runs, metavar="N",
                   help=f"latency: at least N timed calls per setting, after {LatencySettings.warmup_runs} warm-up "
                        "calls, 3 to 100000 "
                        f"(default {LatencySettings.min_runs})")
    p.add_argument("--latency-time", type=float_in(0.0, MAX_TIME_S), default=LatencySettings.min_time_s, metavar="S",
                   help=f"latency: and at least S seconds of timed calls per setting, 0 to {MAX_TIME_S:g} "
                        f"(default {LatencySettings.min_time_s:g}); the float model is timed once per runtime and "
                        "model in a run, and the cells that share it say so (float_reused_in_process)")
    p.add_argument("--executor", choices=sorted(EXECUTORS), default="in-process",
                   help="where cells run: in this process, one after another (default), or as Ray tasks on a local "
                        "Ray instance or, with --address, an existing cluster (needs: pip install 'mqbench[ray]'); "
                        "records are written here either way")
    p.add_argument("--address", metavar="ADDR", help="--executor ray: the cluster to join (e.g. ray://head:10001, "
                   "head:6379 or auto); without it a local Ray instance runs the sweep")
    p.add_argument("--cpus-per-cell", type=float_in(0.0, 1024.0, lo_open=True), default=1.0, metavar="N",
                   help="--executor ray: CPUs (Ray resource, and torch threads) each cell takes (default 1)")
    p.add_argument("--gpus-per-cell", type=float_in(0.0, 64.0), default=0.0, metavar="N",
                   help="--executor ray: GPUs (Ray resource) each cell reserves (default 0)")
    p.add_argument("--max-retries", type=int_in(0, 100), default=2, metavar="N",
                   help="--executor ray: reruns of a cell whose worker died or whose task raised, before it is "
                        "stored as failed (default 2)")
    p.add_argument("--layerwise", type=IMAGES, nargs="?", const=128, metavar="N",
                   help="also analyse each quantized cell layer by layer on its first N evaluation images (default "
                   "N 128): local and accumulated SQNR, ranges; stored with the record (see `mqbench analyze`)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "analyze", help="layer-wise error accumulation of quantized cells: tables and plots",
        description="Run (or reuse) the cells of --model x --method x --scheme x --backend with a layer-wise "
        "analysis against the float model on the same evaluation images: for each weighted layer its local error "
        "(only that layer quantized, float input) and accumulated error (everything up to it quantized) as SQNR, "
        "MSE, cosine and per-channel mean shift; per-channel weight and activation ranges; the distribution shift "
        "of its activations. Prints a table per cell and the error-accumulation summary, and writes PNG plots "
        "(SQNR against depth with the pipelines overlaid, per-channel weight ranges). A stored cell without the "
        "analysis is rerun once (a newer record); with it, reused. Latency is not measured.",
        epilog="Example: mqbench analyze --model mobilenet_v2:tf2ptq --method minmax --method cle+bias_correction "
        "--scheme w8a8-pt")
    p.add_argument("--model", action="append", required=True, metavar="M", help="model or model:weights (repeatable)")
    p.add_argument("--method", action="append", metavar="P", help="pipeline (repeatable; default: the suite's)")
    p.add_argument("--scheme", action="append", metavar="S", help="scheme (repeatable; default: the suite's)")
    p.add_argument("--backend", "--runtime", dest="backend", action="append", metavar="B",
                   help="runtime whose quantizer placement is analysed (repeatable; default simulated: no deployment)")
    p.add_argument("--images", type=IMAGES, default=128, metavar="N",
                   help="analyse on the first N evaluation images (default 128)")
    p.add_argument("--suite", metavar="S", help="suite giving the dataset and data sizes (default: the first suite "
                   "that evaluates on the model's dataset)")
    p.add_argument("--plots", metavar="DIR", help="where to write the PNG plots (default RESULTS/analysis; "
                   "RESULTS/plots belongs to leaderboard --publish)")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.add_argument("--data-dir", metavar="DIR", help=f"real data folder (default ${DATA_ENV}, else ../shared/data)")
    p.add_argument("--force", action="store_true", help="rerun the cells even when their analysis is stored")
    p.add_argument("--limit", type=IMAGES, metavar="N", help="evaluate accuracy on the first N test images only")
    p.add_argument("--batch-size", type=BATCH, default=256, metavar="N",
                   help="batch of the calibration passes, 1 to 65536 (default 256)")
    p.add_argument("--eval-batch-size", type=BATCH, default=EVAL_BATCH_SIZE, metavar="N",
                   help=f"evaluation batch, 1 to 65536 (default {EVAL_BATCH_SIZE}); the logits do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-layer tables")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "train", help="train a model on a dataset's train split into a checkpoint with its sha256 and config",
        description="Train MODEL on DATASET's train split (SGD with Nesterov momentum, one-cycle cosine schedule, "
        "random crop and flip, optional label smoothing, fixed seed and data order) and write "
        "OUT/<model>-<dataset>-<key>.pt (float32 state dict) with a JSON sidecar: sha256, the full training config, "
        "the command, test top-1 per epoch, machine and versions. The training state is checkpointed after every "
        "epoch: after a kill, the same command resumes from the last epoch and ends with the same file as an "
        "uninterrupted run. A finished file is reused, not retrained (--force retrains).",
        epilog="Example: mqbench train --model mobilenet_v1_cifar --dataset cifar10 --epochs 30 --build width_mult=0.5")
    p.add_argument("--model", required=True, metavar="M", help="model to train (see `mqbench list models`)")
    p.add_argument("--dataset", required=True, metavar="D", help="dataset whose train split it trains on and whose "
                   "test split it evaluates on after each epoch")
    p.add_argument("--epochs", type=int_in(1, 10_000), required=True, metavar="N", help="epochs of the schedule")
    p.add_argument("--batch-size", type=BATCH, default=128, metavar="N", help="batch size (default 128)")
    p.add_argument("--lr", type=float_in(0.0, 100.0, lo_open=True), default=0.1,
                   help="peak learning rate of the one-cycle schedule (default 0.1)")
    p.add_argument("--momentum", type=float_in(0.0, 0.999), default=0.9, help="SGD Nesterov momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float_in(0.0, 1.0), default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0,
                   help="seed of the initial weights, data order and augmentation")
    p.add_argument("--crop-padding", type=int_in(0, 1024), default=4, metavar="N",
                   help="random crop after zero-padding each side by N pixels (default 4; 0 turns it off)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--label-smoothing", type=float_in(0.0, 0.999), default=0.0, metavar="E",
                   help="label smoothing (default 0)")
    p.add_argument("--depthwise-weight-decay", type=float_in(0.0, 1.0), metavar="D",
                   help="weight decay of depthwise convolution weights (default: --weight-decay; 0 trains them as "
                        "TensorFlow's MobileNetV1 did, without)")
    p.add_argument("--contiguous", action="store_true", help="train in the contiguous (NCHW) memory format; by "
                   "default channels-last, 1.4-1.7x faster for MobileNets on x86 CPUs")
    p.add_argument("--build", action="append", metavar="KEY=VALUE",
                   help="argument of the model's constructor, e.g. width_mult=0.5 (repeatable)")
    p.add_argument("--train-limit", type=IMAGES, metavar="N", help="train on the first N train images only")
    p.add_argument("--test-limit", type=IMAGES, metavar="N", help="evaluate on the first N test images only")
    p.add_argument("--time-budget", type=SECONDS, metavar="S",
                   help="stop at the end of the epoch after which another would pass S seconds of training in all "
                        "(resumed runs included); the schedule is not shortened, the sidecar says it stopped early")
    p.add_argument("--out", metavar="DIR", help="where to write the weights (default RESULTS/models)")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.add_argument("--data-dir", metavar="DIR", help=f"real data folder (default ${DATA_ENV}, else ../shared/data)")
    p.add_argument("--force", action="store_true", help="retrain even when the weights file exists (drops a checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("leaderboard", help="render the leaderboard from stored records",
                       description="Render the leaderboard from the records in the results directory only. "
                       "--publish writes the published leaderboard into the results directory: LEADERBOARD.md, "
                       "leaderboard.csv, leaderboard.json, plots/*.png and index.html (one self-contained page with "
                       "sortable, filterable tables); the same records always give the same files.")
    p.add_argument("--publish", action="store_true", help="write LEADERBOARD.md, leaderboard.csv/.json, plots/ and "
                   "index.html into the results directory (plots/ is rebuilt)")
    p.add_argument("--format", choices=("rich", "md", "csv", "json"), default="rich", help="output format")
    p.add_argument("--plots", metavar="DIR", help="also render the error-accumulation plots of analysed records into "
                   "DIR (linked from the Markdown output)")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "store", help="check a results directory (and clean its leftovers), or print the record schema",
        description="`store check` reads every file of the results directory without changing it and reports: files "
        "in records/ that are not readable records (with the first problem found), attachments that are missing or "
        "do not match their record's sha256, and leftovers: temp files of writes that never finished (.*.partial), "
        "build folders of an interrupted publish (.publish-*), attachments no record refers to. With --repair the "
        "leftovers are deleted; records are never deleted or changed. Exit 0: nothing wrong; 1: problems or "
        "leftovers remain. `store schema` prints the JSON Schema every record is validated against.",
        epilog="Example: mqbench store check --results results --repair")
    p.add_argument("action", choices=("check", "schema"), help="check the results directory, or print the schema")
    p.add_argument("--repair", action="store_true", help="delete the leftovers found (never a record)")
    p.add_argument("--older-than", type=float_in(0.0, 1e6), default=10.0, metavar="MIN",
                   help="leftovers younger than MIN minutes may belong to a run in progress and are left alone "
                   "(default 10)")
    p.add_argument("--results", metavar="DIR", help=f"results directory (default ${RESULTS_ENV} or ./{DEFAULT_RESULTS})")
    p.set_defaults(func=cmd_store)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        allocator.tune()
        plugins = get_plugins()
        return int(args.func(args, plugins))
    except UsageError as exc:
        err.print(f"mqbench: error: {exc}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the cells started (loading plugins, checking data): nothing stored
        err.print("interrupted before any cell ran: nothing was stored", markup=False, highlight=False)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
