"""Everything MLflow: the store, experiments, cell (parent) and fold (child) runs, resume bookkeeping, cell claims."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
import requests
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from sqlalchemy.exc import OperationalError

try:
    import fcntl
except ImportError:  # Windows: claims fall back to the settle delay
    fcntl = None

import colorbench
from colorbench.errors import ColorbenchError, ConfigError, StoreError, TrialPruned
from colorbench.plugins import loaded_plugins

if TYPE_CHECKING:
    from colorbench.config import Cell

TAG_ROLE = "colorbench.role"  # "cell" or "trial" (parent run), "fold" (child run)
PARENT_ROLES = ("cell", "trial")  # runs whose children are fold runs: a grid cell, a search trial
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: a fold run's cell or trial run
TAG_CELL = "colorbench.cell_id"
TAG_FOLD = "colorbench.fold"
TAG_DRAW = "colorbench.draw"  # a fold run's redrawn partition (0 for splitters drawn once)
TAG_REPEAT = "colorbench.repeat"  # a fold run's training repeat (training seed = train.seed + repeat)
TAG_REPLICATE = "colorbench.replicate"  # every run of a cell: its replicate (an independent data set, data seed = seed + replicate)
TAG_DEPLOYED = "colorbench.deployed"  # a cell or trial run's deployed child run (best validation metric, or the refit child)
TAG_FAILURE = "colorbench.failure"
TAG_VERSION = "colorbench.version"
TAG_COMMIT = "colorbench.git_commit"
TAG_FINGERPRINT = "colorbench.data_fingerprint"
TAG_PLUGINS = "colorbench.plugins"  # plugin modules loaded when the run started, comma-separated (empty: none)
TAG_OVERRIDES = "colorbench.overrides"  # the command line's KEY=VALUE overrides, a JSON list in order (absent: none given)
TAG_STUDY = "colorbench.study"  # search trials (and their fold runs): the Optuna study
TAG_TRIAL = "colorbench.trial"  # the Optuna trial number
TAG_STATE = "colorbench.trial_state"  # COMPLETE, PRUNED or FAIL, as in Optuna
TAG_STORAGE = "colorbench.optuna_storage"  # password hidden
TAG_SAMPLED = "colorbench.sampled"  # the trial's sampled values, `key=value` separated by spaces
TAG_PARETO = "colorbench.pareto"  # a multi-objective study's finished trials: "true" on the Pareto front, else "false"
TAG_CLAIM_HOST = "colorbench.claim.host"  # a cell run's claim: the host and pid of the process training it
TAG_CLAIM_PID = "colorbench.claim.pid"
TAG_HEARTBEAT = "colorbench.heartbeat"  # unix time, refreshed every HEARTBEAT_SECONDS while the claim is held
TAG_OPENED = "colorbench.opened_by"  # experiment tag written before any training: proves the store takes writes
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own: what kind of experiment this is (its UI's GenAI / model training)
EXPERIMENT_KIND = "custom_model_development"
STATE_ARTIFACTS = "training_state"  # a fold run's artifact folder holding its saved training state when the artifact store is remote
CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag: what a dataset input was used for
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
DEFAULT_DB = "mlflow.db"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_ENV = "COLORBENCH_STALE_AFTER"  # seconds without a heartbeat before a RUNNING claim counts as abandoned
DEFAULT_STALE_AFTER = 300.0
CLAIM_SETTLE_SECONDS = 2.0  # stores without a lock (servers): wait for earlier claims' writes to land before comparing
PREFLIGHT_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
HOST = socket.gethostname()
_held: set[str] = set()  # cell runs this process is training now


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


def ui_hint(uri: str, experiment: str) -> str:
    """How to see experiment `experiment` of store `uri` in the browser: the `mlflow ui` command and its training-runs URL."""
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    where = runs_url(found.experiment_id) if found else UI_ADDRESS
    return f"mlflow ui --backend-store-uri {uri}, then open {where} (the \"Model training\" runs, nested by cell)"


def log_datasets(run_id: str, source: dict[str, Any], fingerprint: str, contexts: tuple[str, ...] = ("training", "validation", "test")) -> None:
    """Record the data on run `run_id` as MLflow dataset inputs, one per context (`<source>-<context>`, digest: the data
    fingerprint), so the UI's Dataset column and filter show it; `source` (the data config) is the dataset's source."""
    name = str(source.get("source", "data"))
    inputs = [
        DatasetInput(MetaDataset(CodeDatasetSource(source), name=f"{name}-{context}", digest=fingerprint)._to_mlflow_entity(), [InputTag(CONTEXT_TAG, context)])
        for context in contexts
    ]
    with store_lock():
        try:
            MlflowClient().log_inputs(run_id, datasets=inputs)
        except Exception as err:  # a lock-free store (server, PostgreSQL) let a concurrent run insert it first
            if not is_duplicate(err):
                raise
            MlflowClient().log_inputs(run_id, datasets=inputs)  # the dataset rows exist now; this only links them to the run


def is_duplicate(error: BaseException) -> bool:
    """Whether `error` is the store refusing a row another process inserted between MLflow's check and its insert (MLflow wraps the
    database's error, so its text is what is left: SQLite's and PostgreSQL's)."""
    text = str(error)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text


def cell_runs(experiment_id: str, status: str | None = None) -> pd.DataFrame:
    """The experiment's cell (parent) runs, optionally of one status."""
    query = f"tags.`{TAG_ROLE}` = 'cell'"
    if status:
        query += f" and attributes.status = '{status}'"
    return mlflow.search_runs([experiment_id], filter_string=query, max_results=50000)


def stale_after() -> float:
    """Seconds without a heartbeat after which a RUNNING claim is abandoned: $COLORBENCH_STALE_AFTER, else 300."""
    value = os.environ.get(STALE_AFTER_ENV, "")
    try:
        return float(value) if value else DEFAULT_STALE_AFTER
    except ValueError:
        raise ConfigError(f"{STALE_AFTER_ENV} must be a number of seconds, got {value!r}") from None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (elsewhere than POSIX: assumed alive, the heartbeat decides)."""
    if pid <= 0 or os.name != "posix":
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def holder(run: Run) -> str:
    """`host:pid` of the process that claimed a cell run."""
    return f"{run.data.tags.get(TAG_CLAIM_HOST, '?')}:{run.data.tags.get(TAG_CLAIM_PID, '?')}"


def is_stale(run: Run, now: float, timeout: float) -> bool:
    """Whether a RUNNING cell run's process is gone: no heartbeat for `timeout` seconds, or claimed on this host by a pid that has
    ended (or by this process, which is not training it). Runs this process is training are never stale."""
    if run.info.run_id in _held:
        return False
    tags = run.data.tags
    try:
        pid, beat = int(tags[TAG_CLAIM_PID]), float(tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        return True  # no claim: left by a colorbench from before claims
    if now - beat > timeout:
        return True
    return tags.get(TAG_CLAIM_HOST) == HOST and (pid == os.getpid() or not pid_alive(pid))


def cell_parent_runs(experiment_id: str, cell_id: str) -> list[Run]:
    """Every (not deleted) cell run of `cell_id`, whatever its status."""
    return MlflowClient().search_runs([experiment_id], filter_string=_cell_runs_query(cell_id), max_results=10000)


def finished_cell_runs(cell_id: str) -> list[Run]:
    """The FINISHED cell runs of `cell_id` in every experiment of the store, newest first."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"{_cell_runs_query(cell_id)} and attributes.status = 'FINISHED'"
    return client.search_runs(experiments, filter_string=query, max_results=1000, order_by=["attributes.start_time DESC"]) if experiments else []


def _cell_runs_query(cell_id: str) -> str:
    return f"tags.`{TAG_CELL}` = '{cell_id}' and tags.`{TAG_ROLE}` = 'cell'"


def close_stale_runs(experiment_id: str, cell_id: str, keep: Callable[[str], bool] = lambda run_id: False) -> int:
    """Close the RUNNING runs of `cell_id` whose process is gone (`is_stale`) as KILLED, fold runs with their cell run; return how
    many. The runs of a live process (another `colorbench run` training the cell) are left alone, and so are cell runs for which
    `keep(run id)` holds (they can resume, `claim_cell`) with their fold runs."""
    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_CELL}` = '{cell_id}'", max_results=10000)
    now, timeout = time.time(), stale_after()
    cells = {r.info.run_id: r for r in runs if r.data.tags.get(TAG_ROLE) == "cell"}
    live = {i for i, r in cells.items() if r.info.status == "RUNNING" and (not is_stale(r, now, timeout) or keep(i))}
    closed = 0
    for run in runs:
        owner = cells.get(run.info.run_id) or cells.get(run.data.tags.get("mlflow.parentRunId", ""))  # the cell run itself, or a fold's
        if run.info.status != "RUNNING" or owner is None or owner.info.run_id in live:
            continue
        close_run(run.info.run_id, "KILLED", f"interrupted: its process ({holder(owner)}) ended before the run finished")
        closed += 1
    return closed


@dataclass(frozen=True)
class Claim:
    """Who trains a cell: this process (`won`; `run_id` is its new RUNNING cell run) or another one (its run, `holder` host:pid)."""

    won: bool
    run_id: str
    holder: str = ""
    finished: bool = False
    resumed: bool = False  # `run_id` is an interrupted cell run taken over to continue its folds


def claim_tags() -> dict[str, str]:
    """The tags that say this process holds a cell run: host, pid and a fresh heartbeat."""
    return {TAG_CLAIM_HOST: HOST, TAG_CLAIM_PID: str(os.getpid()), TAG_HEARTBEAT: str(time.time())}


def orphan(rivals: list[Run], resumable: Callable[[str], bool]) -> Run | None:
    """The latest interrupted cell run (RUNNING with its process gone, or KILLED) that `resumable` accepts, unless the cell
    FINISHED or a live process holds it."""
    now, timeout = time.time(), stale_after()
    if any(r.info.status == "FINISHED" or (r.info.status == "RUNNING" and not is_stale(r, now, timeout)) for r in rivals):
        return None
    left = [r for r in rivals if r.info.status in ("RUNNING", "KILLED") and resumable(r.info.run_id)]
    return max(left, key=lambda r: (r.info.start_time, r.info.run_id), default=None)


def take_over(run: Run, locked: bool) -> bool:
    """Claim an interrupted cell run for this process: RUNNING again, failure tag gone, claim tags ours. On stores without a lock,
    after CLAIM_SETTLE_SECONDS the claim must still be ours (else another process took it: False)."""
    client, run_id = MlflowClient(), run.info.run_id
    client.update_run(run_id, status="RUNNING")
    if TAG_FAILURE in run.data.tags:
        client.delete_tag(run_id, TAG_FAILURE)
    mine = claim_tags()
    for key, value in mine.items():
        client.set_tag(run_id, key, value)
    if not locked:
        time.sleep(CLAIM_SETTLE_SECONDS)
    return client.get_run(run_id).data.tags.get(TAG_CLAIM_PID) == mine[TAG_CLAIM_PID]


def claim_cell(experiment_id: str, cell_id: str, name: str, tags: dict[str, str], resumable: Callable[[str], bool] | None = None) -> Claim:
    """Claim a cell: create its cell run (RUNNING, tagged with host, pid and heartbeat), then keep it only if no other process holds
    the cell. The claim is lost (and its run deleted) if a cell run of `cell_id` FINISHED, or a live RUNNING one (not `is_stale`) came
    first: on SQLite, create and read happen under `store_lock`, so every run seen came first and exactly one claimer wins; on other
    stores the claimer waits CLAIM_SETTLE_SECONDS before reading and the earliest run by (start time, run id) wins.

    With `resumable`, an interrupted cell run it accepts (`orphan`) is taken over instead of creating a new one (`take_over`).
    """
    client = MlflowClient()
    with store_lock() as locked:
        found = orphan(cell_parent_runs(experiment_id, cell_id), resumable) if resumable else None
        if found is not None and take_over(found, locked):
            return Claim(True, found.info.run_id, resumed=True)
        own = client.create_run(experiment_id, tags=resolve_tags({**tags, TAG_ROLE: "cell", **claim_tags()}), run_name=name)
        if not locked:
            time.sleep(CLAIM_SETTLE_SECONDS)
        rivals = [r for r in cell_parent_runs(experiment_id, cell_id) if r.info.run_id != own.info.run_id]
    now, timeout = time.time(), stale_after()
    order = (own.info.start_time, own.info.run_id)
    running = [r for r in rivals if r.info.status == "RUNNING" and (locked or (r.info.start_time, r.info.run_id) < order)]
    first = [r for r in rivals if r.info.status == "FINISHED"] or sorted(
        (r for r in running if not is_stale(r, now, timeout)), key=lambda r: (r.info.start_time, r.info.run_id)
    )
    if not first:
        return Claim(True, own.info.run_id)
    client.delete_run(own.info.run_id)
    return Claim(False, first[0].info.run_id, holder(first[0]), first[0].info.status == "FINISHED")


@contextmanager
def heartbeat(run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Hold a claimed cell run for the block: a daemon thread refreshes its heartbeat tag every `every` seconds."""
    client, stop = MlflowClient(), threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))
            except Exception as err:  # noqa: BLE001 - a missed beat is retried; a claim goes stale only after stale_after() s without one
                logging.getLogger(__name__).debug("heartbeat of run %s failed: %s", run_id, err)

    thread = threading.Thread(target=beat, name=f"colorbench-heartbeat-{run_id[:8]}", daemon=True)
    _held.add(run_id)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        _held.discard(run_id)


def git_commit() -> str:
    """The working directory's git commit, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def cell_tags(cell: Cell, fingerprint: str, overrides: Sequence[str] = ()) -> dict[str, str]:
    """The tags every run of a cell carries (its cell or trial run and each fold run): id, version, commit, data, plugins, replicate
    and the command line's `overrides` (TAG_OVERRIDES, only when some were given)."""
    return {
        TAG_CELL: cell.id,
        TAG_VERSION: colorbench.__version__,
        TAG_COMMIT: git_commit(),
        TAG_FINGERPRINT: fingerprint,
        TAG_PLUGINS: ",".join(loaded_plugins()),
        TAG_REPLICATE: str(cell.replicate),
        **({TAG_OVERRIDES: json.dumps(list(overrides))} if overrides else {}),
    }


def fold_tags(parent_tags: dict[str, str], fold: int, draw: int, repeat: int, parent_run_id: str, role: str = "fold") -> dict[str, str]:
    """A child run's tags: its cell or trial run's, with role `fold` (or `refit`), the fold index, its partition's draw, its training
    repeat and the parent run."""
    return {**parent_tags, TAG_ROLE: role, TAG_FOLD: str(fold), TAG_DRAW: str(draw), TAG_REPEAT: str(repeat), TAG_PARENT: parent_run_id}


def fold_run(experiment_id: str, parent_run_id: str, fold: int, repeat: int) -> str | None:
    """The id of the latest fold run of (`fold`, `repeat`) under the cell or trial run `parent_run_id`, if there is one."""
    query = f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_FOLD}` = '{fold}' and tags.`{TAG_ROLE}` = 'fold'"
    found = [r for r in MlflowClient().search_runs([experiment_id], filter_string=query, max_results=100) if r.data.tags.get(TAG_REPEAT) == str(repeat)]
    return max(found, key=lambda r: r.info.start_time).info.run_id if found else None


def _off_this_machine(artifact_uri: str) -> bool:
    return urlparse(artifact_uri).scheme not in ("", "file")


def remote_artifacts(run_id: str) -> bool:
    """Whether run `run_id` keeps its artifacts off this machine's file system (a server's `mlflow-artifacts:`, S3, ...)."""
    return _off_this_machine(MlflowClient().get_run(run_id).info.artifact_uri)


def upload_state(run_id: str, path: Path) -> None:
    """Log the training state file `path` as `training_state/<its name>` of run `run_id`, replacing the previous one."""
    MlflowClient().log_artifact(run_id, str(path), STATE_ARTIFACTS)


def download_state(run_id: str, path: Path) -> bool:
    """Fetch run `run_id`'s `training_state/<name of path>` to `path` (atomically); False when the run has none."""
    names = {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, STATE_ARTIFACTS)}
    if path.name not in names:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=path.parent) as tmp:
        os.replace(download(run_id, f"{STATE_ARTIFACTS}/{path.name}", Path(tmp)), path)
    return True


def state_runs(parent_run_id: str) -> list[Run]:
    """The child runs of the cell or trial run `parent_run_id` that keep a training state as an artifact."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'", max_results=10_000)
    return [r for r in children if _off_this_machine(r.info.artifact_uri) and client.list_artifacts(r.info.run_id, STATE_ARTIFACTS)]


def drop_remote_states(parent_run_id: str) -> None:
    """Delete the training-state artifacts of the child runs of `parent_run_id` (its cell or trial ended for good)."""
    for run in state_runs(parent_run_id):
        get_artifact_repository(run.info.artifact_uri, tracking_uri=mlflow.get_tracking_uri()).delete_artifacts(STATE_ARTIFACTS)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which run `run_id` logged metric `key`."""
    return {m.step for m in MlflowClient().get_metric_history(run_id, key)}


def plugins_of(tags: dict[str, str]) -> list[str]:
    """The plugin modules a run recorded (TAG_PLUGINS)."""
    return [name for name in tags.get(TAG_PLUGINS, "").split(",") if name]


def failure_reason(error: BaseException) -> str:
    """`Type: message` of the exception that ended a run (tagged as TAG_FAILURE)."""
    return f"{type(error).__name__}: {str(error) or 'the process was stopped'}"


def status_for(error: BaseException | None) -> str:
    """MLflow run status for how a block ended: KILLED when stopped (Ctrl-C, SIGTERM, pruned, the store failed), else FAILED."""
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    if isinstance(error, (KeyboardInterrupt, SystemExit, TrialPruned, StoreError)) or store_failed(error):
        return RunStatus.to_string(RunStatus.KILLED)
    return RunStatus.to_string(RunStatus.FAILED)


def close_run(run_id: str, status: str, reason: str | None = None) -> None:
    """End run `run_id` with `status` (FINISHED, FAILED, KILLED), tagging `reason` (TAG_FAILURE) first. When it is the active
    run, it stops being active even if the store fails on the way."""
    active = mlflow.active_run()
    try:
        if reason:
            MlflowClient().set_tag(run_id, TAG_FAILURE, reason[:5000])
    finally:
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)  # pops the active run before it writes
        else:
            MlflowClient().set_terminated(run_id, status)


def create_run(experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """A new RUNNING run (not the active one) with `tags` and `params`; returns its id."""
    client = MlflowClient()
    run_id = client.create_run(experiment_id, tags=resolve_tags(tags), run_name=name).info.run_id
    log_params(run_id, params)
    return run_id


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log `params` on run `run_id` (which need not be active)."""
    MlflowClient().log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


@contextmanager
def run(name: str, tags: dict[str, str], params: dict[str, Any], run_id: str | None = None) -> Iterator[str]:
    """Start a run (or resume `run_id`, e.g. a cell run at its end) as the active run and end it FINISHED, FAILED (reason tagged) or
    KILLED (Ctrl-C, SIGTERM, a failed store) as the block ends; yields its id."""
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, tags=tags)
    if run_id is not None and TAG_FAILURE in active.data.tags:  # an interrupted run continues: it has not failed (yet)
        MlflowClient().delete_tag(run_id, TAG_FAILURE)
    if params:
        mlflow.log_params(params)
    try:
        yield active.info.run_id
    except BaseException as err:
        close_run(active.info.run_id, status_for(err), failure_reason(err))
        raise
    mlflow.end_run(status_for(None))


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
