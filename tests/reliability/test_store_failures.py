"""Scenario 10: the tracking store fails in the middle of a grid (here another program holds the SQLite database locked, as a
backup tool or a second writer does): the grid ends with one line naming the store and the fix, the open runs are closed as far as
the store allows, and the same command resumes once the lock is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from reliability_support import Colorbench, cell_ids, cell_runs, fold_runs, slow_grid, statuses, training, write_grid

from colorbench import tracking
from colorbench.errors import StoreError

LOCK_SECONDS = 30  # MLflow waits 20 s for a locked SQLite database before a write fails

LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")  # no other connection reads or writes until the commit
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


@pytest.mark.processes
def test_a_store_locked_mid_grid_ends_it_with_one_line_and_the_same_command_resumes(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    grid = slow_grid(tiny_grid, cells=3, epochs=6, seconds=0.2)
    first, second, third = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    locked = Colorbench.start(path, tracking_uri, "locked")
    locked.wait_until(lambda: statuses(cell_runs(tracking_uri, first)) == ["FINISHED"] and training(tracking_uri, second))
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, tracking.sqlite_path(tracking_uri), str(LOCK_SECONDS)])
    assert locked.wait(timeout=240) == 2, locked.stderr
    assert locker.wait(timeout=60) == 0
    last = locked.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the MLflow tracking store {tracking_uri} failed ((sqlite3.OperationalError) database is locked): ")
    assert "end the program that holds the database locked" in last and "run the same command again to resume" in last
    assert "Traceback" not in locked.stderr, locked.stderr

    [done] = cell_runs(tracking_uri, first)
    [interrupted] = cell_runs(tracking_uri, second)  # closed once the lock was gone, the fold run too
    assert interrupted.info.status == "KILLED"
    assert interrupted.data.tags[tracking.TAG_FAILURE].startswith("StoreError: the MLflow tracking store")
    assert statuses(fold_runs(tracking_uri, interrupted.info.run_id)) == ["KILLED"]
    assert cell_runs(tracking_uri, third) == []  # the grid stopped at the failure

    rerun = Colorbench.start(path, tracking_uri, "rerun")  # the same command, the lock gone
    assert rerun.wait() == 0, rerun.stderr
    assert [r.info.run_id for r in cell_runs(tracking_uri, first)] == [done.info.run_id]
    [resumed] = cell_runs(tracking_uri, second)  # its fold saved a training state: the same runs continue (resume inside a fold)
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    assert statuses(fold_runs(tracking_uri, resumed.info.run_id)) == ["FINISHED"]
    assert statuses(cell_runs(tracking_uri, third)) == ["FINISHED"]


def test_a_server_that_stops_answering_is_a_store_failure_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = "http://127.0.0.1:9"  # nothing listens there: what a stopped server looks like to a client
    with pytest.raises(StoreError) as info, tracking.store_guard(uri):
        MlflowClient(uri).set_tag("0" * 32, tracking.TAG_HEARTBEAT, "1")
    message = str(info.value)
    assert message.startswith(f"the MLflow tracking store {uri} failed (API request to {uri}/api/")
    assert "check that the MLflow server is running and reachable, then run the same command again" in message and "\n" not in message
    assert tracking.status_for(info.value) == "KILLED"  # the runs it interrupted are closed KILLED, as after Ctrl-C


def test_errors_of_the_training_are_not_store_failures() -> None:
    with pytest.raises(RuntimeError), tracking.store_guard("sqlite:///mlflow.db"):
        raise RuntimeError("a bug in a loss")
    with pytest.raises(OSError, match="No such file"), tracking.store_guard("sqlite:///mlflow.db"):
        open("/nonexistent/file")  # noqa: SIM115 - an OSError that is not a full disk
