"""`colorbench run --executor slurm|ray` on a tiny grid: every cell once in the store (the process pool: tests/test_process_executor.py);
`colorbench search --executor ray|slurm`: every trial trained once, in a Ray worker or a job, sampled when it can start."""

from __future__ import annotations

import copy

import optuna
import pytest
from mlflow.tracking import MlflowClient
from test_process_executor import store_cells
from test_search import TINY_SEARCH, trial_runs

from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.search.optimize import run_search
from colorbench.search.space import parse_search
from colorbench.search.storage import USER_ATTR_RUN, open_storage

pytestmark = pytest.mark.scaleout


def test_slurm_executor_through_submitit_local(tiny_grid: dict, tracking_uri: str, tmp_path) -> None:
    pytest.importorskip("submitit", reason="pip install 'colorbench[slurm]'")
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]  # one job: each starts a fresh Python
    outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri, "slurm", {"cluster": "local", "folder": str(tmp_path / "jobs"), "time": 10})
    assert not any(o.failure for o in outcomes)
    assert set(store_cells("tiny")) == {o.cell.id for o in outcomes}
    assert list((tmp_path / "jobs").glob("*_log.out")), "submitit wrote no job logs: the jobs did not go through it"


def test_ray_executor_on_a_local_cluster(tiny_grid: dict, tracking_uri: str) -> None:
    ray = pytest.importorskip("ray", reason="pip install 'colorbench[ray]'")
    try:
        outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri, "ray", {"num_cpus": 2})
    finally:
        ray.shutdown()
    assert not any(o.failure for o in outcomes)
    stored = store_cells("tiny")
    assert set(stored) == {o.cell.id for o in outcomes} and sorted(c["folds"] for c in stored.values()) == [1, 2]


def test_ray_executor_runs_search_trials_in_its_workers(tracking_uri: str, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="pip install 'colorbench[ray]'")
    search = copy.deepcopy(TINY_SEARCH)
    search["train"]["epochs"] = 1
    try:
        outcome = run_search(parse_search(search), n_trials=3, executor="ray", executor_options={"num_cpus": 2}, tracking_uri=tracking_uri, out_dir=tmp_path)
    finally:
        ray.shutdown()
    assert outcome.storage == f"journal:{tmp_path / 'optuna-journal.log'}" and outcome.counts["COMPLETE"] == 3  # workers share the journal
    study = optuna.load_study(study_name="tiny-search", storage=open_storage(outcome.storage))
    runs = trial_runs("tiny-search")  # one run per trial number
    assert sorted(runs) == [0, 1, 2] and {t.user_attrs[USER_ATTR_RUN] for t in study.trials} == {r.info.run_id for r in runs.values()}
    client = MlflowClient()
    for trial in study.trials:
        run = runs[trial.number]
        assert run.info.status == "FINISHED" and run.data.metrics["objective"] == pytest.approx(trial.value)
        (fold,) = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert "ray" in fold.data.tags["mlflow.source.name"]  # trained in a Ray worker (its entry point), the trial run made here
        assert [m.step for m in client.get_metric_history(run.info.run_id, "objective_running")] == [1]  # reported from the worker


def test_slurm_executor_runs_search_trials_as_jobs(tracking_uri: str, tmp_path) -> None:
    pytest.importorskip("submitit", reason="pip install 'colorbench[slurm]'")
    search = copy.deepcopy(TINY_SEARCH)
    search["train"]["epochs"] = 1
    options = {"cluster": "local", "folder": str(tmp_path / "jobs"), "time": 10, "max_jobs": 1}  # one job at a time: each samples after the last
    outcome = run_search(parse_search(search), n_trials=2, executor="slurm", executor_options=options, tracking_uri=tracking_uri, out_dir=tmp_path)
    assert outcome.counts["COMPLETE"] == 2 and sorted(trial_runs("tiny-search")) == [0, 1]
    assert len(list((tmp_path / "jobs").glob("*_log.out"))) == 2  # a job per trial
    first, second = optuna.load_study(study_name="tiny-search", storage=open_storage(outcome.storage)).trials
    assert first.datetime_complete <= second.datetime_start  # the second trial was sampled once the first had ended
