"""Resume from a remote store's artifacts: a real `colorbench run` logging to an `mlflow server` (artifacts proxied, so
`mlflow-artifacts:` URIs) is killed at epoch 3 of 6, its local training states are deleted (another machine), and the rerun
continues the fold from the state its fold run keeps as an artifact, to the uninterrupted result."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from reliability_support import Colorbench, cell_ids, cell_runs, fold_runs, slow_grid, write_grid
from servers import mlflow_server

from colorbench import cache, tracking

pytestmark = pytest.mark.scaleout
EPOCHS = 6


@pytest.fixture
def server(empty_store: Path, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a SQLite backend, its artifacts proxied (stored in tmp_path/server-artifacts)."""
    shutil.copy(empty_store, tmp_path / "server.db")
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts", tmp_path / "server.log") as url:
        yield url


def history(uri: str, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "val_loss"))


def state_artifacts(uri: str, run_id: str) -> list[str]:
    return [f.path for f in MlflowClient(uri).list_artifacts(run_id, tracking.STATE_ARTIFACTS)]


def test_a_fold_resumes_from_its_state_artifact_when_the_local_state_is_gone(
    server: str, tiny_grid: dict, tmp_path: Path, empty_store: Path
) -> None:
    grid = slow_grid(tiny_grid, cells=1, epochs=EPOCHS, seconds=0.2)
    [cell] = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    killed = Colorbench.start(path, server, "killed")

    def at_epoch_3() -> bool:
        return any(len(history(server, f.info.run_id)) >= 3 for r in cell_runs(server, cell) for f in fold_runs(server, r.info.run_id))

    killed.wait_until(at_epoch_3)
    os.kill(killed.process.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    [interrupted] = cell_runs(server, cell)
    [fold] = fold_runs(server, interrupted.info.run_id)
    assert fold.info.artifact_uri.startswith("mlflow-artifacts:")
    assert state_artifacts(server, fold.info.run_id) == [f"{tracking.STATE_ARTIFACTS}/fold0-repeat0.pt"]
    assert len(cache.states()) == 1
    shutil.rmtree(cache.cache_dir() / cache.STATES)  # the rerun happens where the local state folder is not: another machine

    rerun = Colorbench.start(path, server, "rerun")
    assert rerun.wait() == 0, rerun.stderr
    assert "resuming cell" in rerun.stderr
    [resumed] = cell_runs(server, cell)
    assert (resumed.info.run_id, resumed.info.status) == (interrupted.info.run_id, "FINISHED")
    [again] = fold_runs(server, resumed.info.run_id)
    assert (again.info.run_id, again.info.status) == (fold.info.run_id, "FINISHED")  # the same fold run, continued
    resumed_history = history(server, fold.info.run_id)
    assert [step for step, _ in resumed_history] == list(range(1, EPOCHS + 1))
    assert state_artifacts(server, fold.info.run_id) == [] and cache.states() == []  # the cell finished: its states are gone

    reference_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    shutil.copy(empty_store, tmp_path / "reference.db")
    reference = Colorbench.start(path, reference_uri, "reference")  # never interrupted
    assert reference.wait() == 0, reference.stderr
    [whole] = fold_runs(reference_uri, cell_runs(reference_uri, cell)[0].info.run_id)
    assert resumed_history == history(reference_uri, whole.info.run_id)  # bit-identical on a CPU, epoch by epoch
    final = MlflowClient(server).get_run(fold.info.run_id).data.metrics
    tests = {k: v for k, v in whole.data.metrics.items() if k.startswith(("test_", "best_"))}
    assert tests and {k: final[k] for k in tests} == tests
