"""A shared Optuna study on PostgreSQL extended by two `colorbench search` processes at once, and a team `mlflow server`
(on PostgreSQL, artifacts proxied) receiving a grid's runs over HTTP on localhost."""

from __future__ import annotations

import copy
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
import servers
import yaml
from mlflow.tracking import MlflowClient
from racing import log_the_same_dataset_at_once
from test_search import TINY_SEARCH

from colorbench import tracking
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid

pytestmark = pytest.mark.scaleout


def test_two_search_processes_extend_one_postgresql_study(postgres: Callable[[str], str], tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="pip install 'colorbench[postgres]'")
    storage = postgres("optuna")
    search = copy.deepcopy(TINY_SEARCH)
    search["train"]["epochs"] = 1
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search))
    command = [sys.executable, "-m", "colorbench.cli", "search", "search.yaml", "--storage", storage, "--n-trials", "2"]
    machines = [subprocess.Popen([*command, "--tracking-uri", f"sqlite:///{tmp_path / f'mlflow{i}.db'}"], cwd=tmp_path) for i in range(2)]
    assert [m.wait(timeout=600) for m in machines] == [0, 0]
    study = optuna.load_study(study_name="tiny-search", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    trials_per_store = []
    for i in range(2):
        client = MlflowClient(f"sqlite:///{tmp_path / f'mlflow{i}.db'}")
        experiment_id = client.get_experiment_by_name("tiny-search").experiment_id
        trials_per_store.append({int(r.data.tags[tracking.TAG_TRIAL]) for r in client.search_runs([experiment_id], f"tags.`{tracking.TAG_TRIAL}` != ''")})
    assert trials_per_store[0] | trials_per_store[1] == {0, 1, 2, 3} and not trials_per_store[0] & trials_per_store[1]


@pytest.fixture
def mlflow_server(postgres: Callable[[str], str], tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a PostgreSQL backend with proxied artifacts, on 127.0.0.1; yields its URL."""
    pytest.importorskip("psycopg", reason="pip install 'colorbench[postgres]'")
    with servers.mlflow_server(postgres(f"mlflow_{uuid.uuid4().hex[:8]}"), tmp_path / "artifacts", tmp_path / "server.log") as url:  # a database per test
        yield url


def test_grid_logs_to_an_mlflow_server_on_postgresql(mlflow_server: str, tiny_grid: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    outcomes, _ = run_grid(parse_experiment(tiny_grid), mlflow_server)
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    (cell,) = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'cell'")
    assert cell.info.status == "FINISHED" and cell.data.tags[tracking.TAG_CELL] == outcomes[0].cell.id
    assert cell.data.metrics["test_psnr_mean"] == pytest.approx(outcomes[0].metrics["test_psnr_mean"])
    (fold,) = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{cell.info.run_id}'")
    assert "checkpoint.pt" in {a.path for a in client.list_artifacts(fold.info.run_id)}  # artifacts went through the server
    assert not (tmp_path / "mlflow.db").exists()


def test_runs_logging_the_same_new_dataset_through_a_server_at_once_all_get_it(mlflow_server: str) -> None:
    mlflow.set_tracking_uri(mlflow_server)  # no file lock here: the second insert of a racing pair is refused and retried
    assert log_the_same_dataset_at_once(mlflow_server) == []
