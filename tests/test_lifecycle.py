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
from colorbench.plugins import load_plugins, loaded_plugins
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.search.optimize import open_study
from colorbench.search.space import parse_search
from colorbench.search.storage import USER_ATTR_RUN, open_storage

PLUGIN = "plugin_losses"
FAILING = "plugin-fails-in-epoch-2"


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


@pytest.mark.processes  # worker processes: run with `pytest -m processes`, kept out of the 10-minute suite
def test_a_failing_fold_fails_its_cell_alike_here_and_in_worker_processes(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    tiny_grid["grid"]["loss"] = [FAILING, "plugin-mse"]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    local = run_grid(parse_experiment({**tiny_grid, "experiment": "local"}), tracking_uri)[0]
    assert [o.failure for o in local] == [INJECTED, None]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**tiny_grid, "experiment": "pooled"}))
    command = ["run", "grid.yaml", "--plugin", PLUGIN, "--executor", "process", "--workers", "2", "--tracking-uri", tracking_uri]
    assert cli.main(command) == 1  # a cell failed; spawned workers know both losses only by importing the plugins their tasks name
    for experiment in ("local", "pooled"):
        runs = experiment_runs(tracking_uri, experiment)
        assert len(runs) == 2 + 2 and all(r.data.tags[tracking.TAG_PLUGINS] == ",".join(loaded_plugins()) for r in runs)
        cells = {r.data.tags[tracking.TAG_CELL]: r for r in runs if r.data.tags[tracking.TAG_ROLE] == "cell"}
        assert_failed_by_the_injected_error(tracking_uri, runs, cells[local[0].cell.id])
        healthy = cells[local[1].cell.id]
        assert healthy.info.status == "FINISHED" and [r.info.status for r in children(runs, healthy)] == ["FINISHED"]
        for key in ("test_psnr_mean", "test_auc_rebalanced_mean", "test_colorfulness_ratio_mean"):
            assert healthy.data.metrics[key] == pytest.approx(local[1].metrics[key], rel=1e-3), (experiment, key)


def test_a_failing_fold_fails_its_trial_and_search_workers_go_on(tracking_uri: str, tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_SEARCH)
    config["space"] = {"loss": {"choice": [FAILING, "plugin-mse"]}}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    storage = f"journal:{tmp_path / 'journal.log'}"
    study = open_study(parse_search(config), storage, "fails")
    for loss in (FAILING, "plugin-mse"):
        study.enqueue_trial({"loss": loss})
    command = ["search", "search.yaml", "--plugin", PLUGIN, "--n-workers", "2", "--n-trials", "2", "--storage", storage, "--study", "fails"]
    assert cli.main([*command, "--tracking-uri", tracking_uri, "--out", str(tmp_path)]) == 0
    trials = sorted(optuna.load_study(study_name="fails", storage=open_storage(storage)).trials, key=lambda t: t.params["loss"])
    assert [(t.params["loss"], t.state.name) for t in trials] == [(FAILING, "FAIL"), ("plugin-mse", "COMPLETE")]
    runs = experiment_runs(tracking_uri, config["experiment"])
    by_id = {r.info.run_id: r for r in runs}
    failed, completed = (by_id[t.user_attrs[USER_ATTR_RUN]] for t in trials)
    assert_failed_by_the_injected_error(tracking_uri, runs, failed)
    assert failed.data.tags[tracking.TAG_STATE] == "FAIL"
    assert completed.info.status == "FINISHED" and completed.data.tags[tracking.TAG_STATE] == "COMPLETE"
    assert PLUGIN in tracking.plugins_of(completed.data.tags)


def test_executor_flags_come_from_the_registry(tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    usage = capsys.readouterr().out
    assert "{local,process,ray,slurm}" in usage and "--max-retries" in usage and "--num-cpus" in usage
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(tiny_grid))
    assert cli.main(["run", "grid.yaml", "--executor", "process", "--partition", "gpu"]) == 2  # process takes no partition
    assert "executor 'process' has no option 'partition'" in capsys.readouterr().err
