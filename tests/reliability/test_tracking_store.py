"""Scenario 6: an unreachable or read-only tracking store is one clear error before any data is decoded or any run created."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from colorbench import runner
from colorbench.errors import ConfigError
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if run_grid gets as far as decoding data."""

    def forbidden(*args: object) -> None:
        raise AssertionError("data was prepared although the store is unusable")

    monkeypatch.setattr(runner, "prepare_data", forbidden)


def run_fails(grid: dict, uri: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_grid(parse_experiment(grid), uri)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_an_unreachable_server_fails_in_seconds(tiny_grid: dict, tracking_uri: str, no_training: None) -> None:
    started = time.monotonic()
    run_fails(tiny_grid, "http://127.0.0.1:9", "cannot use MLflow tracking store http://127.0.0.1:9: ")  # MLflow alone retries ~4 min
    assert time.monotonic() - started < 30


def test_a_store_opened_read_only_fails_before_training(tiny_grid: dict, tracking_uri: str, tmp_path: Path, no_training: None) -> None:
    experiment_id = MlflowClient(tracking_uri).create_experiment(tiny_grid["experiment"])  # so reading works and only writing fails
    read_only = f"sqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true"
    run_fails(tiny_grid, read_only, "attempt to write a readonly database")
    assert MlflowClient(tracking_uri).search_runs([experiment_id]) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions; the read-only URI test covers this as root")
def test_a_store_without_write_permission_fails_before_training(tiny_grid: dict, tracking_uri: str, tmp_path: Path, no_training: None) -> None:
    MlflowClient(tracking_uri).create_experiment(tiny_grid["experiment"])
    (tmp_path / "mlflow.db").chmod(0o444)
    try:
        run_fails(tiny_grid, tracking_uri, "attempt to write a readonly database")
    finally:
        (tmp_path / "mlflow.db").chmod(0o644)


def test_an_unwritable_artifact_folder_fails_before_training(tiny_grid: dict, tracking_uri: str, no_training: None) -> None:
    MlflowClient(tracking_uri).create_experiment(tiny_grid["experiment"], artifact_location="file:///proc/colorbench-artifacts")
    run_fails(tiny_grid, tracking_uri, "MLflow artifact folder /proc/colorbench-artifacts is not writable")
