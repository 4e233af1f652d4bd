"""Command line: parses arguments, calls the package's functions, prints. No logic of its own."""

from __future__ import annotations

import argparse
import signal
import sys

from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from colorbench.errors import ColorbenchError
from colorbench.lifecycle.executors import EXECUTORS, option_help
from colorbench.plugins import load_plugins
from colorbench.ui import console, quiet_libraries, stdout


def cmd_list(args: argparse.Namespace) -> int:
    from colorbench.components import REGISTRIES
    from colorbench.metrics import METRICS
    from colorbench.search.engines import PRUNERS, SAMPLERS

    listed = {
        **REGISTRIES,
        "metrics (report --metric; search objective val_<name>)": METRICS,
        "samplers (search)": SAMPLERS,
        "pruners (search)": PRUNERS,
        "executors (run and search --executor)": EXECUTORS,
    }
    for title, registry in listed.items():
        table = Table(title=title, title_justify="left", show_edge=False)
        for column in registry.columns:
            table.add_column(column)
        for row in registry.describe():
            table.add_row(*row)
        stdout.print(table, "")
    return 0


def fmt(metrics: dict[str, float], key: str) -> str:
    mean, std = metrics.get(f"test_{key}_mean"), metrics.get(f"test_{key}_std")
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std else f"{mean:.3f}"


def executor_flags() -> dict[str, str]:
    """Every option of every registered executor -> its flag's help, naming the executors that take it (`name: help`)."""
    flags: dict[str, list[str]] = {}
    for name in EXECUTORS:
        for key, text in option_help(name).items():
            flags.setdefault(key, []).append(f"{name}: {text}")
    return {key: "; ".join(texts) for key, texts in flags.items()}


def add_executor_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """`--executor` and every executor's option flags (`colorbench run` and `colorbench search` share them)."""
    parser.add_argument("--executor", default="local", choices=list(EXECUTORS), help=f"where {what} run (default: local)")
    for key, text in executor_flags().items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar=key.upper(), help=text)


def executor_options(args: argparse.Namespace) -> dict[str, object]:
    """The executor flags given on the command line, as text (the executor checks and converts them, and rejects those it does not
    take)."""
    return {key: getattr(args, key) for key in executor_flags() if getattr(args, key, None) is not None}


def print_config(config: BaseModel) -> None:
    """The resolved config (file + overrides, defaults filled in) as YAML."""
    import yaml

    stdout.print("# resolved config (file + overrides, defaults filled in)", highlight=False)
    stdout.print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), highlight=False, markup=False)


def cmd_run(args: argparse.Namespace) -> int:
    from colorbench import runner, tracking
    from colorbench.metrics import headline_metrics
    from colorbench.report import components_text
    from colorbench.resolve import cell_labels, load_experiment

    exp = load_experiment(args.grid, args.overrides)
    if args.dry_run:
        print_config(exp)
        planned = runner.plan(exp)
        first = [(cell, n) for cell, n in planned if cell.replicate == 0]
        for cell, n in first:
            backbone, loss, splitter = cell_labels(cell)
            print(f"{cell.id}  backbone={backbone}  loss={loss}  splitter={splitter}  folds={n}")
        trainings = f"{len(first)} cells, {sum(n for _, n in first)} fold trainings of {exp.train.epochs} epochs each"
        if exp.replicates > 1:
            seeds = f"data seeds {exp.seed}..{exp.seed + exp.replicates - 1}"
            print(f"per replicate: {trainings} (listed: replicate 0); {exp.replicates} replicates ({seeds}): ", end="")
            trainings = f"{len(planned)} cells, {sum(n for _, n in planned)} fold trainings in total"
        print(f"{trainings} (dry run: nothing trained)")
        return 0
    outcomes, gray = runner.run_grid(exp, args.tracking_uri, args.executor, executor_options(args), args.overrides)
    shown = headline_metrics()
    table = Table(title=f"{exp.experiment}: test metrics, mean ± std over folds", show_edge=False)
    replicate = ["replicate"] if exp.replicates > 1 else []  # a column only for a grid with replicates
    for column in ("cell", "backbone", "loss", "splitter", *replicate, *shown, f"{shown[0]} SDs / SE"):
        table.add_column(column)
    for o in outcomes:
        status = " (failed)" if o.failure else " (trained by another process)" if o.elsewhere else " (skipped: done)" if o.skipped else ""
        labels = [*cell_labels(o.cell), *([str(o.cell.replicate)] if replicate else [])]
        table.add_row(o.cell.id + status, *labels, *(fmt(o.metrics, m) for m in shown), components_text(o.metrics, f"test_{shown[0]}"))
    table.add_row("gray baseline", "-", "ab = 0", "-", *(["0"] if replicate else []), *(fmt({f"test_{k}_mean": v for k, v in gray.items()}, m) for m in shown), "-")
    stdout.print(table)
    for o in outcomes:
        if o.failure:
            console.print(f"[red]failed[/] {o.cell.id}: {o.failure}")
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    store = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    console.print(f"Colorize photos with a cell's model: colorbench colorize CELL PHOTO -o out/{store} (CELL: an id of the table)", highlight=False, soft_wrap=True)
    console.print(f"Compare runs in the browser: {tracking.ui_hint(uri, exp.experiment)}", highlight=False, soft_wrap=True)
    return 1 if any(o.failure for o in outcomes) else 0


def cmd_search(args: argparse.Namespace) -> int:
    from colorbench import tracking
    from colorbench.search.optimize import run_search
    from colorbench.search.space import load_search

    search = load_search(args.file, args.overrides)
    if args.dry_run:
        print_config(search.config)
        return 0
    executor, options = args.executor, executor_options(args)
    if args.n_workers is not None:  # the flag from before the one pool: W worker processes
        console.print(f"[yellow]warning:[/] --n-workers is deprecated; use --executor process --workers {args.n_workers}", highlight=False)
        executor, options = ("local", {}) if args.n_workers == 1 else ("process", {"workers": args.n_workers})
    outcome = run_search(search, args.n_trials, args.timeout, args.storage, args.study, executor, options, args.tracking_uri, args.out)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in outcome.counts.items() if n)
    stdout.print(f"Study {outcome.study_name!r} ({outcome.storage}): {counts or 'no trials'}.")
    if outcome.front is not None and len(outcome.front):
        front = outcome.front[outcome.front["pareto"]]
        table = Table(title=f"Pareto front: {len(front)} of {len(outcome.front)} complete trials (tag colorbench.pareto=true)", show_edge=False)
        for column in ("trial", "MLflow run", *outcome.front.columns[2:-1]):
            table.add_column(column)
        for row in front.itertuples(index=False):
            table.add_row(str(row[0]), str(row[1]), *(f"{v:.4f}" for v in row[2:-1]))
        stdout.print(table)
    elif outcome.best is None:
        console.print("[yellow]no trial completed yet[/]: run the same command again to continue the study")
        return 1
    else:
        stdout.print(f"Best trial {outcome.best.number}: {outcome.metric} = {outcome.best.value:.4f}; MLflow run {outcome.best_run_id}")
        for key, value in outcome.best.params.items():
            stdout.print(f"  {key} = {value}")
    for figure in outcome.figures:
        console.print(f"Wrote {figure}")
    for figure, reason in outcome.skipped_figures.items():
        console.print(f"[dim]skipped {figure}: {reason}[/]")
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    model = outcome.best_run_id or "RUN_ID"
    console.print(
        f"Use a trained model: colorbench colorize {model} PHOTO -o out/; compare trials: {tracking.ui_hint(uri, search.config.experiment)}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from colorbench.report import build_report, caption, parse_ropes, terminal_rows

    if len(args.experiment) > 1:
        return report_across(args)
    report = build_report(
        args.experiment[0], args.out, args.metric, args.baseline, args.tracking_uri, args.storage, args.correction, parse_ropes(args.rope), args.all_pairs,
        args.top, args.compare,
    )
    header, rows = terminal_rows(report)
    title = f"{report.experiment}: ranked on test {report.metric}, mean ± std over folds; baseline: {report.baseline_how}"
    table = Table(title=title, caption=caption(report.correction), show_edge=False)
    for column in header:
        table.add_column(column, no_wrap=column == "cell")  # a cell id (and its baseline mark) is never cut, whatever the width
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    for label, reason in report.failed:
        console.print(f"[red]failed[/] {label}: {reason}")
    for notice in report.notices:
        console.print(f"[yellow]note[/] {notice}", highlight=False)
    console.print(f"Wrote the table, figures, summary.md and report.html to {report.out_dir}/", highlight=False)
    if report.published:
        console.print(f"Logged on the experiment's report run: {report.published}", highlight=False, soft_wrap=True)
    return 0


def report_across(args: argparse.Namespace) -> int:
    from colorbench.errors import ConfigError
    from colorbench.report import parse_ropes
    from colorbench.report.multi import build_multi_report, terminal_rows

    if args.baseline or args.all_pairs:
        raise ConfigError(
            "--baseline and --all-pairs apply to one experiment; a report across experiments tests against the first experiment's baseline"
        )
    if args.top is not None or args.compare:
        raise ConfigError("--top and --compare apply to one experiment's figures and photos; a report across experiments has a table only")
    report = build_multi_report(args.experiment, args.out, args.metric, args.tracking_uri, args.correction, parse_ropes(args.rope))
    header, rows = terminal_rows(report)
    table = Table(title=f"{' + '.join(report.experiments)}: ranked on test {report.metric}", show_edge=False)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    console.print(f"Wrote table.csv, summary.md and report.html to {report.out_dir}/", highlight=False)
    return 0


def cmd_colorize(args: argparse.Namespace) -> int:
    import mlflow

    from colorbench import tracking
    from colorbench.colorize import colorize_files, load

    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(args.tracking_uri))
    colorizer = load(args.model, args.device, args.size)
    if args.temperature is not None:
        colorizer.set_temperature(args.temperature)
    written, failed = colorize_files(colorizer, args.inputs, args.out, compare=args.compare)
    for name, reason in failed:
        console.print(f"[red]skipped[/] {name}: {reason}", highlight=False)
    console.print(f"Wrote {len(written)} colorized image(s) to {str(args.out).rstrip('/')}/" + (f"; {len(failed)} file(s) failed" if failed else ""))
    return 1 if failed or not written else 0


def cmd_cache(args: argparse.Namespace) -> int:
    import datetime

    from colorbench import cache
    from colorbench.lifecycle import states

    if args.action == "clear":
        removed, freed = cache.clear()
        console.print(f"Removed {removed} cache entr{'y' if removed == 1 else 'ies'} from {cache.cache_dir()}, freed {cache.human_bytes(freed)}")
        removed, freed = states.clear_states()
        console.print(f"Removed {removed} saved fold training state(s) (those folds train from epoch 1), freed {cache.human_bytes(freed)}")
        return 0
    entries = cache.entries()
    stdout.print(f"Decode cache: {cache.cache_dir()} (set ${cache.ENV_VAR} to move it)", highlight=False)
    table = Table(show_edge=False)
    for column in ("key", "source", "images", "size", "on disk", "created", "root"):
        table.add_column(column)
    for e in entries:
        created = datetime.datetime.fromtimestamp(e.created).strftime("%Y-%m-%d %H:%M") if e.created else "-"
        size = f"{e.image_size}x{e.image_size}" if e.image_size else "-"
        table.add_row(e.key, e.source, str(e.n_images), size, cache.human_bytes(e.bytes), created, e.root)
    if entries:
        stdout.print(table)
    stdout.print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {cache.human_bytes(sum(e.bytes for e in entries))} in all")
    saved = states.states()
    for s in saved:
        when = datetime.datetime.fromtimestamp(s.modified).strftime("%Y-%m-%d %H:%M")
        stdout.print(f"  training state: cell {s.cell_id} run {s.run_id} {s.fold}, {cache.human_bytes(s.bytes)}, saved {when}", highlight=False)
    stdout.print(f"{len(saved)} saved fold training state(s) of interrupted runs (resumed by the next run; `cache clear` removes them)")
    return 0


OVERRIDE_HELP = "change the file's settings: dotted key = YAML value, e.g. train.epochs=5 data.image_size=32 'grid.loss=[mse,ce-rebalanced]'"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE to register extra components")
    parser = argparse.ArgumentParser(prog="colorbench", description="Compare how image-colorization models should be trained.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="train every combination of a grid file and log it to MLflow")
    run.add_argument("grid", help="grid YAML file, e.g. configs/grid.yaml")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config, the cells and fold count; train nothing")
    add_executor_flags(run, "fold trainings")
    run.set_defaults(func=cmd_run)
    sea = sub.add_parser("search", parents=[common], help="run (or continue) an Optuna study over a search file's space")
    sea.add_argument("file", help="search YAML file, e.g. configs/search.yaml")
    sea.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    sea.add_argument("--dry-run", action="store_true", help="print the resolved search config, run nothing")
    sea.add_argument("--n-trials", type=int, metavar="N", help="trials to add to the study (default: the file's n_trials)")
    sea.add_argument("--timeout", type=float, metavar="S", help="stop starting new trials after S seconds")
    sea.add_argument("--storage", metavar="URL", help="Optuna storage: sqlite:///optuna.db, postgresql://..., or journal:FILE (default: beside the MLflow store)")
    sea.add_argument("--study", metavar="NAME", help="study name (default: the file's experiment name)")
    sea.add_argument("--n-workers", type=int, metavar="W", help="deprecated: --executor process --workers W")
    sea.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    sea.add_argument("--out", metavar="DIR", help="folder for Optuna's figures (default: results/EXPERIMENT)")
    add_executor_flags(sea, "trials")
    sea.set_defaults(func=cmd_search)
    rep = sub.add_parser("report", parents=[common], help="rank an experiment's cells, test the differences, write tables and plots")
    rep.add_argument(
        "--experiment", required=True, action="append", help="MLflow experiment name (the grid's `experiment`); repeat it for one table over several"
    )
    rep.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    rep.add_argument("--out", help="output folder (default: results/EXPERIMENT)")
    rep.add_argument("--metric", default="psnr", help="test metric to rank and test on (default: psnr)")
    rep.add_argument(
        "--baseline", help="cell id or unique prefix to test against (default: the grid file's report.baseline, else its first cell)"
    )
    rep.add_argument(
        "--rope", action="append", default=[], metavar="METRIC=VALUE",
        help="region of practical equivalence of a metric, in its units (default: the metric table's, e.g. psnr=0.1)",
    )  # fmt: skip
    rep.add_argument("--all-pairs", action="store_true", help="also compare every pair of cells: pairs.csv, pairs.png")
    rep.add_argument("--storage", metavar="URL", help="a search's Optuna storage, for its figures (default: as recorded on its trial runs)")
    rep.add_argument("--correction", choices=("holm", "bh", "none"), default="holm", help="p-value adjustment over the report (default: holm)")
    rep.add_argument(
        "--top", type=int, metavar="K", help="draw only the top K cells (and the baseline) in cd.png, bar.png and folds.png (default: 10 when there are more than 15)"
    )
    rep.add_argument("--compare", nargs=2, metavar=("A", "B"), help="the two cells (id prefixes) of report.html's photo comparison (default: the top cell and the baseline)")
    rep.set_defaults(func=cmd_report)
    col = sub.add_parser("colorize", parents=[common], help="colorize photos with a trained model")
    col.add_argument("model", metavar="MODEL", help="cell id (its newest finished cell run), MLflow run id (a cell run uses its deployed child), runs:/ or models:/ URI, or checkpoint.pt file")
    col.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders (searched recursively)")
    col.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder: one PNG per input, same relative name")
    col.add_argument("--size", type=int, metavar="N", help="square working size the model sees (default: its training image size)")
    col.add_argument("--temperature", type=float, metavar="T", help="annealed-mean temperature of cross-entropy models (lower: more saturated)")
    col.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when present), cpu or cuda (default: auto)")
    col.add_argument("--compare", action="store_true", help="also write NAME_compare.png: gray | colorized | original")
    col.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    col.set_defaults(func=cmd_colorize)
    cac = sub.add_parser("cache", parents=[common], help="list (info) or delete (clear) the decode-once image cache")
    cac.add_argument("action", choices=["info", "clear"], help="info: location and entries; clear: delete every entry")
    cac.set_defaults(func=cmd_cache)
    lst = sub.add_parser("list", parents=[common], help="every registered backbone, loss, splitter and data source with its options")
    lst.set_defaults(func=cmd_list)
    return parser


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (Slurm's time limit, `kill`, a container stop) ends the process like Ctrl-C: open runs close as KILLED."""
    raise KeyboardInterrupt


def plugin_modules(argv: list[str] | None) -> list[str]:
    """The `--plugin` modules of a command line, read before the full parser exists (plugins may add executors and their flags)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    return early.parse_known_args(argv)[0].plugin


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        load_plugins(plugin_modules(argv))
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and not (hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*getattr(args, "overrides", []), *extra]  # overrides may also follow options
        quiet_libraries()
        return args.func(args)
    except ColorbenchError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted:[/] the run in progress was closed as KILLED; run the same command again to resume with the unfinished cells",
            soft_wrap=True,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
