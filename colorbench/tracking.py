"""Everything MLflow: the store, experiments, cell (parent) and fold (child) runs, resume bookkeeping."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

import colorbench
from colorbench.config import Cell
from colorbench.errors import ColorbenchError, ConfigError, TrialPruned

TAG_ROLE = "colorbench.role"  # "cell" (parent run) or "fold" (child run)
PARENT_ROLES = ("cell", "trial")  # runs whose children are fold runs: a grid cell, a search trial
TAG_CELL = "colorbench.cell_id"
TAG_FOLD = "colorbench.fold"
TAG_FAILURE = "colorbench.failure"
DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:"):
        return None
    return Path(urlparse(uri).path[1:])  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db


def open_experiment(uri: str, name: str) -> str:
    """Point MLflow at `uri` and return the id of experiment `name`, creating it (artifacts beside a SQLite file)."""
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise ConfigError(f"tracking store folder {db.parent} does not exist; create it or pass another --tracking-uri")
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment {name!r} is deleted in {uri}; restore it in the UI or rename the experiment")
            experiment_id = found.experiment_id
        else:
            location = (db.resolve().parent / "mlartifacts" / name).as_uri() if db is not None else None
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id
    except ColorbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any store failure (unreachable server, read-only file, ...) stops before training
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot use MLflow tracking store {uri}: {first}") from None


def cell_runs(experiment_id: str, status: str | None = None) -> pd.DataFrame:
    """The experiment's cell (parent) runs, optionally of one status."""
    query = f"tags.`{TAG_ROLE}` = 'cell'"
    if status:
        query += f" and attributes.status = '{status}'"
    return mlflow.search_runs([experiment_id], filter_string=query, max_results=50000)


def close_stale_runs(experiment_id: str, cell_id: str) -> int:
    """Mark runs of `cell_id` left RUNNING by a crashed process as KILLED; return how many."""
    client = MlflowClient()
    query = f"tags.`{TAG_CELL}` = '{cell_id}' and attributes.status = 'RUNNING'"
    stale = client.search_runs([experiment_id], filter_string=query, max_results=10000)
    for run in stale:
        client.set_tag(run.info.run_id, TAG_FAILURE, "interrupted: the process ended before the run finished")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def git_commit() -> str:
    """The working directory's git commit, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def cell_tags(cell: Cell, fingerprint: str) -> dict[str, str]:
    return {
        TAG_CELL: cell.id,
        "colorbench.version": colorbench.__version__,
        "colorbench.git_commit": git_commit(),
        "colorbench.data_fingerprint": fingerprint,
    }


def status_for(error: BaseException | None) -> str:
    """MLflow run status for how a block ended."""
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    if isinstance(error, (KeyboardInterrupt, SystemExit, TrialPruned)):
        return RunStatus.to_string(RunStatus.KILLED)
    return RunStatus.to_string(RunStatus.FAILED)


@contextmanager
def run(name: str, tags: dict[str, str], params: dict[str, Any], nested: bool = False) -> Iterator[str]:
    """Start a run and end it FINISHED, FAILED (reason tagged) or KILLED (Ctrl-C) as the block ends; yields its id."""
    active = mlflow.start_run(run_name=name, tags=tags, nested=nested)
    mlflow.log_params(params)
    try:
        yield active.info.run_id
    except BaseException as err:
        mlflow.set_tag(TAG_FAILURE, f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run(status_for(err))
        raise
    mlflow.end_run(status_for(None))


def log_history(history: list[dict[str, float]]) -> None:
    """Per-epoch metrics, step = epoch."""
    for record in history:
        step = int(record["epoch"])
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)


def download(run_id: str, path: str, dst: Path | None = None) -> Path:
    """One artifact of a run (into `dst`, else a temporary folder), without MLflow's progress bar."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=None if dst is None else str(dst)))


@contextmanager
def artifact_dir() -> Iterator[Path]:
    """A temporary folder whose files are logged as the active run's artifacts when the block ends."""
    with tempfile.TemporaryDirectory(prefix="colorbench-") as tmp:
        yield Path(tmp)
        mlflow.log_artifacts(tmp)
