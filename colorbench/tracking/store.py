"""The tracking store: its URI, the lock beside a SQLite file, opening an experiment, and a failing store as one error line."""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import OperationalError

try:
    import fcntl
except ImportError:  # Windows: claims fall back to the settle delay
    fcntl = None

from colorbench.errors import ColorbenchError, ConfigError, StoreError

TAG_OPENED = "colorbench.opened_by"  # experiment tag written before any training: proves the store takes writes
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own: what kind of experiment this is (its UI's GenAI / model training)
EXPERIMENT_KIND = "custom_model_development"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
DEFAULT_DB = "mlflow.db"
PREFLIGHT_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
HOST = socket.gethostname()


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:"):
        return None
    path = urlparse(uri).path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    return Path(path.removeprefix("file:"))  # sqlite:///file:/abs.db?mode=ro&uri=true -> /abs.db


@contextmanager
def preflight() -> Iterator[None]:
    """Check a store quickly: one HTTP retry instead of MLflow's minutes of them (unless set by the user), no SQLAlchemy tracebacks."""
    added = {key: value for key, value in PREFLIGHT_HTTP.items() if key not in os.environ}
    os.environ.update(added)
    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    db_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        db_log.setLevel(level)


@contextmanager
def store_lock() -> Iterator[bool]:
    """Hold an exclusive file lock beside the current SQLite store (yields True), serialising claims and experiment creation
    between processes; other stores have no lock (yields False)."""
    db = sqlite_path(mlflow.get_tracking_uri())
    if db is None or fcntl is None:
        yield False
        return
    lock = db.with_name(db.name + ".lock")
    try:
        handle = open(lock, "a")  # noqa: SIM115 - held for the whole block
    except OSError as err:
        raise ConfigError(f"cannot create {lock} ({err.strerror}): the tracking store's folder must be writable") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield True


def open_store(tracking_uri: str | None) -> None:
    """Point MLflow at the store to read it (a missing SQLite file is an error, not a new empty store)."""
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no MLflow store at {db}; run `colorbench run` first or pass --tracking-uri")
    mlflow.set_tracking_uri(uri)


def check_artifact_folder(location: str) -> None:
    """A local artifact folder must be writable (a server's artifact store answers for itself)."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return
    folder = Path(parsed.path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ConfigError(f"MLflow artifact folder {folder} is not writable ({err.strerror}); fix its permissions or pass another --tracking-uri") from None


def open_experiment(uri: str, name: str) -> str:
    """Point MLflow at `uri` and return the id of experiment `name`, creating it (artifacts beside a SQLite file).

    Before any training: the store must answer within seconds, take a write (an experiment tag) and have a writable local artifact
    folder; any failure is one ConfigError line.
    """
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise ConfigError(f"tracking store folder {db.parent} does not exist; create it or pass another --tracking-uri")
    mlflow.set_tracking_uri(uri)
    try:
        with preflight(), store_lock():
            found = mlflow.get_experiment_by_name(name)
            if found is None:
                location = (db.resolve().parent / "mlartifacts" / name).as_uri() if db is not None else None
                try:
                    mlflow.create_experiment(name, artifact_location=location)
                except MlflowException:  # a concurrent process created it first
                    pass
                found = mlflow.get_experiment_by_name(name)
            if found.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment {name!r} is deleted in {uri}; restore it in the UI or rename the experiment")
            client = MlflowClient()
            client.set_experiment_tag(found.experiment_id, TAG_OPENED, f"{HOST}:{os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
            client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            check_artifact_folder(found.artifact_location)
            mlflow.set_experiment(experiment_id=found.experiment_id)
        return found.experiment_id
    except ColorbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any store failure (unreachable server, read-only file, ...) stops before training
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot use MLflow tracking store {uri}: {first}") from None


def runs_url(experiment_id: str, address: str = UI_ADDRESS) -> str:
    """The experiment's training-runs view in `mlflow ui` (at its default address), in the UI's "Model training" mode (MLflow 3's
    `workflowType` switch, which otherwise may open on GenAI)."""
    return f"{address}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_address(uri: str) -> str:
    """Where store `uri`'s runs are seen in a browser: the server itself for an http(s) URI, else where `mlflow ui` serves it."""
    return uri.rstrip("/") if urlparse(uri).scheme in ("http", "https") else UI_ADDRESS


def run_url(experiment_id: str, run_id: str, address: str = UI_ADDRESS, artifact: str | None = None) -> str:
    """A run's page in the MLflow UI at `address`; with `artifact`, that artifact shown in the run's artifact view."""
    return f"{address}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifactPath/{artifact}" if artifact else "")


def ui_hint(uri: str, experiment: str) -> str:
    """How to see experiment `experiment` of store `uri` in the browser: the `mlflow ui` command and its training-runs URL."""
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    where = runs_url(found.experiment_id) if found else UI_ADDRESS
    return f"mlflow ui --backend-store-uri {uri}, then open {where} (the \"Model training\" runs, nested by cell)"


def is_duplicate(error: BaseException) -> bool:
    """Whether `error` is the store refusing a row another process inserted between MLflow's check and its insert (MLflow wraps the
    database's error, so its text is what is left: SQLite's and PostgreSQL's)."""
    text = str(error)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text


def absolute_uri(uri: str) -> str:
    """A relative SQLite URI made absolute, so workers with another working directory reach the same file."""
    db = sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def store_failed(error: BaseException) -> bool:
    """Whether `error` is the tracking store failing (a locked or full database, a server that does not answer, a full disk) rather
    than the training."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, (OperationalError, requests.exceptions.ConnectionError)):
        return True
    if isinstance(error, MlflowException):
        return error.error_code == "TEMPORARILY_UNAVAILABLE" or error.message.startswith("API request to ")
    return False


def store_error(uri: str, error: BaseException) -> StoreError:
    """One line naming the failed store, what it said and the fix."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    lowered = text.lower()
    if "full" in lowered or isinstance(error, OSError):
        fix = "free space on its disk"
    elif "locked" in lowered:
        fix = "end the program that holds the database locked (several machines should share an MLflow server, not a SQLite file)"
    elif "api request" in lowered or "connect" in lowered:
        fix = "check that the MLflow server is running and reachable"
    else:
        fix = "check the store"
    return StoreError(
        f"the MLflow tracking store {uri} failed ({first[:300]}): {fix}, then run the same command again to resume; "
        "the interrupted cells are retrained"
    )


@contextmanager
def store_guard(uri: str) -> Iterator[None]:
    """Inside the block, a failure of the tracking store at `uri` becomes one StoreError line (see `store_error`)."""
    try:
        yield
    except ColorbenchError:
        raise
    except Exception as err:
        if not store_failed(err):
            raise
        raise store_error(uri, err) from None
