"""One cell lifecycle: the same fold error fails its cell the same way in this process, in worker processes and in a search trial,
and the rest goes on; plugin components reach worker processes (fold tasks and search workers)."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from plugin_losses import INJECTED
from test_search import TINY_SEARCH

from colorbench import cli, tracking
from colorbench.config import parse_experiment
from colorbench.plugins import load_plugins, loaded_plugins
from colorbench.runner import run_grid
from colorbench.search import open_study, run_search
from colorbench.search_space import parse_search
from colorbench.studies import USER_ATTR_RUN, open_storage

PLUGIN = "plugin_losses"
FAILING, HEALTHY = "plugin-fails-in-epoch-2", "mse"


@pytest.fixture(autouse=True)
def plugin() -> None:
    load_plugins([PLUGIN])  # as `--plugin plugin_losses` does: registered here, recorded on every run, imported by workers


def experiment_runs(uri: str, experiment: str) -> list[Run]:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)


def children(runs: list[Run], parent: Run) -> list[Run]:
    return [r for r in runs if r.data.tags.get(tracking.TAG_PARENT) == parent.info.run_id]


def assert_failed_by_the_injected_error(uri: str, runs: list[Run], parent: Run) -> None:
    """The cell's (or trial's) run and its one fold run are FAILED with the same reason; the fold logged epoch 1 only."""
    [fold] = children(runs, parent)
    reason = f"RuntimeError: {INJECTED}"
    assert (parent.info.status, parent.data.tags[tracking.TAG_FAILURE]) == ("FAILED", reason)
    assert (fold.info.status, fold.data.tags[tracking.TAG_FAILURE]) == ("FAILED", reason)
    assert [m.step for m in MlflowClient(uri).get_metric_history(fold.info.run_id, "val_loss")] == [1]
    for run in (parent, fold):
        assert PLUGIN in tracking.plugins_of(run.data.tags)


@pytest.mark.parametrize("executor", ["local", "process"])
def test_a_failing_fold_fails_its_cell_and_the_grid_goes_on(tiny_grid: dict, tracking_uri: str, executor: str) -> None:
    tiny_grid["grid"]["loss"] = [FAILING, HEALTHY]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    options = {"workers": "2"} if executor == "process" else {}  # as the CLI passes flags: text, converted by the executor
    failing, healthy = run_grid(parse_experiment(tiny_grid), tracking_uri, executor, options)[0]
    assert failing.failure == INJECTED and not failing.metrics
    assert healthy.failure is None and healthy.metrics["test_psnr_mean"] > 0
    runs = experiment_runs(tracking_uri, tiny_grid["experiment"])
    parents = {r.data.tags[tracking.TAG_CELL]: r for r in runs if r.data.tags[tracking.TAG_ROLE] == "cell"}
    assert_failed_by_the_injected_error(tracking_uri, runs, parents[failing.cell.id])
    assert parents[healthy.cell.id].info.status == "FINISHED"
    assert [r.info.status for r in children(runs, parents[healthy.cell.id])] == ["FINISHED"]


def test_a_failing_fold_fails_its_trial_and_the_search_goes_on(tracking_uri: str, tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_SEARCH)
    config["space"] = {"loss": {"choice": [FAILING, HEALTHY]}}
    search = parse_search(config)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(search, storage, "fails")
    for loss in (FAILING, HEALTHY):
        study.enqueue_trial({"loss": loss})
    outcome = run_search(search, n_trials=2, storage=storage, study_name="fails", tracking_uri=tracking_uri, out_dir=tmp_path)
    assert outcome.counts["FAIL"] == 1 and outcome.counts["COMPLETE"] == 1
    trials = optuna.load_study(study_name="fails", storage=open_storage(storage)).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    runs = experiment_runs(tracking_uri, config["experiment"])
    by_id = {r.info.run_id: r for r in runs}
    failed, completed = (by_id[t.user_attrs[USER_ATTR_RUN]] for t in trials)
    assert_failed_by_the_injected_error(tracking_uri, runs, failed)
    assert failed.data.tags[tracking.TAG_STATE] == "FAIL"
    assert completed.info.status == "FINISHED" and completed.data.tags[tracking.TAG_STATE] == "COMPLETE"


def test_a_plugin_loss_trains_in_worker_processes_as_it_does_here(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    tiny_grid["grid"]["loss"] = ["plugin-mse"]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(tiny_grid))
    command = ["run", "grid.yaml", "--plugin", PLUGIN, "--executor", "process", "--workers", "2", "--tracking-uri", tracking_uri]
    assert cli.main(command) == 0  # spawned workers know `plugin-mse` only by importing the plugins their tasks name
    runs = experiment_runs(tracking_uri, tiny_grid["experiment"])
    assert len(runs) == 2 + 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags[tracking.TAG_PLUGINS] == ",".join(loaded_plugins()) for r in runs)
    pooled = {r.data.tags[tracking.TAG_CELL]: r.data.metrics for r in runs if r.data.tags[tracking.TAG_ROLE] == "cell"}
    local, _ = run_grid(parse_experiment({**tiny_grid, "experiment": "local"}), tracking_uri)  # the same cells in this process
    assert set(pooled) == {o.cell.id for o in local}
    for outcome in local:
        for key in ("test_psnr_mean", "test_auc_rebalanced_mean", "test_colorfulness_ratio_mean"):
            assert pooled[outcome.cell.id][key] == pytest.approx(outcome.metrics[key], rel=1e-3), key

    search = copy.deepcopy(TINY_SEARCH)
    search.update(loss="plugin-mse", space={"train.lr": {"loguniform": [3.0e-4, 3.0e-3]}})
    search["train"]["epochs"] = 1
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search))
    command = ["search", "search.yaml", "--plugin", PLUGIN, "--n-workers", "2", "--n-trials", "2", "--tracking-uri", tracking_uri]
    assert cli.main(command) == 0
    trials = [r for r in experiment_runs(tracking_uri, search["experiment"]) if r.data.tags[tracking.TAG_ROLE] == "trial"]
    assert len(trials) == 2 and {(r.info.status, r.data.params["loss.name"]) for r in trials} == {("FINISHED", "plugin-mse")}
    assert all(PLUGIN in tracking.plugins_of(r.data.tags) for r in trials)


def test_executor_flags_come_from_the_registry(tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    usage = capsys.readouterr().out
    assert "{local,process,ray,slurm}" in usage and "--max-retries" in usage and "--num-cpus" in usage
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(tiny_grid))
    assert cli.main(["run", "grid.yaml", "--executor", "process", "--partition", "gpu"]) == 2  # process takes no partition
    assert "executor 'process' has no option 'partition'" in capsys.readouterr().err
