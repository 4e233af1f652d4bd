"""Resume inside a fold: kill -9 a real `colorbench run` (or `colorbench search`) at epoch 3 of 6, rerun, and the fold continues in
the same runs to the same result as an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from reliability_support import (
    EXPERIMENT,
    Colorbench,
    check_uninterrupted,
    fold_history,
    fold_runs,
    kill_at_epoch,
    killed_grid,
    rerun_resumes,
    runs,
    write_grid,
)

from colorbench import tracking
from colorbench.lifecycle import states
from colorbench.search.storage import USER_ATTR_RUN
from colorbench.tracking import TAG_TRIAL

pytestmark = pytest.mark.processes
EPOCHS = 6


def test_kill_9_at_epoch_3_of_6_then_rerun_resumes_the_fold_to_the_uninterrupted_result(
    tiny_grid: dict, tracking_uri: str, tmp_path: Path, empty_store: Path
) -> None:
    path, cell, interrupted, fold = killed_grid(tiny_grid, tracking_uri, tmp_path, EPOCHS)
    assert 3 <= len(fold_history(tracking_uri, fold.info.run_id)) < EPOCHS
    assert [s.cell_id for s in states.states()].count(cell) == 1  # the fold's saved state

    rerun_resumes(path, tracking_uri, cell, interrupted, fold, EPOCHS)
    assert all(s.cell_id != cell for s in states.states())  # the finished cell's state is gone

    check_uninterrupted(path, cell, tracking_uri, fold.info.run_id, tmp_path, empty_store)  # bit-identical on a CPU, epoch by epoch


def trial_runs(uri: str) -> list:
    return [r for r in runs(uri) if r.data.tags.get(tracking.TAG_ROLE) == "trial"]


def test_kill_9_of_a_search_mid_fold_then_rerun_continues_the_trial_in_its_runs(
    tiny_grid: dict, tracking_uri: str, tmp_path: Path, empty_store: Path
) -> None:
    search = {
        **{k: tiny_grid[k] for k in ("data", "test_fraction")},
        "experiment": EXPERIMENT,  # its study has the same name
        "train": {**tiny_grid["train"], "epochs": EPOCHS},
        "splitter": {"name": "holdout", "val_fraction": 0.3},
        "loss": {"name": "slow-mse", "seconds": 0.2},
        "space": {"train.lr": {"loguniform": [5.0e-4, 2.0e-3]}},
        "objective": {"metric": "val_psnr", "direction": "maximize"},
        "sampler": "random",
        "pruner": "none",
    }
    path = write_grid(tmp_path, search, "search.yaml")
    options = ("--n-trials", "1", "--out", "figures")
    killed = Colorbench.start(path, tracking_uri, "killed", options, verb="search")

    interrupted, fold = kill_at_epoch(killed, tracking_uri, lambda: trial_runs(tracking_uri))
    assert interrupted.info.status == "RUNNING" and 3 <= len(fold_history(tracking_uri, fold.info.run_id)) < EPOCHS

    rerun = Colorbench.start(path, tracking_uri, "rerun", options, verb="search")
    assert rerun.wait() == 0, rerun.stderr
    assert "Continuing 1 interrupted trial" in rerun.stderr
    study = optuna.load_study(study_name=EXPERIMENT, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    first, second = study.trials
    assert (first.state.name, second.state.name, second.params) == ("FAIL", "COMPLETE", first.params)  # the same sampled values
    [resumed] = trial_runs(tracking_uri)
    assert (resumed.info.run_id, resumed.info.status, resumed.data.tags[TAG_TRIAL]) == (interrupted.info.run_id, "FINISHED", "1")
    assert second.user_attrs[USER_ATTR_RUN] == interrupted.info.run_id
    [again] = fold_runs(tracking_uri, resumed.info.run_id)
    assert (again.info.run_id, again.info.status) == (fold.info.run_id, "FINISHED")  # the same fold run, continued
    history = fold_history(tracking_uri, fold.info.run_id)
    assert [step for step, _ in history] == list(range(1, EPOCHS + 1))
    assert all(s.run_id != interrupted.info.run_id for s in states.states())  # the finished trial's state is gone (other tests may leave theirs)

    (tmp_path / "reference").mkdir()
    reference_uri = f"sqlite:///{tmp_path / 'reference' / 'mlflow.db'}"
    shutil.copy(empty_store, tmp_path / "reference" / "mlflow.db")
    reference = Colorbench.start(path, reference_uri, "reference", options, verb="search")  # the same first trial, never interrupted
    assert reference.wait() == 0, reference.stderr
    [whole] = trial_runs(reference_uri)
    assert history == fold_history(reference_uri, fold_runs(reference_uri, whole.info.run_id)[0].info.run_id)
    [uninterrupted] = optuna.load_study(study_name=EXPERIMENT, storage=f"sqlite:///{tmp_path / 'reference' / 'optuna.db'}").trials
    assert uninterrupted.params == second.params and uninterrupted.value == second.value  # the trial's objective, bit for bit
