"""`colorbench search`: an Optuna study over the grid's components and options. This process samples every trial (ask), holds its MLflow
run and sends it to an executor (`trial.TrialTask`), which trains it and reports its epochs to the shared storage; this process tells
the study how it ended."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from mlflow.entities import Run

from colorbench import tracking
from colorbench.errors import ConfigError, StoreError
from colorbench.lifecycle.cell import abort_all, resumable
from colorbench.lifecycle.executors import EXECUTORS
from colorbench.lifecycle.fold import Executor, TaskResult, Workbench
from colorbench.lifecycle.prepare import gray_baseline, prepare_data, report_skipped
from colorbench.plugins import loaded_plugins
from colorbench.resolve import cell_labels
from colorbench.search.engines import SAMPLERS
from colorbench.search.figures import save_study_figures
from colorbench.search.pareto import front_table, tag_front
from colorbench.search.space import Search
from colorbench.search.storage import (
    OBJECTIVES_ATTR,
    USER_ATTR_RESUMES,
    USER_ATTR_RUN,
    default_storage,
    objective_names,
    open_storage,
    shown,
)
from colorbench.search.trial import TrialEnd, TrialTask
from colorbench.splitters import SPLITTERS, Fold
from colorbench.tracking import TAG_SAMPLED, TAG_STATE, TAG_STORAGE, TAG_STUDY, TAG_TRIAL
from colorbench.train import resolve_device
from colorbench.ui import console, progress


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


def interrupted(run: Run, now: float, timeout: float) -> bool:
    """Whether a trial run was interrupted: KILLED but not pruned, or RUNNING with its process gone (`tracking.is_stale`)."""
    if run.info.status == "KILLED":
        return run.data.tags.get(TAG_STATE) != "PRUNED"
    return run.info.status == "RUNNING" and tracking.is_stale(run, now, timeout)


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
    """Fail the Optuna trial of each interrupted trial run (its process gone) that was left RUNNING, and enqueue it again, with the
    same sampled values, when its folds saved training states: the new trial continues in the interrupted trial's run and fold runs
    (`continue_run`). Returns how many were enqueued."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    queued = {t.user_attrs.get(USER_ATTR_RESUMES) for t in trials if t.state == optuna.trial.TrialState.WAITING}
    now, timeout, enqueued = time.time(), tracking.stale_after(), 0
    for run in tracking.study_runs(experiment_id, study.study_name, role="trial", status=("RUNNING", "KILLED")):
        trial = by_number.get(int(run.data.tags.get(TAG_TRIAL, -1)))
        if trial is None or run.info.run_id in queued or not interrupted(run, now, timeout):
            continue
        if trial.state == optuna.trial.TrialState.RUNNING:  # its process recorded no end (and, through an executor, no Optuna heartbeat)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        if resumable(run.data.tags[tracking.TAG_CELL], run.info.run_id):
            study.enqueue_trial(trial.params, user_attrs={USER_ATTR_RESUMES: run.info.run_id})
            enqueued += 1
    return enqueued


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares: the study and its storage, the MLflow experiment, the data's fingerprint, the folds, the
    gray baseline."""

    study_name: str
    storage: str
    experiment_id: str
    tracking_uri: str
    fingerprint: str
    folds: list[Fold]
    gray: dict[str, float]


def start_trial(trial: optuna.Trial, search: Search, where: TrialContext) -> TrialTask:
    """Sample `trial`'s values and hold its trial run (an interrupted trial's that it was enqueued to continue, else a new one, tagged
    with this process's claim); the task that trains it."""
    values = search.sample(trial)
    cell = search.cell(values)
    tags = {
        **tracking.cell_tags(cell, where.fingerprint, search.overrides),
        tracking.TAG_ROLE: "trial",
        TAG_STUDY: where.study_name,
        TAG_TRIAL: str(trial.number),
        TAG_STORAGE: shown(where.storage),
        TAG_SAMPLED: format_values(values),
    }
    name = f"trial {trial.number}"
    title = f"{name} | {' | '.join(cell_labels(cell))}"
    run_id = continue_run(trial, title) or tracking.create_run(where.experiment_id, title, {**tags, **tracking.claim_tags()}, cell.flat_params())
    trial.set_user_attr(USER_ATTR_RUN, run_id)
    return TrialTask(
        search=search,
        cell=cell,
        trial_id=trial._trial_id,  # what optuna.trial.Trial takes to rebuild it in a worker
        number=trial.number,
        run_id=run_id,
        tags=tags,
        folds=tuple(where.folds),
        gray=where.gray,
        study_name=where.study_name,
        storage=where.storage,
        experiment_id=where.experiment_id,
        tracking_uri=where.tracking_uri,
        plugins=tuple(loaded_plugins()),
    )


def end_trial(study: optuna.Study, task: TrialTask, result: TaskResult) -> optuna.trial.FrozenTrial:
    """Tell the study how a trial ended. An exception instead of a `TrialEnd` (its worker was lost, or it failed outside its folds)
    fails the trial and closes its run FAILED if it is still open; a failed store ends the search."""
    if isinstance(result, StoreError):
        raise result
    if isinstance(result, BaseException):
        console.print(f"  [red]{task.name} failed[/]: {tracking.failure_reason(result)}", highlight=False)
        if tracking.get_run(task.run_id).info.status == "RUNNING":
            task.held().abort(result)
        result = TrialEnd("FAIL")
    return study.tell(task.number, result.values, state=optuna.trial.TrialState[result.state], skip_if_finished=True)


def optimize(
    search: Search, storage: str, study_name: str, n_trials: int | None, timeout: float | None, tracking_uri: str, executor: Executor
) -> None:
    """Load the data and the study, then sample each trial here when `executor` can start it and send it there (all its folds in one
    task), until `n_trials` trials (None: no limit) or `timeout` seconds (no trial starts after it); tell the study how each ended.
    Ctrl-C, SIGTERM or a failed store fail the trials in flight (their runs end KILLED) and stop the search."""
    cfg = search.config
    experiment_id = tracking.open_experiment(tracking_uri, cfg.experiment)
    study = open_study(search, storage, study_name)
    seed = int(np.random.SeedSequence([cfg.seed, 0, len(study.trials)]).generate_state(1)[0])  # new samples on resume (0: as before one pool)
    study.sampler = SAMPLERS.build(cfg.sampler.name, cfg.sampler.options)(seed, search.params)
    closed = close_orphan_runs(experiment_id, study)
    if closed:
        console.print(f"Closed {closed} MLflow run(s) of interrupted trials as KILLED.")
    data = prepare_data(cfg)
    folds = SPLITTERS.build(cfg.splitter.name, cfg.splitter.options).split(data.pool, cfg.seed)
    device = resolve_device(cfg.train.device)
    report_skipped(data.skipped)
    console.print(f"Data: {len(data.pool)} training-pool images, {len(data.test)} test images; {len(folds)} fold(s); device {device}.")
    uri = tracking.absolute_uri(tracking_uri)
    where = TrialContext(study_name, storage, experiment_id, uri, data.fingerprint, folds, gray_baseline(data.test))
    in_flight: dict[int, TrialTask] = {}
    started = time.monotonic()

    def tasks() -> Iterator[TrialTask]:
        for _ in itertools.count() if n_trials is None else range(n_trials):
            if timeout is not None and time.monotonic() - started > timeout:
                return
            task = start_trial(study.ask(), search, where)
            in_flight[task.number] = task
            yield task

    with progress() as bar:
        trials_bar = bar.add_task("trials", total=n_trials, status=type(executor).__name__)
        try:
            with tracking.store_guard(uri):
                for task, result in executor.run(tasks(), Workbench(data, device, bar)):
                    trial_line(study, end_trial(study, in_flight.pop(task.number), result))
                    bar.advance(trials_bar)
        except BaseException as err:
            abort_all([task.held() for task in in_flight.values()], err)
            for number in in_flight:
                study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise


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
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
) -> SearchOutcome:
    """Add `n_trials` trials (default: the file's `n_trials`) to the study, each run on `executor` (`local`, `process`, `slurm`,
    `ray` or a plugin's, as `colorbench run`'s folds); save Optuna's figures."""
    engine = EXECUTORS.build(executor, executor_options)  # unknown names/options fail here
    cfg = search.config
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_id = tracking.open_experiment(uri, cfg.experiment)  # a bad store fails here, before any trial starts
    storage = storage or default_storage(uri, shared=executor != "local")
    study_name = study_name or cfg.experiment
    resumed = enqueue_interrupted(experiment_id, open_study(search, storage, study_name))
    if resumed:
        console.print(f"Continuing {resumed} interrupted trial(s) from their folds' saved training states, in their MLflow runs.")
    n_trials = n_trials or cfg.n_trials
    timeout = timeout or cfg.timeout
    console.print(f"Study {study_name!r} in {shown(storage)}: adding {n_trials} trial(s), run by executor {executor}.")
    if any(g.metric == "val_loss" for g in cfg.goals) and any(p.key == "loss" for p in search.params):
        console.print(
            "[yellow]warning:[/] the space varies the loss but the objective is val_loss, whose scale differs between losses; "
            "consider objective: {metric: val_auc_rebalanced, direction: maximize}"
        )
    optimize(search, storage, study_name, n_trials, timeout, uri, engine)
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
