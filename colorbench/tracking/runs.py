"""Runs: colorbench's tags, every run query (its filter built by `run_filter`), run writes, artifacts and per-epoch metrics."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from colorbench.errors import ConfigError, StoreError, TrialPruned
from colorbench.plugins import loaded_plugins
from colorbench.tracking.store import is_duplicate, store_failed, store_lock
from colorbench.version import __version__

if TYPE_CHECKING:
    from colorbench.config import Cell


TAG_ROLE = "colorbench.role"  # "cell" or "trial" (parent run), "fold" (child run), "report" (the experiment's `colorbench report`)
PARENT_ROLES = ("cell", "trial")  # runs whose children are fold runs: a grid cell, a search trial
REPORT_ROLE = "report"
TAG_NOTE = "mlflow.note.content"  # MLflow's own: an experiment's description (markdown), shown above its runs
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: a fold run's cell or trial run
TAG_CELL = "colorbench.cell_id"
TAG_FOLD = "colorbench.fold"
TAG_DRAW = "colorbench.draw"  # a fold run's redrawn partition (0 for splitters drawn once)
TAG_REPEAT = "colorbench.repeat"  # a fold run's training repeat (training seed: splitters.training_seed)
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
TAG_ORDER = "colorbench.order"  # a grid cell run's position in its grid file's order of cells (0 = first): the default report baseline
TAG_BASELINE = "colorbench.report.baseline"  # experiment tag: the grid file's `report.baseline` (cell id prefix; empty: none named)
TAG_CLAIM_HOST = "colorbench.claim.host"  # a cell run's claim: the host and pid of the process training it
TAG_CLAIM_PID = "colorbench.claim.pid"
TAG_HEARTBEAT = "colorbench.heartbeat"  # unix time, refreshed every HEARTBEAT_SECONDS while the claim is held
STATE_ARTIFACTS = "training_state"  # a fold run's artifact folder holding its saved training state when the artifact store is remote
CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag: what a dataset input was used for


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


Status = str | tuple[str, ...] | None  # a run status (RUNNING, FINISHED, FAILED, KILLED), one of several, or any


def run_filter(tags: Mapping[str, object], status: str | None = None) -> str:
    """The MLflow filter string of runs whose `tags` have these values (and, given, this status): every run query's filter."""
    parts = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    return " and ".join(parts + ([f"attributes.status = '{status}'"] if status else []))


def find_runs(
    experiment_ids: list[str], tags: Mapping[str, object], status: Status = None, max_results: int = 10_000, order_by: list[str] | None = None
) -> list[Run]:
    """The (not deleted) runs of `experiment_ids` with these tag values and status, or any of several statuses (one query each: MLflow
    filters a status by equality only) (`run_filter`)."""
    if not experiment_ids:
        return []
    if isinstance(status, tuple):
        return [run for one in status for run in find_runs(experiment_ids, tags, one, max_results, order_by)]
    return MlflowClient().search_runs(experiment_ids, filter_string=run_filter(tags, status), max_results=max_results, order_by=order_by)


def experiment_id(name: str) -> str:
    """The id of experiment `name`; a ConfigError listing the existing experiments otherwise."""
    found = mlflow.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        existing = ", ".join(sorted(e.name for e in mlflow.search_experiments())) or "none"
        raise ConfigError(f"no MLflow experiment {name!r} in {mlflow.get_tracking_uri()}; existing experiments: {existing}")
    return found.experiment_id


def experiment_name(experiment_id: str) -> str:
    """The name of experiment `experiment_id`."""
    return MlflowClient().get_experiment(experiment_id).name


def set_experiment_tag(experiment_id: str, key: str, value: str) -> None:
    """Set tag `key` of experiment `experiment_id`."""
    MlflowClient().set_experiment_tag(experiment_id, key, value)


def experiment_tag(experiment_id: str, key: str) -> str | None:
    """Tag `key` of experiment `experiment_id`; None when it is not set."""
    return MlflowClient().get_experiment(experiment_id).tags.get(key)


def experiment_runs(experiment_id: str) -> pd.DataFrame:
    """Every run of an experiment as MLflow's table (params.*, metrics.*, tags.* columns), newest first."""
    return mlflow.search_runs([experiment_id], max_results=50000)


def cell_parent_runs(experiment_id: str, cell_id: str) -> list[Run]:
    """Every (not deleted) cell run of `cell_id`, whatever its status."""
    return find_runs([experiment_id], {TAG_CELL: cell_id, TAG_ROLE: "cell"})


def runs_of_cell(experiment_id: str, cell_id: str) -> list[Run]:
    """Every run tagged with `cell_id`: its cell runs and their fold runs."""
    return find_runs([experiment_id], {TAG_CELL: cell_id})


def finished_cell_runs(cell_id: str, experiment_id: str | None = None) -> list[Run]:
    """The FINISHED cell runs of `cell_id` in experiment `experiment_id` (default: in every experiment of the store), newest first."""
    experiments = [experiment_id] if experiment_id else [e.experiment_id for e in MlflowClient().search_experiments()]
    return find_runs(experiments, {TAG_CELL: cell_id, TAG_ROLE: "cell"}, "FINISHED", max_results=1000, order_by=["attributes.start_time DESC"])


def study_runs(experiment_id: str, study: str, role: str | None = None, status: Status = None) -> list[Run]:
    """The runs of Optuna study `study` (its trial runs with `role` = trial), optionally of one status or of several."""
    return find_runs([experiment_id], {TAG_STUDY: study, **({TAG_ROLE: role} if role else {})}, status)


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
        TAG_VERSION: __version__,
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
    found = [r for r in find_runs([experiment_id], {TAG_PARENT: parent_run_id, TAG_FOLD: fold, TAG_ROLE: "fold"}, max_results=100) if r.data.tags.get(TAG_REPEAT) == str(repeat)]
    return max(found, key=lambda r: r.info.start_time).info.run_id if found else None


def running_fold_runs(experiment_id: str, parent_run_id: str, fold: int, repeat: int) -> list[Run]:
    """The RUNNING fold runs of (`fold`, `repeat`) under the cell or trial run `parent_run_id` (a lost worker's attempts)."""
    return find_runs([experiment_id], {TAG_PARENT: parent_run_id, TAG_FOLD: fold, TAG_REPEAT: repeat}, "RUNNING", max_results=100)


def finished_children(run_id: str, role: str = "fold") -> dict[tuple[int, int], str]:
    """The finished child runs (`fold`, or the `refit`) of a cell or trial run, by (fold index, training repeat)."""
    runs = find_runs([experiment_of(run_id)], {TAG_PARENT: run_id, TAG_ROLE: role}, "FINISHED")
    return {(int(r.data.tags[TAG_FOLD]), int(r.data.tags.get(TAG_REPEAT, 0))): r.info.run_id for r in runs}


def deployed_run(run_id: str) -> str:
    """A fold run id as is; for a cell or search-trial (parent) run, its deployed child (tag `colorbench.deployed`: chosen by
    validation score, or the refit child); a parent run from before that tag: its finished fold with the lowest best_val_loss."""
    run = get_run(run_id)
    if run.data.tags.get(TAG_ROLE) not in PARENT_ROLES:
        return run_id
    if TAG_DEPLOYED in run.data.tags:
        return run.data.tags[TAG_DEPLOYED]
    children = find_runs([run.info.experiment_id], {TAG_PARENT: run_id}, "FINISHED", max_results=1, order_by=["metrics.best_val_loss ASC"])
    if not children:
        raise ConfigError(f"run {run_id} has no finished fold runs to load")
    return children[0].info.run_id


def get_run(run_id: str) -> Run:
    """Run `run_id` as the store has it now."""
    return MlflowClient().get_run(run_id)


def run_tags(run_id: str) -> dict[str, str]:
    """The tags of run `run_id`."""
    return get_run(run_id).data.tags


def experiment_of(run_id: str) -> str:
    """The experiment id of run `run_id`."""
    return get_run(run_id).info.experiment_id


def model_version_run(name: str, version: str) -> str:
    """The run id of registered model `name` version `version`; ConfigError when the registry has none."""
    try:
        return MlflowClient().get_model_version(name, version).run_id
    except MlflowException as err:
        raise ConfigError(f"cannot find registered model {name!r} version {version!r}: {err.message}") from None


def set_tag(run_id: str, key: str, value: str) -> None:
    """Tag run `run_id` (which need not be active)."""
    MlflowClient().set_tag(run_id, key, value)


def log_metric(run_id: str, key: str, value: float, step: int) -> None:
    """Log one metric value at `step` on run `run_id` (which need not be active)."""
    MlflowClient().log_metric(run_id, key, value, step=step)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """Every (step, value) run `run_id` logged for metric `key`."""
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def _off_this_machine(artifact_uri: str) -> bool:
    return urlparse(artifact_uri).scheme not in ("", "file")


def remote_artifacts(run_id: str) -> bool:
    """Whether run `run_id` keeps its artifacts off this machine's file system (a server's `mlflow-artifacts:`, S3, ...)."""
    return _off_this_machine(get_run(run_id).info.artifact_uri)


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
    children = find_runs([experiment_of(parent_run_id)], {TAG_PARENT: parent_run_id})
    return [r for r in children if _off_this_machine(r.info.artifact_uri) and MlflowClient().list_artifacts(r.info.run_id, STATE_ARTIFACTS)]


def drop_remote_states(parent_run_id: str) -> None:
    """Delete the training-state artifacts of the child runs of `parent_run_id` (its cell or trial ended for good)."""
    for run in state_runs(parent_run_id):
        get_artifact_repository(run.info.artifact_uri, tracking_uri=mlflow.get_tracking_uri()).delete_artifacts(STATE_ARTIFACTS)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which run `run_id` logged metric `key`."""
    return {step for step, _ in metric_history(run_id, key)}


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


def report_run(experiment_id: str) -> str:
    """The experiment's report run (role `report`, FINISHED, no children): the newest, created the first time."""
    with store_lock():
        found = find_runs([experiment_id], {TAG_ROLE: REPORT_ROLE}, max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            return found[0].info.run_id
        run_id = create_run(experiment_id, REPORT_ROLE, {TAG_ROLE: REPORT_ROLE}, {})
        close_run(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return run_id


def log_artifacts(run_id: str, files: Iterable[Path]) -> None:
    """Log `files` at the top of run `run_id`'s artifacts (which need not be active), replacing files of the same name."""
    client = MlflowClient()
    for path in files:
        client.log_artifact(run_id, str(path))


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


def log_epoch(record: dict[str, float]) -> None:
    """One epoch's record on the active run, step = epoch."""
    mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))


def log_history(history: list[dict[str, float]]) -> None:
    """Per-epoch metrics, step = epoch."""
    for record in history:
        log_epoch(record)


def download(run_id: str, path: str, dst: Path) -> Path:
    """One artifact of a run, into the folder `dst` (the caller's: MLflow's own default is a temporary folder nobody removes),
    without MLflow's progress bar."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


@contextmanager
def downloaded(run_id: str, path: str) -> Iterator[Path]:
    """One artifact of a run, in a temporary folder removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="colorbench-") as tmp:
        yield download(run_id, path, Path(tmp))


def per_image_mean(run_ids: Sequence[str], folder: Path) -> pd.DataFrame:
    """The fold runs' `test_per_image.csv` (downloaded into `folder`) averaged image by image: one row per test image (the index),
    one column per per-image metric."""
    tables = [pd.read_csv(download(run_id, "test_per_image.csv", folder / run_id)).set_index("image") for run_id in run_ids]
    return sum(tables) / len(tables)


@contextmanager
def artifact_dir() -> Iterator[Path]:
    """A temporary folder whose files are logged as the active run's artifacts when the block ends."""
    with tempfile.TemporaryDirectory(prefix="colorbench-") as tmp:
        yield Path(tmp)
        mlflow.log_artifacts(tmp)
