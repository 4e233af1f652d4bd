"""One search trial as an executor's task: its folds trained one after another in its trial run, each epoch reported to the study
(the pruner's running objective); what the study is told when it ends."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import ClassVar

import optuna

from colorbench import tracking
from colorbench.config import Cell
from colorbench.errors import TrialPruned
from colorbench.lifecycle.cell import CellRun, abort_all
from colorbench.lifecycle.fold import Workbench, close_earlier_attempts, run_here
from colorbench.metrics import CHOSEN, decoded
from colorbench.search.engines import PRUNERS
from colorbench.search.space import Search
from colorbench.search.storage import open_storage
from colorbench.splitters import Fold


class FoldAveragedReporter:
    """Tracks a trial's objectives and reports the running one after every epoch, comparable across trials and folds.

    Step = fold index * epochs + epoch. Value = mean over the finished folds' values and the current fold's value so far,
    where a fold's value is the metric at its best checkpoint (lowest validation loss) so far. At the last step it equals
    the trial's objective, so the pruner compares like with like although every fold restarts at epoch 1 (with
    `train.decode`, a finished fold counts at the decoding it chose, the running one at its default until it ends). With several
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

    def end_fold(self, summary: object) -> None:
        """Close a fold. Its values are the validation metrics at the decoding the fold chose (`val_<metric>.chosen`, with
        `train.decode`), else at its best checkpoint; `summary` is the fold's result (an exception when it failed)."""
        chosen = summary if isinstance(summary, dict) else {}
        self.finished.append([chosen.get(decoded(m, CHOSEN), value) for m, value in zip(self.metrics, self.current, strict=True)])
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


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, for the study: its state (COMPLETE, PRUNED or FAIL) and, when complete, its objectives."""

    state: str
    values: list[float] | None = None


@dataclass(frozen=True)
class TrialTask:
    """A sampled trial whose run the search created (`optimize.start_trial`), self-contained so that any executor can run it: its
    folds train one after another (the pruner's running objective needs them in order), reporting to the study in `storage`."""

    kind: ClassVar[str] = "trial"
    search: Search
    cell: Cell
    trial_id: int  # the trial's id in the storage
    number: int  # its number in the study
    run_id: str
    tags: dict[str, str]  # the trial run's tags, which its fold runs carry too
    folds: tuple[Fold, ...]
    gray: dict[str, float]
    study_name: str
    storage: str
    experiment_id: str
    tracking_uri: str
    plugins: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """`trial <number>`: its fold runs are named `<name> | fold <index>`."""
        return f"trial {self.number}"

    def held(self) -> CellRun:
        """The trial run with its fold tasks; it deploys the child with the best first objective."""
        maximize = self.search.config.goals[0].direction == "maximize"
        return CellRun(self.cell, self.run_id, self.name, self.tags, list(self.folds), maximize=maximize)

    def trial(self) -> optuna.Trial:
        """The running Optuna trial, read from the shared storage, with the search's pruner."""
        cfg = self.search.config
        pruner = PRUNERS.build(cfg.pruner.name, cfg.pruner.options)
        study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage), sampler=optuna.samplers.RandomSampler(), pruner=pruner)
        return optuna.trial.Trial(study, self.trial_id)  # it samples nothing: its values are fixed in `cell`

    def run(self, bench: Workbench) -> TrialEnd:
        """Train the folds in the trial run, report each epoch, finish the run (summary, deployed child, model); how it ended. A failed
        fold fails the trial (FAIL), a pruned one prunes it (PRUNED); Ctrl-C or a failed store close the run KILLED and raise."""
        held = self.held()
        with tracking.store_guard(self.tracking_uri):
            held.held.enter_context(tracking.heartbeat(self.run_id))  # a killed search's trial run goes stale: the next search continues it
            try:
                reporter = FoldAveragedReporter(self.trial(), [g.metric for g in self.search.config.goals], self.cell.train.epochs, self.run_id)
                for task, result in run_here(held.tasks(self.experiment_id, self.tracking_uri), replace(bench, after_epoch=reporter)):
                    reporter.end_fold(result)
                    held.record(task, result, reporter.finished[-1][0])  # the child's (first) objective value picks the deployed child
                held.finish(self.gray, bench, reporter.logged() if held.error is None else None)
            except BaseException as err:
                abort_all([held], err)
                raise
        if held.error is None:
            return TrialEnd("COMPLETE", reporter.values)
        return TrialEnd("PRUNED" if isinstance(held.error, TrialPruned) else "FAIL")

    def retried(self) -> None:
        """Close the fold runs an earlier attempt of this trial left RUNNING, except those it continues (`close_earlier_attempts`)."""
        for task in self.held().tasks(self.experiment_id, self.tracking_uri):
            close_earlier_attempts(task)
