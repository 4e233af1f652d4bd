"""Resume inside a fold: kill -9 a real `colorbench run` at epoch 3 of 6, rerun, and the fold continues in the same runs to the
same result as an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from mlflow.tracking import MlflowClient
from reliability_support import Colorbench, cell_ids, cell_runs, fold_runs, slow_grid, write_grid

from colorbench import cache

EPOCHS = 6


def fold_history(uri: str, run_id: str, key: str = "val_loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_kill_9_at_epoch_3_of_6_then_rerun_resumes_the_fold_to_the_uninterrupted_result(
    tiny_grid: dict, tracking_uri: str, tmp_path: Path, empty_store: Path
) -> None:
    grid = slow_grid(tiny_grid, cells=1, epochs=EPOCHS, seconds=0.2)
    [cell] = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    killed = Colorbench.start(path, tracking_uri, "killed")

    def at_epoch_3() -> bool:
        running = [r for r in cell_runs(tracking_uri, cell) if r.info.status == "RUNNING"]
        return any(len(fold_history(tracking_uri, f.info.run_id)) >= 3 for r in running for f in fold_runs(tracking_uri, r.info.run_id))

    killed.wait_until(at_epoch_3)
    os.kill(killed.process.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    [interrupted] = cell_runs(tracking_uri, cell)
    [fold] = fold_runs(tracking_uri, interrupted.info.run_id)
    assert 3 <= len(fold_history(tracking_uri, fold.info.run_id)) < EPOCHS
    assert [s.cell_id for s in cache.states()].count(cell) == 1  # the fold's saved state

    rerun = Colorbench.start(path, tracking_uri, "rerun")  # a process like the killed one (one CPU thread: same float sums)
    assert rerun.wait() == 0, rerun.stderr
    assert "resuming cell" in rerun.stderr
    [resumed] = cell_runs(tracking_uri, cell)
    assert (resumed.info.run_id, resumed.info.status) == (interrupted.info.run_id, "FINISHED")  # the same cell run, claimed again
    [again] = fold_runs(tracking_uri, resumed.info.run_id)
    assert (again.info.run_id, again.info.status) == (fold.info.run_id, "FINISHED")  # the same fold run, continued
    history = fold_history(tracking_uri, fold.info.run_id)
    assert [step for step, _ in history] == list(range(1, EPOCHS + 1))  # each epoch once, at its own step
    assert all(s.cell_id != cell for s in cache.states())  # the finished cell's state is gone

    reference_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    shutil.copy(empty_store, tmp_path / "reference.db")
    reference = Colorbench.start(path, reference_uri, "reference")  # the same grid, never interrupted
    assert reference.wait() == 0, reference.stderr
    [whole] = fold_runs(reference_uri, cell_runs(reference_uri, cell)[0].info.run_id)
    assert history == fold_history(reference_uri, whole.info.run_id)  # bit-identical on a CPU, epoch by epoch
    final = MlflowClient(tracking_uri).get_run(fold.info.run_id).data.metrics
    tests = {k: v for k, v in whole.data.metrics.items() if k.startswith(("test_", "best_"))}
    assert tests and {k: final[k] for k in tests} == tests
