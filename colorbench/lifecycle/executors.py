"""Where tasks run: `local` (this process, the default), `process` (a local pool), `slurm` (submitit), `ray`.

The one pool of `colorbench run` and `colorbench search`. A grid (`colorbench.lifecycle.run_cells`) claims each cell and writes its
parent run in the local process and sends fold tasks, each writing its own child run to the same tracking store; a search
(`colorbench.search.optimize`) samples each trial here and sends it whole (its folds one after another, for the pruner), the
study's storage shared. Executors are a registry like the components, so a plugin can add one; the CLI builds `--executor` and
its option flags from it. This module imports the training stack only when a task runs, so the CLI can read the registry quickly.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from colorbench.errors import ConfigError
from colorbench.registry import Registry

if TYPE_CHECKING:
    from colorbench.lifecycle.fold import Executor, TaskResult, TaskT, Workbench

EXECUTORS: Registry[Executor] = Registry("executor")


def option(default: Any, text: str) -> Any:
    """An executor option with the help text the CLI shows for its flag."""
    return field(default=default, metadata={"help": text})


def option_help(name: str) -> dict[str, str]:
    """Executor `name`'s options -> help text (its dataclass fields' `help`, else the option's name)."""
    factory = EXECUTORS.get(name)
    fields = {f.name: f for f in dataclasses.fields(factory)} if dataclasses.is_dataclass(factory) else {}
    helps = {}
    for key, param in EXECUTORS.options(name).items():
        text = fields[key].metadata.get("help", key) if key in fields else key
        helps[key] = text if param.default in (None, param.empty) else f"{text} (default {param.default})"
    return helps


def stream(
    tasks: Iterable[TaskT],
    room: Callable[[], int | None],
    submit: Callable[[TaskT], Any],
    ended: Callable[[list[Any]], Iterable[Any]],
    outcome: Callable[[Any], TaskResult],
) -> Iterator[tuple[TaskT, TaskResult]]:
    """The body of every pool: keep up to `room()` tasks submitted (None: all of them at once), taking the next from `tasks` only
    when one ends; yield each task with its `outcome` (its result, or the exception it raised) as `ended` (which blocks until one
    has) finds it ended. `submit` returns a hashable handle of the task."""
    pending: dict[Any, TaskT] = {}
    todo = iter(tasks)
    while True:
        limit = room()
        for task in itertools.islice(todo, None if limit is None else max(0, limit - len(pending))):
            pending[submit(task)] = task
        if not pending:
            return
        for handle in ended(list(pending)):
            yield pending.pop(handle), outcome(handle)


@EXECUTORS.register("local")
@dataclass
class LocalExecutor:
    """This process, one task after another (the default)."""

    def run(self, tasks: Iterable[TaskT], bench: Workbench) -> Iterator[tuple[TaskT, TaskResult]]:
        from colorbench.lifecycle.fold import run_here

        return run_here(tasks, bench)


def require(module: str, extra: str) -> Any:
    """Import an optional engine, or a ConfigError with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this executor needs {module}: pip install 'colorbench[{extra}]'") from None


def pin_gpu(counter: Any, workers: int) -> None:
    """Process-pool initializer: worker i sees only GPU i mod the GPU count (before CUDA starts in it), and takes its share of the
    CPU cores for torch's threads (unless OMP_NUM_THREADS is set): `workers` processes with a thread per core each would
    oversubscribe the cores many times over (measured here: a fold 10-20 times slower on 2 cores)."""
    import torch

    from colorbench.data import usable_cpus

    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if torch.cuda.device_count() > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % torch.cuda.device_count())
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, usable_cpus() // workers))


@EXECUTORS.register("process")
@dataclass
class ProcessExecutor:
    """A pool of `workers` local processes (several GPUs or CPU cores on one machine); they share the decode-once cache."""

    workers: Annotated[int, Field(ge=1)] = option(2, "number of worker processes")

    def run(self, tasks: Iterable[TaskT], bench: Workbench) -> Iterator[tuple[TaskT, TaskResult]]:
        from colorbench.lifecycle.fold import run_task

        context = multiprocessing.get_context("spawn")
        counter = context.Value("i", 0)
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=pin_gpu, initargs=(counter, self.workers)) as pool:
            yield from stream(
                tasks,
                lambda: self.workers,
                lambda task: pool.submit(run_task, task),
                lambda futures: wait(futures, return_when=FIRST_COMPLETED).done,
                lambda future: future.exception() or future.result(),
            )


@EXECUTORS.register("slurm")
@dataclass
class SlurmExecutor:
    """One Slurm job per task through submitit (`cluster: local` runs the same code path as local processes, without Slurm)."""

    partition: str | None = option(None, "partition")
    gpus_per_task: int = option(0, "GPUs per job")
    cpus_per_task: int = option(2, "CPUs per job")
    time: int = option(120, "time limit per job, minutes")
    folder: str = option("slurm-logs", "folder of the job logs")
    cluster: str | None = option(None, "submitit cluster, e.g. local to run the jobs as local processes (default: Slurm)")
    max_jobs: int | None = option(None, "jobs queued or running at once (default: every task at once; a search samples a trial when it queues it)")

    def run(self, tasks: Iterable[TaskT], bench: Workbench) -> Iterator[tuple[TaskT, TaskResult]]:
        from colorbench.lifecycle.fold import run_task

        submitit = require("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.time, "cpus_per_task": self.cpus_per_task, "gpus_per_node": self.gpus_per_task}
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)

        def ended(jobs: list[Any]) -> list[Any]:
            while not (done := [job for job in jobs if job.done()]):
                time.sleep(0.5)
            return done

        def outcome(job: Any) -> TaskResult:
            try:
                return job.result()
            except Exception as err:  # noqa: BLE001 - a failed job fails its cell or trial, not the rest
                return err

        yield from stream(tasks, lambda: self.max_jobs, lambda task: executor.submit(run_task, task), ended, outcome)


@EXECUTORS.register("ray")
@dataclass
class RayExecutor:
    """Plain Ray tasks (not Ray Tune): `address` None starts a local Ray, `auto` joins the running cluster, or ray://HOST:10001. As
    many tasks are in flight as the cluster has CPUs (and GPUs) for, so a search samples a trial when it can start it."""

    address: str | None = option(None, "auto (running cluster), ray://HOST:10001, or omit to start a local Ray")
    gpus_per_trial: float = option(0.0, "GPUs per task, fractions allowed")
    cpus_per_task: float = option(1.0, "CPUs per task")
    max_retries: int = option(3, "re-runs of a task whose worker died (its earlier attempt's runs are closed KILLED or continued)")
    num_cpus: int | None = option(None, "CPUs of a local Ray started here")

    def run(self, tasks: Iterable[TaskT], bench: Workbench) -> Iterator[tuple[TaskT, TaskResult]]:
        from colorbench.lifecycle.fold import run_task

        ray = require("ray", "ray")
        if not ray.is_initialized():
            local = {"num_cpus": self.num_cpus, "include_dashboard": False} if self.address is None else {}
            ray.init(address=self.address, log_to_driver=False, **local)
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_trial, max_retries=self.max_retries)(run_task)

        def outcome(ref: Any) -> TaskResult:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                return err.cause if isinstance(err.cause, BaseException) else err
            except ray.exceptions.RayError as err:  # worker lost past its retries, or the cluster went away
                return err

        yield from stream(
            tasks,
            lambda: self.room(ray.cluster_resources()),
            lambda task: remote.options(name=f"run_{task.kind}_task").remote(task),  # the worker's title: ray::run_fold_task, ...
            lambda refs: ray.wait(refs, num_returns=1)[0],
            outcome,
        )

    def room(self, resources: dict[str, float]) -> int | None:
        """Tasks the cluster's `resources` can run at once (None: no limit, when a task asks for neither CPUs nor GPUs)."""
        slots = [resources.get("CPU", 0.0) / self.cpus_per_task] if self.cpus_per_task else []
        if self.gpus_per_trial:
            slots.append(resources.get("GPU", 0.0) / self.gpus_per_trial)
        return max(1, int(min(slots))) if slots else None
