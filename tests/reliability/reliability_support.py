"""Helpers for the reliability suite: tiny slow grids, real `colorbench run` processes, and reading their store back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import slow_loss  # noqa: F401 - registers `slow-mse` here too, so grids using it validate in the test process
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from colorbench import tracking
from colorbench.config import expand
from colorbench.resolve import parse_experiment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXPERIMENT = "reliability"
VAL_FRACTIONS = (0.2, 0.3, 0.4, 0.5)  # one holdout cell each


def slow_grid(tiny_grid: dict, cells: int, epochs: int = 3, seconds: float = 0.2) -> dict:
    """`cells` one-fold cells whose loss sleeps `seconds` per call: about 3 calls an epoch, so each cell lasts a few seconds."""
    tiny_grid.update(experiment=EXPERIMENT)
    tiny_grid["train"]["epochs"] = epochs
    tiny_grid["grid"]["loss"] = [{"name": "slow-mse", "seconds": seconds}]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": f} for f in VAL_FRACTIONS[:cells]]
    return tiny_grid


def cell_ids(grid: dict) -> list[str]:
    return [c.id for c in expand(parse_experiment(grid))]


def write_grid(folder: Path, grid: dict, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(grid))
    return path


@dataclass
class Colorbench:
    """One `colorbench run GRID --tracking-uri URI` process (or `search FILE`), its output in files."""

    process: subprocess.Popen
    out: Path
    err: Path

    @classmethod
    def start(cls, grid: Path, uri: str, name: str = "run", options: tuple[str, ...] = (), verb: str = "run") -> Colorbench:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), "OMP_NUM_THREADS": "1"}  # this checkout's colorbench
        out, err = grid.parent / f"{name}.out", grid.parent / f"{name}.err"
        command = [sys.executable, "-m", "colorbench.cli", verb, str(grid), "--plugin", "slow_loss", "--tracking-uri", uri, *options]
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a child inherits an ignored SIGINT, never a handled one
        try:
            with open(out, "w") as stdout, open(err, "w") as stderr:
                process = subprocess.Popen(command, cwd=grid.parent, env=env, stdout=stdout, stderr=stderr)
        finally:
            signal.signal(signal.SIGINT, previous)
        return cls(process, out, err)

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 180) -> None:
        """Poll `condition` until it holds; fail with the process's output if it ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"condition not reached (exit {self.process.wait()}):\n{self.stderr}\n{self.stdout}")
            time.sleep(0.25)


def runs(uri: str, experiment: str = EXPERIMENT) -> list[Run]:
    """Every (not deleted) run of the experiment."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def cell_runs(uri: str, cell_id: str) -> list[Run]:
    return [r for r in runs(uri) if r.data.tags.get(tracking.TAG_CELL) == cell_id and r.data.tags.get(tracking.TAG_ROLE) == "cell"]


def fold_runs(uri: str, parent_id: str) -> list[Run]:
    return [r for r in runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def statuses(found: list[Run]) -> list[str]:
    return sorted(r.info.status for r in found)


def training(uri: str, cell_id: str) -> bool:
    """Whether the cell's RUNNING run has a fold that logged at least one epoch (so a kill now lands mid-training)."""
    running = [r for r in cell_runs(uri, cell_id) if r.info.status == "RUNNING"]
    return any("val_loss" in fold.data.metrics for r in running for fold in fold_runs(uri, r.info.run_id))


def fold_history(uri: str, run_id: str, key: str = "val_loss") -> list[tuple[int, float]]:
    """(step, value) of a fold run's per-epoch metric `key`, by step."""
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def epochs_logged(uri: str, parents: list[Run]) -> int:
    """The most epochs any fold run of `parents` (cell or trial runs) has logged."""
    return max((len(fold_history(uri, f.info.run_id)) for p in parents for f in fold_runs(uri, p.info.run_id)), default=0)


def check_uninterrupted(grid: Path, cell_id: str, uri: str, fold_run_id: str, folder: Path, empty_store: Path) -> None:
    """Train `grid` again, never interrupted, on a fresh store in `folder`: the fold run `fold_run_id` of `uri` must have logged the
    same per-epoch validation losses and the same test metrics, bit for bit (a CPU, one thread, as `Colorbench` runs)."""
    reference_uri = f"sqlite:///{folder / 'reference.db'}"
    shutil.copy(empty_store, folder / "reference.db")
    reference = Colorbench.start(grid, reference_uri, "reference")
    assert reference.wait() == 0, reference.stderr
    [whole] = fold_runs(reference_uri, cell_runs(reference_uri, cell_id)[0].info.run_id)
    assert fold_history(uri, fold_run_id) == fold_history(reference_uri, whole.info.run_id)  # epoch by epoch
    final = MlflowClient(uri).get_run(fold_run_id).data.metrics
    tests = {k: v for k, v in whole.data.metrics.items() if k.startswith(("test_", "best_"))}
    assert tests and {k: final[k] for k in tests} == tests


def kill_at_epoch(process: Colorbench, uri: str, parents: Callable[[], list[Run]], epoch: int = 3) -> tuple[Run, Run]:
    """kill -9 `process` once a fold run of the one run `parents()` finds (a cell or trial run) has logged `epoch` epochs; return that
    run and its (one) fold run."""
    process.wait_until(lambda: epochs_logged(uri, parents()) >= epoch)
    os.kill(process.process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    [interrupted] = parents()
    [fold] = fold_runs(uri, interrupted.info.run_id)
    return interrupted, fold


def killed_grid(tiny_grid: dict, uri: str, folder: Path, epochs: int) -> tuple[Path, str, Run, Run]:
    """A one-cell grid of `epochs` slow epochs, written to `folder` and run on `uri` until kill -9 at epoch 3: the grid file, the
    cell id, the interrupted cell run and its fold run."""
    grid = slow_grid(tiny_grid, cells=1, epochs=epochs, seconds=0.2)
    [cell] = cell_ids(grid)
    path = write_grid(folder, grid)
    interrupted, fold = kill_at_epoch(Colorbench.start(path, uri, "killed"), uri, lambda: cell_runs(uri, cell))
    return path, cell, interrupted, fold


def rerun_resumes(grid: Path, uri: str, cell_id: str, interrupted: Run, fold: Run, epochs: int) -> None:
    """The same command again finishes: it resumes the cell in its interrupted cell run and fold run (`check_continued`)."""
    rerun = Colorbench.start(grid, uri, "rerun")  # a process like the killed one (one CPU thread: same float sums)
    assert rerun.wait() == 0, rerun.stderr
    assert "resuming cell" in rerun.stderr
    check_continued(uri, cell_id, interrupted.info.run_id, fold.info.run_id, epochs)


def check_continued(uri: str, cell_id: str, cell_run_id: str, fold_run_id: str, epochs: int) -> None:
    """The cell has one run, `cell_run_id`, FINISHED, with one fold run, `fold_run_id`, FINISHED, which logged each of `epochs` epochs
    once, at its own step."""
    [resumed] = cell_runs(uri, cell_id)
    assert (resumed.info.run_id, resumed.info.status) == (cell_run_id, "FINISHED")  # the same cell run, claimed again
    [again] = fold_runs(uri, resumed.info.run_id)
    assert (again.info.run_id, again.info.status) == (fold_run_id, "FINISHED")  # the same fold run, continued
    assert [step for step, _ in fold_history(uri, fold_run_id)] == list(range(1, epochs + 1))
