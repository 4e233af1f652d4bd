"""`colorbench search`: an Optuna study over the grid's components and options; every trial is an MLflow run."""

from __future__ import annotations

import multiprocessing
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
import torch
from mlflow.tracking import MlflowClient
from rich.progress import Progress, TaskID
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError

from colorbench import tracking
from colorbench.errors import ConfigError, DivergedError, TrialPruned
from colorbench.resolve import cell_labels
from colorbench.runner import PreparedData, gray_baseline, log_cell_summary, prepare_data, report_skipped, train_fold
from colorbench.search_engines import PRUNERS, SAMPLERS
from colorbench.search_space import Search
from colorbench.splitters import SPLITTERS, Fold
from colorbench.train import resolve_device
from colorbench.ui import console, progress, quiet_libraries

TAG_STUDY = "colorbench.study"
TAG_TRIAL = "colorbench.trial"
TAG_STATE = "colorbench.trial_state"  # COMPLETE, PRUNED or FAIL, as in Optuna
TAG_STORAGE = "colorbench.optuna_storage"  # password hidden
TAG_SAMPLED = "colorbench.sampled"  # the trial's sampled values, `key=value` separated by spaces
USER_ATTR_RUN = "mlflow_run_id"
JOURNAL_PREFIX = "journal:"
STUDY_FIGURES = {
    "optuna_history.png": "plot_optimization_history",
    "optuna_importances.png": "plot_param_importances",
    "optuna_parallel.png": "plot_parallel_coordinate",
    "optuna_intermediate.png": "plot_intermediate_values",
}


def default_storage(tracking_uri: str, n_workers: int) -> str:
    """Beside the MLflow SQLite file (else in the working directory): `optuna.db`, or a journal file for several workers.

    SQLite under concurrent writers fails with "database is locked"; Optuna's journal file takes file locks instead.
    An existing journal file keeps being used, so a study started with several workers resumes with one.
    """
    db = tracking.sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path(".")
    journal = folder / "optuna-journal.log"
    if n_workers > 1 or journal.exists():
        return f"{JOURNAL_PREFIX}{journal}"
    return f"sqlite:///{folder / 'optuna.db'}"


def shown(storage: str) -> str:
    """The storage URL with any password hidden (safe to print and to tag runs with)."""
    if storage.startswith(JOURNAL_PREFIX):
        return storage
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage


def rdb_storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """An RDB storage with trial heartbeats (a process killed mid-trial stops beating; the next start fails that trial).

    Machines starting together on an empty database race to create Optuna's tables; the loser retries and finds them.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180)

    for attempt in range(attempts - 1):
        try:
            return connect()
        except (IntegrityError, ProgrammingError):
            time.sleep(1 + attempt)
    return connect()


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """`journal:PATH` (or a `.log` path) -> a journal file; `dialect://...` -> an RDB storage with trial heartbeats."""
    try:
        if storage.startswith(JOURNAL_PREFIX) or storage.endswith(".log"):
            path = Path(storage.removeprefix(JOURNAL_PREFIX)).expanduser()
            if not path.parent.is_dir():
                raise ConfigError(f"folder {path.parent} of the Optuna journal file does not exist; create it or pass another --storage")
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if "://" not in storage:
            raise ConfigError(f"--storage {storage!r} is neither a database URL (sqlite:///optuna.db, postgresql://...) nor journal:FILE")
        return rdb_storage(storage)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - missing driver, unreachable server, bad URL: one line before any training
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot open Optuna storage {shown(storage)}: {first}") from None


def open_study(search: Search, storage: str, study_name: str) -> optuna.Study:
    """Create the study or load it to continue; a study optimising the other way is an error."""
    direction = search.config.objective.direction
    study = optuna.create_study(storage=open_storage(storage), study_name=study_name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {study_name!r} in {shown(storage)} was created to {study.direction.name.lower()}; pass another --study")
    recorded = study.user_attrs.get("objective_metric")
    if recorded is None:
        study.set_user_attr("objective_metric", search.config.objective.metric)
    elif recorded != search.config.objective.metric:
        raise ConfigError(f"study {study_name!r} optimises {recorded}, not {search.config.objective.metric}; pass another --study")
    return study


class FoldAveragedReporter:
    """Reports a trial's running objective after every epoch, comparable across trials and folds.

    Step = fold index * epochs + epoch. Value = mean over the finished folds' values and the current fold's value so far,
    where a fold's value is the metric at its best checkpoint (lowest validation loss) so far. At the last step it equals
    the trial's objective, so the pruner compares like with like although every fold restarts at epoch 1.
    """

    def __init__(self, trial: optuna.Trial, metric: str, epochs: int, run_id: str) -> None:
        self.trial, self.metric, self.epochs, self.run_id = trial, metric, epochs, run_id
        self.finished: list[float] = []
        self.best_loss, self.current = float("inf"), float("nan")

    def __call__(self, record: dict[str, float]) -> None:
        if record["val_loss"] < self.best_loss:
            self.best_loss, self.current = record["val_loss"], record[self.metric]
        step = len(self.finished) * self.epochs + int(record["epoch"])
        running = statistics.fmean([*self.finished, self.current])
        self.trial.report(running, step)
        MlflowClient().log_metric(self.run_id, "objective_running", running, step=step)
        if self.trial.should_prune():
            raise TrialPruned(f"pruned at fold {len(self.finished)} epoch {int(record['epoch'])}: running {self.metric} {running:.4f}")

    def end_fold(self) -> None:
        self.finished.append(self.current)
        self.best_loss, self.current = float("inf"), float("nan")

    @property
    def value(self) -> float:
        """The trial's objective: the mean over folds."""
        return statistics.fmean(self.finished)


@dataclass
class TrialContext:
    """What every trial of one worker shares: the search, the data, the fixed folds, the device, the display."""

    search: Search
    study_name: str
    storage: str
    data: PreparedData
    folds: list[Fold]
    gray: dict[str, float]
    device: torch.device
    bar: Progress
    tasks: dict[str, TaskID] = field(default_factory=dict)


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """Train one sampled configuration on every fold inside one MLflow run (one child run per fold); return its objective."""
    values = ctx.search.sample(trial)
    cell = ctx.search.cell(values)
    objective = ctx.search.config.objective.metric
    label = " | ".join(cell_labels(cell))
    tags = {
        **tracking.cell_tags(cell, ctx.data.fingerprint),
        tracking.TAG_ROLE: "trial",
        TAG_STUDY: ctx.study_name,
        TAG_TRIAL: str(trial.number),
        TAG_STORAGE: shown(ctx.storage),
        TAG_SAMPLED: format_values(values),
    }
    params = cell.flat_params()
    state = "FAIL"
    with tracking.run(f"trial {trial.number} | {label}", tags, params) as run_id:
        trial.set_user_attr(USER_ATTR_RUN, run_id)
        try:
            reporter = FoldAveragedReporter(trial, objective, cell.train.epochs, run_id)
            ctx.bar.reset(ctx.tasks["fold"], total=len(ctx.folds), status=label)
            results = []
            for fold in ctx.folds:
                fold_tags = {**tags, tracking.TAG_ROLE: "fold", tracking.TAG_FOLD: str(fold.index)}
                with tracking.run(f"trial {trial.number} | fold {fold.index}", fold_tags, params, nested=True):
                    results.append(train_fold(cell, fold, ctx.data, ctx.device, ctx.bar, ctx.tasks["epoch"], reporter))
                reporter.end_fold()
                ctx.bar.advance(ctx.tasks["fold"])
            log_cell_summary(run_id, results, ctx.gray, {"objective": reporter.value})
            state = "COMPLETE"
        except TrialPruned:
            state = "PRUNED"
            raise
        finally:
            mlflow.set_tag(TAG_STATE, state)
    return reporter.value


def trial_objective(ctx: TrialContext) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls: pruned trials become `optuna.TrialPruned` (their MLflow runs are already KILLED)."""

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial, ctx)
        except TrialPruned as err:
            raise optuna.TrialPruned(str(err)) from None

    return objective


def format_values(values: dict[str, object]) -> str:
    """Sampled values as `key=value` separated by spaces, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per ended trial: state, value, sampled values, best so far."""
    metric = study.user_attrs.get("objective_metric", "objective")
    value = f" {metric} {trial.value:.4f}" if trial.value is not None else ""
    try:
        best = f" (best: trial {study.best_trial.number}, {study.best_value:.4f})"
    except ValueError:
        best = ""
    colour = {"COMPLETE": "green", "PRUNED": "yellow"}.get(trial.state.name, "red")
    console.print(f"  trial {trial.number} [{colour}]{trial.state.name}[/]{value}  {format_values(trial.params)}{best}", highlight=False)


def close_orphan_runs(experiment_id: str, study: optuna.Study) -> int:
    """MLflow runs of this study left RUNNING by a killed process whose Optuna trial has ended (e.g. failed by heartbeat)."""
    ended = {str(t.number) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    client = MlflowClient()
    query = f"tags.`{TAG_STUDY}` = '{study.study_name}' and attributes.status = 'RUNNING'"
    orphans = [r for r in client.search_runs([experiment_id], filter_string=query, max_results=10000) if r.data.tags.get(TAG_TRIAL) in ended]
    for run in orphans:
        client.set_tag(run.info.run_id, tracking.TAG_FAILURE, "interrupted: the process ended before the trial finished")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(orphans)


def optimize(
    search: Search,
    storage: str,
    study_name: str,
    n_trials: int | None,
    timeout: float | None,
    tracking_uri: str,
    worker: int = 0,
    interactive: bool = True,
) -> None:
    """One worker: load the data and the study, then run `n_trials` trials (or until `timeout` seconds)."""
    cfg = search.config
    experiment_id = tracking.open_experiment(tracking_uri, cfg.experiment)
    study = open_study(search, storage, study_name)
    seed = int(np.random.SeedSequence([cfg.seed, worker, len(study.trials)]).generate_state(1)[0])  # new samples on resume
    study.sampler = SAMPLERS.build(cfg.sampler.name, cfg.sampler.options)(seed, search.params)
    study.pruner = PRUNERS.build(cfg.pruner.name, cfg.pruner.options)
    closed = close_orphan_runs(experiment_id, study)
    if closed and interactive:
        console.print(f"Closed {closed} MLflow run(s) of interrupted trials as KILLED.")
    data = prepare_data(cfg)
    folds = SPLITTERS.build(cfg.splitter.name, cfg.splitter.options).split(data.pool, cfg.seed)
    device = resolve_device(cfg.train.device)
    if interactive:
        report_skipped(data.skipped)
        console.print(f"Data: {len(data.pool)} training-pool images, {len(data.test)} test images; {len(folds)} fold(s); device {device}.")
    with progress(interactive) as bar:
        ctx = TrialContext(search, study_name, storage, data, folds, gray_baseline(data.test), device, bar)
        ctx.tasks = {
            "trials": bar.add_task("trials", total=n_trials, status=""),
            "fold": bar.add_task("folds", total=len(folds), status=""),
            "epoch": bar.add_task("epochs", total=cfg.train.epochs, status=""),
        }

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.advance(ctx.tasks["trials"])
            trial_line(study, trial)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(trial_objective(ctx), n_trials=n_trials, timeout=timeout, catch=(DivergedError,), callbacks=[after_trial])


def worker_main(search: Search, storage: str, study_name: str, n_trials: int, timeout: float | None, tracking_uri: str, worker: int) -> None:
    """Entry point of a worker process (spawned, so CUDA and MLflow start fresh)."""
    quiet_libraries()
    optimize(search, storage, study_name, n_trials, timeout, tracking_uri, worker, interactive=False)


def run_workers(search: Search, storage: str, study_name: str, n_trials: int, timeout: float | None, tracking_uri: str, n_workers: int) -> None:
    """`n_workers` processes on one study, sharing `n_trials` between them exactly (no trial lost or run twice)."""
    shares = [n_trials // n_workers + (w < n_trials % n_workers) for w in range(n_workers)]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=worker_main, args=(search, storage, study_name, share, timeout, tracking_uri, w), name=f"colorbench-worker-{w}")
        for w, share in enumerate(shares)
        if share
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    failed = [p.name for p in workers if p.exitcode != 0]
    if failed:
        raise ConfigError(f"worker process(es) {', '.join(failed)} failed (see their messages above); run the same command again to continue the study")


@dataclass
class SearchOutcome:
    """A study after this command: trial counts, the best trial and its MLflow run, the figures written."""

    study_name: str
    storage: str
    metric: str
    counts: dict[str, int]
    best: optuna.trial.FrozenTrial | None
    best_run_id: str | None
    figures: list[Path]
    skipped_figures: dict[str, str]


def save_study_figures(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's own plots (history, importances, parallel coordinates, intermediate values) as PNGs; why any was skipped."""
    import optuna.visualization.matplotlib as plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filename, function in STUDY_FIGURES.items():
            try:
                axes = getattr(plots, function)(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                skipped[filename] = str(err).splitlines()[0] if str(err) else type(err).__name__
                continue
            figure = np.ravel(axes)[0].figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 9), max(figure.get_size_inches()[1], 5))
            figure.tight_layout()
            figure.savefig(out_dir / filename, dpi=110)
            plt.close(figure)
            written.append(out_dir / filename)
    return written, skipped


def run_search(
    search: Search,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_workers: int = 1,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
) -> SearchOutcome:
    """Add `n_trials` trials (default: the file's `n_trials`) to the study, in `n_workers` processes; save Optuna's figures."""
    if n_workers < 1:
        raise ConfigError(f"--n-workers must be at least 1, got {n_workers}")
    cfg = search.config
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.open_experiment(uri, cfg.experiment)  # a bad store fails here, before any worker starts
    storage = storage or default_storage(uri, n_workers)
    study_name = study_name or cfg.experiment
    open_study(search, storage, study_name)
    n_trials = n_trials or cfg.n_trials
    timeout = timeout or cfg.timeout
    console.print(f"Study {study_name!r} in {shown(storage)}: adding {n_trials} trial(s) with {n_workers} worker(s).")
    if cfg.objective.metric == "val_loss" and any(p.key == "loss" for p in search.params):
        console.print(
            "[yellow]warning:[/] the space varies the loss but the objective is val_loss, whose scale differs between losses; "
            "consider objective: {metric: val_auc_rebalanced, direction: maximize}"
        )
    if n_workers == 1:
        optimize(search, storage, study_name, n_trials, timeout, uri)
    else:
        run_workers(search, storage, study_name, n_trials, timeout, uri, n_workers)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    counts = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in optuna.trial.TrialState}
    best = study.best_trial if counts["COMPLETE"] else None
    figures, skipped = save_study_figures(study, Path(out_dir or Path("results") / cfg.experiment))
    return SearchOutcome(
        study_name, shown(storage), cfg.objective.metric, counts, best, best.user_attrs.get(USER_ATTR_RUN) if best else None, figures, skipped
    )
