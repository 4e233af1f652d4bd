"""Cell claims (scenarios 1 and 7 underneath): live claims are respected, dead ones taken over, and of many simultaneous claimers
exactly one wins, on a real SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from colorbench import tracking

CELL = "c0ffee000000"


def rival(experiment_id: str, host: str, pid: int, heartbeat: float, status: str = "RUNNING") -> str:
    """A cell run as another process's claim would leave it, with one RUNNING fold run under it; returns the cell run's id."""
    client = MlflowClient()
    tags = {tracking.TAG_CELL: CELL, tracking.TAG_ROLE: "cell", tracking.TAG_CLAIM_HOST: host, tracking.TAG_CLAIM_PID: str(pid)}
    parent = client.create_run(experiment_id, tags={**tags, tracking.TAG_HEARTBEAT: str(heartbeat)}).info.run_id
    client.create_run(experiment_id, tags={tracking.TAG_CELL: CELL, tracking.TAG_ROLE: "fold", "mlflow.parentRunId": parent})
    if status != "RUNNING":
        client.set_terminated(parent, status)
    return parent


def status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


@pytest.fixture
def experiment_id(tracking_uri: str) -> str:
    return tracking.open_experiment(tracking_uri, "claims")


def test_a_live_process_keeps_its_cell_and_a_dead_one_loses_it(experiment_id: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = rival(experiment_id, tracking.HOST, holder.pid, time.time())
        assert tracking.close_stale_runs(experiment_id, CELL) == 0
        claim = tracking.claim_cell(experiment_id, CELL, "mine", {tracking.TAG_CELL: CELL})
        assert (claim.won, claim.run_id, claim.holder) == (False, held, f"{tracking.HOST}:{holder.pid}")
        lost = MlflowClient().search_runs([experiment_id], f"tags.`{tracking.TAG_CELL}` = '{CELL}'", run_view_type=ViewType.DELETED_ONLY)
        assert [r.info.run_name for r in lost] == ["mine"]  # the losing claim's run is deleted, not left in the table
    finally:
        holder.kill()
        holder.wait()
    assert tracking.close_stale_runs(experiment_id, CELL) == 2  # its cell run and fold run
    folds = MlflowClient().search_runs([experiment_id], f"tags.mlflow.parentRunId = '{held}'")
    assert status(held) == "KILLED" and [f.info.status for f in folds] == ["KILLED"]
    claim = tracking.claim_cell(experiment_id, CELL, "mine", {tracking.TAG_CELL: CELL})
    assert claim.won and status(claim.run_id) == "RUNNING"
    assert MlflowClient().get_run(claim.run_id).data.tags[tracking.TAG_CLAIM_PID] == str(os.getpid())


@pytest.mark.parametrize(("age", "stale_after", "stale"), [(10, None, False), (400, None, True), (400, "1000", False), (10, "5", True)])
def test_claims_from_other_hosts_go_stale_by_heartbeat(
    experiment_id: str, monkeypatch: pytest.MonkeyPatch, age: float, stale_after: str | None, stale: bool
) -> None:
    if stale_after:
        monkeypatch.setenv(tracking.STALE_AFTER_ENV, stale_after)
    held = rival(experiment_id, "another-host", 1, time.time() - age)
    assert tracking.close_stale_runs(experiment_id, CELL) == (2 if stale else 0)
    assert status(held) == ("KILLED" if stale else "RUNNING")
    assert tracking.claim_cell(experiment_id, CELL, "mine", {tracking.TAG_CELL: CELL}).won == stale


def test_a_finished_cell_is_never_claimed_again(experiment_id: str) -> None:
    done = rival(experiment_id, "another-host", 1, 0.0, status="FINISHED")
    claim = tracking.claim_cell(experiment_id, CELL, "mine", {tracking.TAG_CELL: CELL})
    assert (claim.won, claim.run_id, claim.finished) == (False, done, True)


def test_the_heartbeat_keeps_a_claim_fresh_while_it_is_held(experiment_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    claim = tracking.claim_cell(experiment_id, CELL, "mine", {tracking.TAG_CELL: CELL})
    first = float(MlflowClient().get_run(claim.run_id).data.tags[tracking.TAG_HEARTBEAT])
    with tracking.heartbeat(claim.run_id, every=0.05):
        time.sleep(0.5)
        assert tracking.close_stale_runs(experiment_id, CELL) == 0  # held by this very process: not stale
    assert float(MlflowClient().get_run(claim.run_id).data.tags[tracking.TAG_HEARTBEAT]) > first
    assert tracking.close_stale_runs(experiment_id, CELL) == 1  # no longer held, and this process does not train it


CLAIMER = """
import sys, time
from pathlib import Path
import mlflow
from colorbench import tracking
uri, experiment_id, folder, name = sys.argv[1:]
mlflow.set_tracking_uri(uri)
(Path(folder) / f"ready-{name}").touch()
while not (Path(folder) / "go").exists():
    time.sleep(0.001)
claim = tracking.claim_cell(experiment_id, "race", name, {tracking.TAG_CELL: "race"})
print("won" if claim.won else "lost", flush=True)
time.sleep(max(0.0, float((Path(folder) / "until").read_text()) - time.time()))  # stay alive (a live claim) until every claimer is done
"""


@pytest.mark.processes  # worker processes: run with `pytest -m processes`, kept out of the 10-minute suite
def test_of_many_simultaneous_claimers_exactly_one_wins(experiment_id: str, tracking_uri: str, tmp_path: Path) -> None:
    n = 3
    claimers = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, tracking_uri, experiment_id, str(tmp_path), str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "until").write_text(str(time.time() + 3))
    (tmp_path / "go").touch()
    outcomes = sorted(c.communicate(timeout=120)[0].strip() for c in claimers)
    assert outcomes == ["lost"] * (n - 1) + ["won"]
    mlflow.set_tracking_uri(tracking_uri)
    assert len(MlflowClient().search_runs([experiment_id], f"tags.`{tracking.TAG_CELL}` = 'race'")) == 1
