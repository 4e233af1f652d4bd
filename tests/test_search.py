"""`colorbench search` on real Optuna studies and real MLflow stores (temporary SQLite files and journal files)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from colorbench import tracking
from colorbench.cli import main
from colorbench.errors import ConfigError, StoreError
from colorbench.report import build_report
from colorbench.search.optimize import TrialContext, close_orphan_runs, end_trial, enqueue_interrupted, open_study, run_search, start_trial
from colorbench.search.space import parse_search
from colorbench.search.storage import USER_ATTR_RUN, open_storage
from colorbench.tracking import TAG_STATE, TAG_STUDY, TAG_TRIAL

TINY_SEARCH = {
    "experiment": "tiny-search",
    "data": {"source": "builtin", "image_size": 32, "crops_per_photo": 3},
    "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3},
    "test_fraction": 0.25,
    "splitter": {"name": "holdout", "val_fraction": 0.3},
    "space": {
        "loss": {"choice": ["mse", "ce-rebalanced"]},
        "train.lr": {"loguniform": [3.0e-4, 3.0e-3]},
        "loss.temperature": {"uniform": [0.1, 1.0], "when": {"loss": "ce-rebalanced"}},
    },
    "objective": {"metric": "val_auc_rebalanced", "direction": "maximize"},
    "sampler": "random",
    "pruner": "none",
}


@pytest.fixture
def tiny_search() -> dict:
    return copy.deepcopy(TINY_SEARCH)


def trial_runs(experiment: str) -> dict[int, mlflow.entities.Run]:
    """The experiment's trial (parent) runs by trial number; fails on a duplicated trial number."""
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'trial'", max_results=1000)
    numbers = [int(r.data.tags[TAG_TRIAL]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"a trial was logged twice: {sorted(numbers)}"
    return {int(r.data.tags[TAG_TRIAL]): r for r in runs}


def test_search_logs_every_trial_in_both_stores_and_resumes(tiny_search: dict, tracking_uri: str, tmp_path: Path) -> None:
    search = parse_search(tiny_search)
    first = run_search(search, n_trials=3, tracking_uri=tracking_uri, out_dir=tmp_path / "figures")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # the default: beside the MLflow SQLite file
    assert first.storage == storage and first.counts["COMPLETE"] == 3
    assert (tmp_path / "figures" / "optuna_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    second = run_search(search, n_trials=2, tracking_uri=tracking_uri, out_dir=tmp_path / "figures")  # same command again: resume
    study = optuna.load_study(study_name="tiny-search", storage=open_storage(storage))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4] and second.counts["COMPLETE"] == 5

    runs = trial_runs("tiny-search")
    assert sorted(runs) == [0, 1, 2, 3, 4]
    client = MlflowClient()
    for trial in study.trials:
        run = runs[trial.number]
        assert trial.user_attrs[USER_ATTR_RUN] == run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "COMPLETE" and run.data.tags[TAG_STUDY] == "tiny-search"
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
        assert "test_psnr_mean" in run.data.metrics and "gray_test_psnr" in run.data.metrics
        assert run.data.params["loss.name"] == trial.params["loss"]
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        # the conditional entry is sampled exactly when its condition holds, and reaches the trained loss
        assert ("loss.temperature" in trial.params) == (trial.params["loss"] == "ce-rebalanced")
        if "loss.temperature" in trial.params:
            assert float(run.data.params["loss.temperature"]) == pytest.approx(trial.params["loss.temperature"])
        (fold,) = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        history = client.get_metric_history(fold.info.run_id, "val_auc_rebalanced")
        assert [m.step for m in history] == [1, 2]
        # objective = the validation metric at the best checkpoint (lowest val loss)
        losses = {m.step: m.value for m in client.get_metric_history(fold.info.run_id, "val_loss")}
        best_epoch = min(losses, key=losses.get)
        assert trial.value == pytest.approx(next(m.value for m in history if m.step == best_epoch))

    report = build_report("tiny-search", tmp_path / "report", tracking_uri=tracking_uri)  # one row per trial, plus Optuna's figures
    assert sorted(report.table["cell"]) == sorted([f"trial-{n}" for n in range(5)] + ["gray baseline"])
    assert report.baseline == "trial-0" and report.baseline_how == "the search's first finished trial (trial 0)"  # not the best
    trial_rows = report.table.set_index("cell").drop(index="gray baseline")
    for trial in study.trials:
        assert trial_rows.loc[f"trial-{trial.number}", "objective"] == pytest.approx(trial.value)
        assert f"train.lr={trial.params['train.lr']:.4g}" in trial_rows.loc[f"trial-{trial.number}", "sampled"]
    assert set(report.study_figures) >= {"optuna_history.png", "optuna_parallel.png"}
    for name in report.study_figures:
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG" and f"({name})" in (tmp_path / "report" / "summary.md").read_text()


def test_pruner_stops_a_hopeless_trial(tiny_search: dict, tracking_uri: str, tmp_path: Path) -> None:
    tiny_search.update(
        space={"train.lr": {"choice": [1.0e-3, 0.5]}},
        objective={"metric": "val_loss", "direction": "minimize"},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        train={"epochs": 3, "batch_size": 8},
    )
    search = parse_search(tiny_search)
    storage = f"sqlite:///{tmp_path / 'prune.db'}"
    study = open_study(search, storage, "prune")
    study.enqueue_trial({"train.lr": 1.0e-3})  # a sane trial first, then lr 0.5: its validation loss explodes at epoch 1
    study.enqueue_trial({"train.lr": 0.5})
    outcome = run_search(search, n_trials=2, storage=storage, study_name="prune", tracking_uri=tracking_uri, out_dir=tmp_path)
    assert outcome.counts["COMPLETE"] == 1 and outcome.counts["PRUNED"] == 1
    pruned = optuna.load_study(study_name="prune", storage=open_storage(storage)).trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.params["train.lr"] == 0.5
    run = trial_runs("tiny-search")[1]
    assert run.info.status == "KILLED" and run.data.tags[TAG_STATE] == "PRUNED"
    assert "pruned at fold 0 epoch" in run.data.tags[tracking.TAG_FAILURE]
    (fold,) = MlflowClient().search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(MlflowClient().get_metric_history(fold.info.run_id, "val_loss")) < 3  # stopped before its last epoch
    report = build_report("tiny-search", tmp_path / "report", tracking_uri=tracking_uri, storage=storage)
    assert report.pruned == 1 and list(report.table["cell"]) == ["trial-0", "gray baseline"]


def test_two_worker_processes_share_one_study(tiny_search: dict, tracking_uri: str, tmp_path: Path) -> None:
    tiny_search["train"]["epochs"] = 1
    given = ["train.epochs=1"]  # as the command line would pass them: each worker process tags its runs with them
    search = replace(parse_search(tiny_search), overrides=tuple(given))  # what load_search keeps
    outcome = run_search(search, n_trials=4, executor="process", executor_options={"workers": 2}, tracking_uri=tracking_uri, out_dir=tmp_path)
    journal = tmp_path / "optuna-journal.log"
    assert outcome.storage == f"journal:{journal}" and journal.is_file()  # SQLite would lock under two writers
    study = optuna.load_study(study_name="tiny-search", storage=open_storage(f"journal:{journal}"))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    runs = trial_runs("tiny-search")
    assert sorted(runs) == [0, 1, 2, 3] and all(r.info.status == "FINISHED" for r in runs.values())
    assert {t.user_attrs[USER_ATTR_RUN] for t in study.trials} == {r.info.run_id for r in runs.values()}
    assert all(json.loads(r.data.tags[tracking.TAG_OVERRIDES]) == given for r in runs.values())


BAD_SPACES = [
    ({"train.lr": {"loguniform": [0.0, 1.0]}}, "space.train.lr: loguniform needs low > 0"),
    ({"train.lr": {"normal": [1, 2]}}, "space.train.lr: unknown key .normal.; write e.g."),
    ({"loss": {"choice": ["mse", "ce-rebalancd"]}}, "Did you mean 'ce-rebalanced'"),
    ({"loss": {"choice": ["mse", "ce"]}, "loss.temperature": {"uniform": [0.1, 1.0]}}, "loss 'mse' has no option 'temperature'"),
    ({"loss.temperature": {"uniform": [0.1, 1.0], "when": {"loss": "ce"}}}, "can never hold"),
    ({"loss.temperature": {"uniform": [0.1, 1.0], "when": {"backbone": "x"}}, "backbone": {"choice": ["resnet18-6"]}}, "not an earlier"),
    ({"splitter": {"choice": ["holdout", "kfold"]}}, "the splitter is fixed"),
    ({"train.epochs": {"int": [0, 3]}}, "space.train.epochs: epochs: Input should be greater than 0"),
    ({"train.lr": {"uniform": [3, 1]}}, "low < high"),
]


@pytest.mark.parametrize(("space", "message"), BAD_SPACES)
def test_bad_space_is_one_clear_line(tiny_search: dict, space: dict, message: str) -> None:
    tiny_search["space"] = space
    with pytest.raises(ConfigError, match=message) as err:
        parse_search(tiny_search)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("objective", {"metric": "test_psnr"}, "test metric"),
        ("objective", {"metric": "val_psnrr"}, "Did you mean 'val_psnr'"),
        ("sampler", "tpee", "unknown sampler 'tpee'. Did you mean 'tpe'"),
        ("sampler", "grid", "sampler grid needs every space entry to be a choice"),
        ("pruner", {"name": "median", "n_startup": 1}, "pruner 'median' has no option 'n_startup'"),
    ],
)
def test_bad_objective_sampler_or_pruner_is_a_config_error(tiny_search: dict, key: str, value: object, message: str) -> None:
    tiny_search[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_search(tiny_search)


def test_cli_rejects_a_bad_space_before_touching_any_store(tiny_search: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tiny_search["space"]["train.lr"] = {"loguniform": [1.0e-4]}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(tiny_search))
    assert main(["search", "search.yaml"]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_the_shipped_default_search_is_valid() -> None:
    search = parse_search(yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "search.yaml").read_text()))
    assert [p.key for p in search.params] == ["backbone", "loss", "train.lr", "loss.temperature"]
    assert search.config.objective.metric.startswith("val_")


def test_search_takes_the_executor_flags_and_n_workers_is_their_deprecated_alias(
    tiny_search: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(tiny_search))
    assert main(["search", "search.yaml", "--executor", "process", "--partition", "gpu"]) == 2  # the process pool takes no partition
    assert "executor 'process' has no option 'partition'" in capsys.readouterr().err
    assert main(["search", "search.yaml", "--n-workers", "0"]) == 2  # read as --executor process --workers 0
    err = capsys.readouterr().err
    assert "--n-workers is deprecated; use --executor process --workers 0" in err and "executor 'process', option 'workers'" in err
    assert not (tmp_path / "mlflow.db").exists()  # both refused before touching any store


def test_the_next_search_fails_a_killed_trial_and_closes_its_run(tiny_search: dict, tracking_uri: str, tmp_path: Path) -> None:
    """Trials sent to executors record no Optuna heartbeat: a trial left RUNNING by a process that is gone is failed by the next search,
    from its MLflow run's claim, and the run closed KILLED; a trial held by a live process is left alone."""
    study = open_study(parse_search(tiny_search), f"sqlite:///{tmp_path / 'optuna.db'}", "killed")
    experiment_id = tracking.open_experiment(tracking_uri, "tiny-search")
    gone = subprocess.Popen(["true"])
    gone.wait()
    runs = {}
    for pid in (gone.pid, os.getppid()):  # a process that ended, and a live one (the one that started this test)
        trial = study.ask()
        claim = {tracking.TAG_CLAIM_HOST: tracking.HOST, tracking.TAG_CLAIM_PID: str(pid), tracking.TAG_HEARTBEAT: str(time.time())}
        tags = {tracking.TAG_ROLE: "trial", TAG_STUDY: "killed", TAG_TRIAL: str(trial.number), tracking.TAG_CELL: f"cell-{trial.number}", **claim}
        runs[trial.number] = tracking.create_run(experiment_id, f"trial {trial.number}", tags, {})
    assert enqueue_interrupted(experiment_id, study) == 0  # no saved training state: nothing to continue
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]
    assert close_orphan_runs(experiment_id, study) == 1
    assert [tracking.get_run(runs[n]).info.status for n in (0, 1)] == ["KILLED", "RUNNING"]


def test_a_trial_whose_worker_was_lost_fails_and_its_run_is_closed(tiny_search: dict, tracking_uri: str, tmp_path: Path) -> None:
    """What the search does with an exception instead of a trial's end (a lost worker, an error outside the folds): the trial FAILs,
    its still-open run ends FAILED with the reason, and the search goes on; a failed store stops it."""
    search = parse_search(tiny_search)
    study = open_study(search, f"sqlite:///{tmp_path / 'optuna.db'}", "lost")
    where = TrialContext("lost", "sqlite:///optuna.db", tracking.open_experiment(tracking_uri, "tiny-search"), tracking_uri, "data", [], {})
    task = start_trial(study.ask(), search, where)
    assert tracking.get_run(task.run_id).info.status == "RUNNING"
    ended = end_trial(study, task, RuntimeError("worker lost"))
    run = tracking.get_run(task.run_id)
    assert ended.state == optuna.trial.TrialState.FAIL and ended.user_attrs[USER_ATTR_RUN] == task.run_id
    assert (run.info.status, run.data.tags[TAG_STATE], run.data.tags[tracking.TAG_FAILURE]) == ("FAILED", "FAIL", "RuntimeError: worker lost")
    with pytest.raises(StoreError):
        end_trial(study, start_trial(study.ask(), search, where), StoreError("the store failed"))
