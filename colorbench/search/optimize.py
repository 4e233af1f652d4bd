"""`colorbench search`: an Optuna study over the grid's components and options; every trial is an MLflow run."""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow.entities import Run

from colorbench import tracking
from colorbench.errors import CellFailed, ColorbenchError, ConfigError, TrialPruned
from colorbench.lifecycle.cell import CellRun, abort_all, resumable
from colorbench.lifecycle.fold import Workbench, run_here
from colorbench.lifecycle.prepare import PreparedData, gray_baseline, prepare_data, report_skipped
from colorbench.plugins import load_plugins, loaded_plugins
from colorbench.resolve import cell_labels
from colorbench.search.engines import PRUNERS, SAMPLERS
from colorbench.search.figures import save_study_figures
from colorbench.search.pareto import OBJECTIVES_ATTR, front_table, objective_names, tag_front
from colorbench.search.space import Search
from colorbench.search.storage import USER_ATTR_RESUMES, USER_ATTR_RUN, default_storage, open_storage, shown
from colorbench.splitters import SPLITTERS, Fold
from colorbench.tracking import TAG_SAMPLED, TAG_STORAGE, TAG_STUDY, TAG_TRIAL
from colorbench.train import resolve_device
from colorbench.ui import console, progress, quiet_libraries


def open_study(search: Search, storage: str, study_name: str) -> optuna.Study:
    """Create the study (one direction per objective) or load it to continue; a study optimising other metrics or directions is an
    error."""
    goals = search.config.goals
    directions = [g.direction for g in goals]
    study = optuna.create_study(storage=open_storage(storage), study_name=study_name, directions=directions, load_if_exists=True)
    made = [d.name.lower() for d in study.directions]
    if made != directions:
        raise ConfigError(f"study {study_name!r} in {shown(storage)} was created to {' and '.join(made)}; pass another --study")
    wanted = goals[0].metric if len(goals) == 1 else [g.metric for g in goals]
    recorded = study.user_attrs.get(OBJECTIVES_ATTR)
    if recorded is None:
        study.set_user_attr(OBJECTIVES_ATTR, wanted)
    elif recorded != wanted:
        raise ConfigError(f"study {study_name!r} optimises {recorded}, not {wanted}; pass another --study")
    return study


class FoldAveragedReporter:
    """Tracks a trial's objectives and reports the running one after every epoch, comparable across trials and folds.

    Step = fold index * epochs + epoch. Value = mean over the finished folds' values and the current fold's value so far,
    where a fold's value is the metric at its best checkpoint (lowest validation loss) so far. At the last step it equals
    the trial's objective, so the pruner compares like with like although every fold restarts at epoch 1. With several
    objectives nothing is reported: Optuna does not prune multi-objective studies.
    """

    def __init__(self, trial: optuna.Trial, metrics: list[str], epochs: int, run_id: str) -> None:
        self.trial, self.metrics, self.epochs, self.run_id = trial, metrics, epochs, run_id
        self.finished: list[list[float]] = []
        self.best_loss, self.current = float("inf"), [float("nan")] * len(metrics)

    def __call__(self, record: dict[str, float]) -> None:
        if record["val_loss"] < self.best_loss:
            self.best_loss, self.current = record["val_loss"], [record[m] for m in self.metrics]
        if len(self.metrics) > 1:
            return
        step = len(self.finished) * self.epochs + int(record["epoch"])
        running = statistics.fmean([*(done[0] for done in self.finished), self.current[0]])
        self.trial.report(running, step)
        tracking.log_metric(self.run_id, "objective_running", running, step)
        if self.trial.should_prune():
            raise TrialPruned(f"pruned at fold {len(self.finished)} epoch {int(record['epoch'])}: running {self.metrics[0]} {running:.4f}")

    def end_fold(self) -> None:
        self.finished.append(self.current)
        self.best_loss, self.current = float("inf"), [float("nan")] * len(self.metrics)

    @property
    def values(self) -> list[float]:
        """The trial's objectives: each metric's mean over folds."""
        return [statistics.fmean(column) for column in zip(*self.finished, strict=True)]

    def logged(self) -> dict[str, float]:
        """The objectives as MLflow metrics: `objective`, or `objective_<metric>` for each of several."""
        if len(self.metrics) == 1:
            return {"objective": self.values[0]}
        return {f"objective_{m}": v for m, v in zip(self.metrics, self.values, strict=True)}


@dataclass
class TrialContext:
    """What every trial of one worker shares: the search, its study and stores, the data, the fixed folds, the workbench."""

    search: Search
    study_name: str
    storage: str
    experiment_id: str
    tracking_uri: str
    folds: list[Fold]
    gray: dict[str, float]
    bench: Workbench

    @property
    def data(self) -> PreparedData:
        return self.bench.data


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float | list[float]:
    """One sampled configuration through the cell lifecycle: a trial run (a cell run that is not claimed), one child run per fold
    trained here, then the cell's summary and model; returns its objective (a list for several). A failed fold raises CellFailed (the trial FAILs, the
    study goes on); a pruned one TrialPruned."""
    values = ctx.search.sample(trial)
    cell = ctx.search.cell(values)
    tags = {
        **tracking.cell_tags(cell, ctx.data.fingerprint, ctx.search.overrides),
        tracking.TAG_ROLE: "trial",
        TAG_STUDY: ctx.study_name,
        TAG_TRIAL: str(trial.number),
        TAG_STORAGE: shown(ctx.storage),
        TAG_SAMPLED: format_values(values),
    }
    name = f"trial {trial.number}"
    with tracking.store_guard(ctx.tracking_uri):
        title = f"{name} | {' | '.join(cell_labels(cell))}"
        run_id = continue_run(trial, title) or tracking.create_run(ctx.experiment_id, title, {**tags, **tracking.claim_tags()}, cell.flat_params())
        trial.set_user_attr(USER_ATTR_RUN, run_id)
        goals = ctx.search.config.goals
        held = CellRun(cell, run_id, name, tags, ctx.folds, maximize=goals[0].direction == "maximize")  # deploys by the first objective
        held.held.enter_context(tracking.heartbeat(run_id))  # a killed search's trial run goes stale: the next search continues it
        reporter = FoldAveragedReporter(trial, [g.metric for g in goals], cell.train.epochs, run_id)
        try:
            for task, result in run_here(held.tasks(ctx.experiment_id, ctx.tracking_uri), replace(ctx.bench, after_epoch=reporter)):
                held.record(task, result, reporter.current[0])  # the child's (first) objective value picks the deployed child
                reporter.end_fold()
            held.finish(ctx.gray, ctx.bench, reporter.logged() if held.error is None else None)
        except BaseException as err:
            abort_all([held], err)
            raise
    if isinstance(held.error, TrialPruned):
        raise held.error
    if held.error is not None:
        raise CellFailed(held.failure)
    values = reporter.values
    return values[0] if len(values) == 1 else values


def interrupted(run: Run, now: float, timeout: float) -> bool:
    """Whether a trial run was interrupted: KILLED, or RUNNING with its process gone (`tracking.is_stale`)."""
    return run.info.status == "KILLED" or (run.info.status == "RUNNING" and tracking.is_stale(run, now, timeout))


def continue_run(trial: optuna.Trial, title: str) -> str | None:
    """An interrupted trial's run that `trial` was enqueued to continue (`enqueue_interrupted`), claimed for this process and
    renamed after `trial`; None for a new trial, or when another process took the run first."""
    run_id = trial.user_attrs.get(USER_ATTR_RESUMES)
    if run_id is None:
        return None
    with tracking.store_lock() as locked:
        run = tracking.get_run(run_id)
        if not interrupted(run, time.time(), tracking.stale_after()) or not tracking.take_over(run, locked):
            return None
    tracking.set_tag(run_id, TAG_TRIAL, str(trial.number))
    tracking.set_tag(run_id, "mlflow.runName", title)
    return run_id


def trial_objective(ctx: TrialContext) -> Callable[[optuna.Trial], float | list[float]]:
    """The function Optuna calls: pruned trials become `optuna.TrialPruned` (their MLflow runs are already KILLED)."""

    def objective(trial: optuna.Trial) -> float | list[float]:
        try:
            return run_trial(trial, ctx)
        except TrialPruned as err:
            raise optuna.TrialPruned(str(err)) from None

    return objective


def format_values(values: dict[str, object]) -> str:
    """Sampled values as `key=value` separated by spaces, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per ended trial: state, value(s), sampled values, best so far (one objective)."""
    value = "".join(f" {name} {v:.4f}" for name, v in zip(objective_names(study), trial.values or [], strict=False))
    best = ""
    if len(study.directions) == 1:
        try:
            best = f" (best: trial {study.best_trial.number}, {study.best_value:.4f})"
        except ValueError:
            pass
    colour = {"COMPLETE": "green", "PRUNED": "yellow"}.get(trial.state.name, "red")
    console.print(f"  trial {trial.number} [{colour}]{trial.state.name}[/]{value}  {format_values(trial.params)}{best}", highlight=False)


def close_orphan_runs(experiment_id: str, study: optuna.Study) -> int:
    """MLflow runs of this study left RUNNING by a killed process whose Optuna trial has ended (e.g. failed by heartbeat)."""
    ended = {str(t.number) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    orphans = [r for r in tracking.study_runs(experiment_id, study.study_name, status="RUNNING") if r.data.tags.get(TAG_TRIAL) in ended]
    for run in orphans:
        tracking.close_run(run.info.run_id, "KILLED", "interrupted: the process ended before the trial finished")
    return len(orphans)


def enqueue_interrupted(experiment_id: str, study: optuna.Study) -> int:
    """Enqueue again, with the same sampled values, each interrupted trial (its process gone) whose folds saved training states;
    its Optuna trial is failed if it was left RUNNING. The new trial continues in the interrupted trial's run and fold runs
    (`continue_run`). Returns how many."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    queued = {t.user_attrs.get(USER_ATTR_RESUMES) for t in trials if t.state == optuna.trial.TrialState.WAITING}
    now, timeout, enqueued = time.time(), tracking.stale_after(), 0
    for run in tracking.study_runs(experiment_id, study.study_name, role="trial"):
        trial = by_number.get(int(run.data.tags.get(TAG_TRIAL, -1)))
        if trial is None or run.info.run_id in queued or not interrupted(run, now, timeout):
            continue
        if not resumable(run.data.tags[tracking.TAG_CELL], run.info.run_id):
            continue
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={USER_ATTR_RESUMES: run.info.run_id})
        enqueued += 1
    return enqueued


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
        bench = Workbench(data, device, bar)
        uri = tracking.absolute_uri(tracking_uri)
        ctx = TrialContext(search, study_name, storage, experiment_id, uri, folds, gray_baseline(data.test), bench)
        trials_bar = bar.add_task("trials", total=n_trials, status="")

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.advance(trials_bar)
            trial_line(study, trial)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(trial_objective(ctx), n_trials=n_trials, timeout=timeout, catch=(CellFailed,), callbacks=[after_trial])


def worker_main(
    search: Search,
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None,
    tracking_uri: str,
    worker: int,
    plugins: list[str],
) -> None:
    """Entry point of a worker process (spawned, so CUDA and MLflow start fresh): the parent's plugins first, errors as one line."""
    quiet_libraries()
    try:
        load_plugins(plugins)
        optimize(search, storage, study_name, n_trials, timeout, tracking_uri, worker, interactive=False)
    except ColorbenchError as err:
        console.print(f"[red]error:[/] worker {worker}: {err}", highlight=False, soft_wrap=True)
        sys.exit(1)


def run_workers(
    search: Search, storage: str, study_name: str, n_trials: int, timeout: float | None, tracking_uri: str, n_workers: int
) -> None:
    """`n_workers` processes on one study, sharing `n_trials` between them exactly (no trial lost or run twice)."""
    shares = [n_trials // n_workers + (w < n_trials % n_workers) for w in range(n_workers)]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=worker_main, args=(search, storage, study_name, share, timeout, tracking_uri, w, loaded_plugins()),
            name=f"colorbench-worker-{w}",
        )
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
    front: pd.DataFrame | None = None  # several objectives: every complete trial, `pareto` marking the front (`pareto.front_table`)


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
    experiment_id = tracking.open_experiment(uri, cfg.experiment)  # a bad store fails here, before any worker starts
    storage = storage or default_storage(uri, n_workers)
    study_name = study_name or cfg.experiment
    resumed = enqueue_interrupted(experiment_id, open_study(search, storage, study_name))  # once, before the workers start
    if resumed:
        console.print(f"Continuing {resumed} interrupted trial(s) from their folds' saved training states, in their MLflow runs.")
    n_trials = n_trials or cfg.n_trials
    timeout = timeout or cfg.timeout
    console.print(f"Study {study_name!r} in {shown(storage)}: adding {n_trials} trial(s) with {n_workers} worker(s).")
    if any(g.metric == "val_loss" for g in cfg.goals) and any(p.key == "loss" for p in search.params):
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
    several = len(cfg.goals) > 1
    best = study.best_trial if counts["COMPLETE"] and not several else None
    front = front_table(study) if several else None
    if front is not None:
        tag_front(front)
    figures, skipped = save_study_figures(study, Path(out_dir or Path("results") / cfg.experiment))
    metric = ", ".join(g.metric for g in cfg.goals)
    return SearchOutcome(study_name, shown(storage), metric, counts, best, best.user_attrs.get(USER_ATTR_RUN) if best else None, figures, skipped, front)
