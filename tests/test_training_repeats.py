"""Training repeats: each split trained `train.repeats` times, the variance components on the cell run, and the deployed child
chosen by validation score, never by a test metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

import colorbench
from colorbench import tracking
from colorbench.config import expand
from colorbench.report import build_report, terminal_rows
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.tracking import deployed_run, finished_children


@pytest.fixture(scope="module")
def repeated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    """One grid, trained once for the module: hold-out and kfold k=3, each split trained twice."""
    import os
    import shutil

    from mlflow.tracking import MlflowClient as Client

    folder = tmp_path_factory.mktemp("repeats")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    Client(uri).search_experiments()
    grid = {
        "experiment": "repeats",
        "data": {"source": "builtin", "image_size": 32, "crops_per_photo": 2},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "seed": 0, "repeats": 2},
        "test_fraction": 0.25,
        "grid": {"backbone": ["resnet18-6"], "loss": ["mse"], "splitter": [{"name": "holdout", "val_fraction": 0.3}, {"name": "kfold", "k": 3}]},
    }
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        outcomes, _ = run_grid(parse_experiment(grid), uri)
    finally:
        os.chdir(cwd)
    yield uri, outcomes
    shutil.rmtree(folder, ignore_errors=True)


def children_of(run_id: str) -> pd.DataFrame:
    """The finished child runs of a cell run, with their tags and metrics."""
    client = MlflowClient()
    runs = client.search_runs([client.get_run(run_id).info.experiment_id], filter_string=f"tags.`{tracking.TAG_PARENT}` = '{run_id}'")
    return pd.DataFrame([
        {"run_id": r.info.run_id, "status": r.info.status, "name": r.info.run_name, "fold": int(r.data.tags[tracking.TAG_FOLD]),
         "repeat": int(r.data.tags[tracking.TAG_REPEAT]), "seed_param": r.data.params["repeat"], "training_seed": int(r.data.params["training_seed"]),
         **r.data.metrics}
        for r in runs
    ])


def test_each_split_trains_once_per_repeat_with_its_own_seed(repeated: tuple[str, list], monkeypatch: pytest.MonkeyPatch) -> None:
    uri, outcomes = repeated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    counts = {}
    for outcome in outcomes:
        assert outcome.failure is None
        kids = children_of(outcome.run_id)
        assert (kids["status"] == "FINISHED").all()
        counts[outcome.cell.splitter.name] = len(kids)
        assert sorted(zip(kids["fold"], kids["repeat"], strict=True)) == [(f, r) for f in sorted(set(kids["fold"])) for r in (0, 1)]
        assert all(f"repeat {r}" in name for name, r in zip(kids["name"], kids["repeat"], strict=True))
        assert list(kids["training_seed"]) == list(1000 * kids["fold"] + kids["repeat"])  # train.seed 0: every split its own seeds
        for _, same_split in kids.groupby("fold"):  # another seed: the same split trains to another model
            assert same_split["test_psnr"].nunique() == 2
    assert counts == {"holdout": 2, "kfold": 6}


def test_cell_runs_carry_the_variance_components(repeated: tuple[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri, outcomes = repeated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for outcome in outcomes:
        cell = MlflowClient().get_run(outcome.run_id).data.metrics
        kids = children_of(outcome.run_id)
        for metric in ("psnr", "ssim"):
            values = kids[f"test_{metric}"]
            assert cell[f"test_{metric}_mean"] == pytest.approx(values.mean())
            means = kids.groupby("fold")[f"test_{metric}"].mean()
            within = kids.groupby("fold")[f"test_{metric}"].var(ddof=1)  # two repeats per split: pooled = mean of the variances
            if len(means) > 1:  # one-way random effects, two repeats per split: (MS_between - MS_within) / 2, clipped at 0
                between = max(0.0, (2 * means.var(ddof=1) - within.mean()) / 2)
                assert cell[f"test_{metric}_sd_split"] == pytest.approx(np.sqrt(between))
            else:
                assert np.isnan(cell[f"test_{metric}_sd_split"])
            assert cell[f"test_{metric}_sd_seed"] == pytest.approx(np.sqrt(within.mean()))
            per_image = [pd.read_csv(tracking.download(r, "test_per_image.csv", tmp_path / r)).set_index("image")[metric] for r in kids["run_id"]]
            images = pd.concat(per_image, axis=1).mean(axis=1).to_numpy()
            sem = stats.sem(images)  # the bootstrap SE of a mean is close to its analytic standard error
            assert cell[f"test_{metric}_se_images"] == pytest.approx(sem, rel=0.15)


def test_deployed_child_is_chosen_by_validation_never_by_test(repeated: tuple[str, list], monkeypatch: pytest.MonkeyPatch) -> None:
    uri, outcomes = repeated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    disagree = 0
    for outcome in outcomes:
        kids = children_of(outcome.run_id).set_index("run_id")
        deployed = MlflowClient().get_run(outcome.run_id).data.tags[tracking.TAG_DEPLOYED]
        assert deployed == kids["best_val_loss"].idxmin()
        assert deployed_run(outcome.run_id) == deployed
        disagree += deployed != kids["test_psnr"].idxmax()
        model = colorbench.load(outcome.run_id, device="cpu")
        expected = colorbench.load(deployed, device="cpu")
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        np.testing.assert_array_equal(model.colorize(image), expected.colorize(image))
    assert disagree > 0  # in at least one cell the best test PSNR belongs to another child: selection ignored it
    assert set(finished_children(outcomes[1].run_id)) == {(f, r) for f in range(3) for r in (0, 1)}


def test_repeats_and_refit_at_their_defaults_keep_todays_cell_ids() -> None:
    base = {"experiment": "ids", "grid": {"splitter": [{"name": "holdout"}]}}
    today = expand(parse_experiment(base))[0]
    explicit = expand(parse_experiment({**base, "train": {"repeats": 1, "refit": False}}))[0]
    assert explicit.id == today.id and "repeats" not in today.model_dump(mode="json")["train"]
    assert expand(parse_experiment({**base, "train": {"repeats": 2}}))[0].id != today.id
    assert expand(parse_experiment({**base, "train": {"refit": True}}))[0].id != today.id


def test_refit_child_is_scored_on_test_and_deployed(tracking_uri: str, tiny_grid: dict) -> None:
    tiny_grid["train"].update(epochs=2, refit=True)
    tiny_grid["grid"]["splitter"] = [{"name": "kfold", "k": 2}]
    (outcome,), _ = run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert outcome.failure is None
    client = MlflowClient()
    cell = client.get_run(outcome.run_id)
    refits = client.search_runs([cell.info.experiment_id], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'refit'")
    assert len(refits) == 1 and refits[0].info.status == "FINISHED"
    refit = refits[0]
    kids = children_of(outcome.run_id)
    kids = kids[kids["run_id"] != refit.info.run_id]
    assert refit.data.tags[tracking.TAG_PARENT] == outcome.run_id and "test_psnr" in refit.data.metrics
    assert int(refit.data.params["n_train"]) == sum(int(client.get_run(r).data.params["n_train"]) for r in kids["run_id"]) / 2 + sum(
        int(client.get_run(r).data.params["n_val"]) for r in kids["run_id"]
    ) / 2  # train + validation of the pool
    assert cell.data.metrics["refit_epochs"] == max(1, round(float(np.median(kids["best_epoch"]))))
    assert cell.data.tags[tracking.TAG_DEPLOYED] == refit.info.run_id == deployed_run(outcome.run_id)
    assert len(kids) == 2 and cell.data.metrics["n_folds"] == 2  # the refit is not one of the splits' children
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    loaded = colorbench.load(outcome.run_id, device="cpu").colorize(image)
    np.testing.assert_array_equal(loaded, colorbench.load(refit.info.run_id, device="cpu").colorize(image))


def test_report_pairs_children_by_split_and_repeat_and_shows_the_components(
    repeated: tuple[str, list], tmp_path_factory: pytest.TempPathFactory
) -> None:
    uri, outcomes = repeated
    report = build_report("repeats", tmp_path_factory.mktemp("report"), tracking_uri=uri)
    table = report.table.set_index("cell")
    for outcome in outcomes:
        logged = MlflowClient(uri).get_run(outcome.run_id).data.metrics
        for part in ("sd_split", "sd_seed", "se_images"):
            assert table.loc[outcome.cell.id, f"test_psnr_{part}"] == pytest.approx(logged[f"test_psnr_{part}"], nan_ok=True)
    header, rows = terminal_rows(report)
    column = header.index("psnr SDs / SE")
    kfold = next(r for r in rows if r[0].startswith(outcomes[1].cell.id))
    assert kfold[column].startswith("split ") and "seed " in kfold[column] and "images " in kfold[column]
    assert "psnr SDs / SE" in (report.out_dir / "table.md").read_text()
