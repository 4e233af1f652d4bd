"""Resume from a remote store's artifacts: a real `colorbench run` logging to an `mlflow server` (artifacts proxied, so
`mlflow-artifacts:` URIs) is killed at epoch 3 of 6, its local training states are deleted (another machine), and the rerun
continues the fold from the state its fold run keeps as an artifact, to the uninterrupted result."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from reliability_support import (
    Colorbench,
    cell_ids,
    check_continued,
    check_uninterrupted,
    kill_at_epoch,
    slow_grid,
    write_grid,
)
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


def state_artifacts(uri: str, run_id: str) -> list[str]:
    return [f.path for f in MlflowClient(uri).list_artifacts(run_id, tracking.STATE_ARTIFACTS)]


def test_a_fold_resumes_from_its_state_artifact_when_the_local_state_is_gone(
    server: str, tiny_grid: dict, tmp_path: Path, empty_store: Path
) -> None:
    grid = slow_grid(tiny_grid, cells=1, epochs=EPOCHS, seconds=0.2)
    [cell] = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    interrupted, fold = kill_at_epoch(Colorbench.start(path, server, "killed"), server, cell)
    assert fold.info.artifact_uri.startswith("mlflow-artifacts:")
    assert state_artifacts(server, fold.info.run_id) == [f"{tracking.STATE_ARTIFACTS}/fold0-repeat0.pt"]
    assert [s.run_id for s in cache.states()].count(interrupted.info.run_id) == 1
    shutil.rmtree(cache.cache_dir() / cache.STATES)  # the rerun happens where the local state folder is not: another machine

    rerun = Colorbench.start(path, server, "rerun")
    assert rerun.wait() == 0, rerun.stderr
    assert "resuming cell" in rerun.stderr
    check_continued(server, cell, interrupted.info.run_id, fold.info.run_id, EPOCHS)
    assert state_artifacts(server, fold.info.run_id) == []  # the cell finished: its states are gone, the artifact too
    assert all(s.run_id != interrupted.info.run_id for s in cache.states())
    check_uninterrupted(path, cell, server, fold.info.run_id, tmp_path, empty_store)
