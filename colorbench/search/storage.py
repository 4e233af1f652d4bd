"""Optuna storages (a database with trial heartbeats, or a journal file), without the training stack: what `search` and `report` share."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError

from colorbench import tracking
from colorbench.errors import ConfigError

USER_ATTR_RUN = "mlflow_run_id"  # an Optuna trial's user attribute: the id of its MLflow run
OBJECTIVES_ATTR = "objective_metric"  # study user attribute: the objective's metric, or the list of metrics of several
USER_ATTR_RESUMES = "resumes_mlflow_run"  # an enqueued trial's user attribute: the interrupted trial run it continues
JOURNAL_PREFIX = "journal:"


def default_storage(tracking_uri: str, shared: bool) -> str:
    """Beside the MLflow SQLite file (else in the working directory): `optuna.db`, or a journal file when trials run in other
    processes (`shared`: an executor other than `local`).

    SQLite under concurrent writers fails with "database is locked"; Optuna's journal file takes file locks instead.
    An existing journal file keeps being used, so a study started on a pool resumes in one process.
    """
    db = tracking.sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path(".")
    journal = folder / "optuna-journal.log"
    if shared or journal.exists():
        return f"{JOURNAL_PREFIX}{journal}"
    return f"sqlite:///{folder / 'optuna.db'}"


def shown(storage: str) -> str:
    """The storage URL with any password hidden (safe to print and to tag runs with)."""
    if storage.startswith(JOURNAL_PREFIX):
        return storage
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage


def rdb_storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """An RDB storage. It records no trial heartbeats (Optuna's only beat inside `Study.optimize`): a trial whose process was killed
    is failed by the next search, which sees its MLflow run's heartbeat stop (`optimize.enqueue_interrupted`).

    Machines starting together on an empty database race to create Optuna's tables; the loser retries and finds them.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None

    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)

    for attempt in range(attempts - 1):
        try:
            return connect()
        except (IntegrityError, ProgrammingError):
            time.sleep(1 + attempt)
    return connect()


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """`journal:PATH` (or a `.log` path) -> a journal file; `dialect://...` -> an RDB storage."""
    try:
        if storage.startswith(JOURNAL_PREFIX) or storage.endswith(".log"):
            path = Path(storage.removeprefix(JOURNAL_PREFIX)).expanduser()
            if not path.parent.is_dir():
                raise ConfigError(f"folder {path.parent} of the Optuna journal file does not exist; create it or pass another --storage")
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if "://" not in storage:
            raise ConfigError(f"--storage {storage!r} is neither a database URL (sqlite:///optuna.db, postgresql://...) nor journal:FILE")
        return rdb_storage(storage)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - missing driver, unreachable server, bad URL: one line before any training
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot open Optuna storage {shown(storage)}: {first}") from None


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objective metrics, in order (`objective_k` where none is recorded)."""
    recorded = study.user_attrs.get(OBJECTIVES_ATTR)
    if isinstance(recorded, list):
        return recorded
    return [recorded] if recorded else [f"objective_{k}" for k in range(len(study.directions))]
