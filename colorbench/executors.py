"""Where fold trainings run: one interface, backends on engines users already run (a process pool, Slurm via submitit, Ray).

The local process stays the only one that claims cells and writes their parent runs; every fold training is a task that
writes its own child run (tagged with the parent's id) to the same tracking store and returns its test metrics.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import mlflow
from mlflow.tracking import MlflowClient

from colorbench import tracking
from colorbench.config import Cell
from colorbench.errors import ConfigError
from colorbench.registry import Registry
from colorbench.resolve import cell_labels
from colorbench.runner import CellOutcome, claim, log_cell_summary, prepare_data, print_fold, train_fold
from colorbench.splitters import SPLITTERS, Fold
from colorbench.train import resolve_device
from colorbench.ui import console, progress, quiet_libraries

TaskResult = dict[str, float] | BaseException


@dataclass(frozen=True)
class FoldTask:
    """One fold training of a claimed cell, self-contained so it can run in another process or on another machine."""

    cell: Cell
    fold: int
    n_folds: int
    parent_run_id: str
    experiment_id: str
    tracking_uri: str


class Executor(Protocol):
    """Runs fold tasks somewhere and yields each with its metrics (or the exception it raised) as it completes."""

    def run(self, tasks: list[FoldTask]) -> Iterator[tuple[FoldTask, TaskResult]]: ...


def close_earlier_attempts(client: MlflowClient, task: FoldTask) -> None:
    """A retried task (its worker was lost) first closes the runs its earlier attempts left RUNNING."""
    query = (
        f"tags.mlflow.parentRunId = '{task.parent_run_id}' and tags.`{tracking.TAG_FOLD}` = '{task.fold}' and attributes.status = 'RUNNING'"
    )
    for run in client.search_runs([task.experiment_id], filter_string=query, max_results=100):
        client.set_tag(run.info.run_id, tracking.TAG_FAILURE, "interrupted: its worker was lost; the task was retried")
        client.set_terminated(run.info.run_id, status="KILLED")


def run_fold_task(task: FoldTask) -> dict[str, float]:
    """Worker side: load the data (the decode-once cache makes this cheap), train the fold in a child run, return its test metrics."""
    quiet_libraries()
    mlflow.set_tracking_uri(task.tracking_uri)
    mlflow.set_experiment(experiment_id=task.experiment_id)
    cell = task.cell
    data = prepare_data(cell)
    fold = SPLITTERS.build(cell.splitter.name, cell.splitter.options).split(data.pool, cell.seed)[task.fold]
    close_earlier_attempts(MlflowClient(), task)
    tags = {
        **tracking.cell_tags(cell, data.fingerprint),
        tracking.TAG_ROLE: "fold",
        tracking.TAG_FOLD: str(fold.index),
        "mlflow.parentRunId": task.parent_run_id,
    }
    label = " | ".join(cell_labels(cell))
    with progress(False) as bar, tracking.run(f"{label} | fold {fold.index}", tags, cell.flat_params()):
        epochs = bar.add_task("epochs", total=cell.train.epochs, status="")
        return train_fold(cell, fold, data, resolve_device(cell.train.device), bar, epochs)


def absolute_uri(uri: str) -> str:
    """A relative SQLite URI made absolute, so workers with another working directory reach the same file."""
    db = tracking.sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def require(module: str, extra: str) -> Any:
    """Import an optional engine, or a ConfigError with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this executor needs {module}: pip install 'colorbench[{extra}]'") from None


EXECUTORS: Registry[Executor] = Registry("executor")


def pin_gpu(counter: Any) -> None:
    """Process-pool initializer: worker i sees only GPU i mod the GPU count (before CUDA starts in it)."""
    import torch

    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if torch.cuda.device_count() > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % torch.cuda.device_count())


@EXECUTORS.register("process")
@dataclass
class ProcessExecutor:
    """A pool of `workers` local processes (several GPUs or CPU cores on one machine); they share the decode-once cache."""

    workers: int = 2

    def run(self, tasks: list[FoldTask]) -> Iterator[tuple[FoldTask, TaskResult]]:
        context = multiprocessing.get_context("spawn")
        counter = context.Value("i", 0)
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=pin_gpu, initargs=(counter,)) as pool:
            futures = {pool.submit(run_fold_task, task): task for task in tasks}
            for future in as_completed(futures):
                yield futures[future], future.exception() or future.result()


@EXECUTORS.register("slurm")
@dataclass
class SlurmExecutor:
    """One Slurm job per fold through submitit (`cluster: local` runs the same code path as local processes, without Slurm)."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    time: int = 120  # minutes
    folder: str = "slurm-logs"
    cluster: str | None = None  # None: Slurm when available; "local" or "debug" for machines without it

    def run(self, tasks: list[FoldTask]) -> Iterator[tuple[FoldTask, TaskResult]]:
        submitit = require("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.time, "cpus_per_task": self.cpus_per_task, "gpus_per_node": self.gpus_per_task}
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        pending = {executor.submit(run_fold_task, task): task for task in tasks}
        while pending:
            for job in [job for job in pending if job.done()]:
                task = pending.pop(job)
                try:
                    yield task, job.result()
                except Exception as err:  # noqa: BLE001 - a failed job fails its cell, not the grid
                    yield task, err
            time.sleep(0.5)


@EXECUTORS.register("ray")
@dataclass
class RayExecutor:
    """Plain Ray tasks (not Ray Tune): `address` None starts a local Ray, `auto` joins the running cluster, or ray://HOST:10001."""

    address: str | None = None
    gpus_per_trial: float = 0.0
    cpus_per_task: float = 1.0
    max_retries: int = 3  # Ray re-runs a task whose worker died; its earlier attempt's run is closed KILLED
    num_cpus: int | None = None  # CPUs of a local Ray started here

    def run(self, tasks: list[FoldTask]) -> Iterator[tuple[FoldTask, TaskResult]]:
        ray = require("ray", "ray")
        if not ray.is_initialized():
            local = {"num_cpus": self.num_cpus, "include_dashboard": False} if self.address is None else {}
            ray.init(address=self.address, log_to_driver=False, **local)
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_trial, max_retries=self.max_retries)(run_fold_task)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                yield task, ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                yield task, err.cause if isinstance(err.cause, BaseException) else err
            except ray.exceptions.RayError as err:  # worker lost past its retries, or the cluster went away
                yield task, err


@dataclass
class ClaimedCell:
    """A cell this process claimed: its parent run, its folds' results so far, the first failure."""

    cell: Cell
    run_id: str
    n_folds: int
    results: dict[int, dict[str, float]] = field(default_factory=dict)
    failure: str | None = None
    done: int = 0


def finish(claimed: ClaimedCell, gray: dict[str, float], fingerprint: str) -> dict[str, float]:
    """All folds reported: log the fold means/stds and the model on the parent run and end it (FAILED with the reason on a failure)."""
    cell = claimed.cell
    if claimed.failure:
        client = MlflowClient()
        client.set_tag(claimed.run_id, tracking.TAG_FAILURE, claimed.failure[:5000])
        client.set_terminated(claimed.run_id, status="FAILED")
        return {}
    tags = tracking.cell_tags(cell, fingerprint)
    with tracking.run(" | ".join(cell_labels(cell)), tags, cell.flat_params(), run_id=claimed.run_id) as run_id:
        return log_cell_summary(run_id, [claimed.results[i] for i in sorted(claimed.results)], gray)


def kill_unfinished(claims: dict[str, ClaimedCell]) -> None:
    """Ctrl-C or a crash of the coordinator: its claimed, unfinished cell runs end KILLED (a rerun retrains them)."""
    client = MlflowClient()
    for claimed in claims.values():
        if claimed.done < claimed.n_folds:
            client.set_tag(claimed.run_id, tracking.TAG_FAILURE, "interrupted: the coordinating process stopped")
            client.set_terminated(claimed.run_id, status="KILLED")


def run_cells(
    executor: Executor,
    cells: list[Cell],
    splits: dict[str, list[Fold]],
    experiment_id: str,
    tracking_uri: str,
    gray: dict[str, float],
    fingerprint: str,
) -> dict[str, CellOutcome]:
    """Claim each cell, send every fold of the claimed ones to `executor`, finish each cell as its last fold reports."""
    outcomes: dict[str, CellOutcome] = {}
    claims: dict[str, ClaimedCell] = {}
    uri = absolute_uri(tracking_uri)
    with ExitStack() as stack:
        for cell in cells:
            outcome = claim(cell, experiment_id, tracking.cell_tags(cell, fingerprint))
            if outcome.skipped:
                outcomes[cell.id] = outcome
                continue
            stack.enter_context(tracking.heartbeat(outcome.run_id))
            claims[cell.id] = ClaimedCell(cell, outcome.run_id, len(splits[cell.id]))
        tasks = [
            FoldTask(c.cell, fold.index, c.n_folds, c.run_id, experiment_id, uri) for c in claims.values() for fold in splits[c.cell.id]
        ]
        try:
            with progress() as bar:
                folds_task = bar.add_task("folds", total=len(tasks), status=type(executor).__name__)
                for task, result in executor.run(tasks):
                    claimed = claims[task.cell.id]
                    claimed.done += 1
                    report_fold(task, result, claimed)
                    bar.advance(folds_task)
                    if claimed.done == claimed.n_folds:
                        metrics = finish(claimed, gray, fingerprint)
                        outcomes[task.cell.id] = CellOutcome(claimed.cell, claimed.run_id, metrics, claimed.failure)
        except BaseException:
            kill_unfinished(claims)
            raise
    return outcomes


def report_fold(task: FoldTask, result: TaskResult, claimed: ClaimedCell) -> None:
    """Record one fold's result on its cell and print it."""
    label = " | ".join(cell_labels(task.cell))
    if isinstance(result, BaseException):
        claimed.failure = claimed.failure or f"fold {task.fold}: {type(result).__name__}: {result}"
        console.print(f"  [red]{task.cell.id} {label} fold {task.fold + 1}/{task.n_folds} failed[/]: {result}", highlight=False)
        return
    claimed.results[task.fold] = result
    print_fold(task.cell, task.fold, task.n_folds, result)

