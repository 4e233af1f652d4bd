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
    check_uninterrupted,
    killed_grid,
    rerun_resumes,
)
from servers import mlflow_server

from colorbench import cache, tracking
from colorbench.lifecycle import states

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
    path, cell, interrupted, fold = killed_grid(tiny_grid, server, tmp_path, EPOCHS)
    assert fold.info.artifact_uri.startswith("mlflow-artifacts:")
    assert state_artifacts(server, fold.info.run_id) == [f"{tracking.STATE_ARTIFACTS}/fold0-repeat0.pt"]
    assert [s.run_id for s in states.states()].count(interrupted.info.run_id) == 1
    shutil.rmtree(cache.cache_dir() / states.STATES)  # the rerun happens where the local state folder is not: another machine

    rerun_resumes(path, server, cell, interrupted, fold, EPOCHS)
    assert state_artifacts(server, fold.info.run_id) == []  # the cell finished: its states are gone, the artifact too
    assert all(s.run_id != interrupted.info.run_id for s in states.states())
    check_uninterrupted(path, cell, server, fold.info.run_id, tmp_path, empty_store)
