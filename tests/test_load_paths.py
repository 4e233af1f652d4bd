"""The three ways to load a trained fold give the same model: its fold run id, the cell's `runs:/<id>/model` pyfunc, its checkpoint
(with the decoding chosen on validation, when `train.decode` chose one).

Each must equal the checkpoint's state_dict run through a freshly built net, and differ from an untrained net of the same
seed, so a load path that forgot the weights (or loaded other ones) fails here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import TINY_GRID
from mlflow.tracking import MlflowClient

import colorbench
from colorbench import tracking
from colorbench.backbones import build_model
from colorbench.checkpoints import TrainedModel
from colorbench.colorize import Colorizer
from colorbench.components import LOSSES
from colorbench.data import SOURCES
from colorbench.images import lab_batch
from colorbench.metrics import ColorizationMetrics
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.splitters import carve_test


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Four real photos at 40 px (the model works at 32, so the resizing path runs too)."""
    return SOURCES.build("builtin", {"image_size": 40, "crops_per_photo": 1}).images[:4]


def fresh_colorizer(ckpt: dict, state_dict: dict | None) -> Colorizer:
    """A net built from the checkpoint's description, with `state_dict` loaded (None: untrained, seeded as training starts)."""
    torch.manual_seed(0)
    objective = LOSSES.build(ckpt["loss"]["name"], ckpt["loss"]["options"])
    model = build_model(ckpt["backbone"]["name"], ckpt["backbone"]["options"], objective.out_channels)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return Colorizer(TrainedModel(model.eval(), objective, int(ckpt["image_size"]), {}), "cpu")


def test_fold_run_pyfunc_uri_and_checkpoint_give_the_checkpoints_outputs(
    tracking_uri: str, tmp_path: Path, photos: np.ndarray
) -> None:
    grid = copy.deepcopy(TINY_GRID)
    grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    (outcome,), _ = run_grid(parse_experiment(grid), tracking_uri)
    assert outcome.failure is None
    mlflow.set_tracking_uri(tracking_uri)
    (fold_run,) = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("tiny").experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'"
    )
    assert fold_run.data.tags[tracking.TAG_ROLE] == "fold"
    path = mlflow.artifacts.download_artifacts(run_id=fold_run.info.run_id, artifact_path="checkpoint.pt", dst_path=str(tmp_path))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)

    by_run = colorbench.load(fold_run.info.run_id, device="cpu")
    by_file = colorbench.load(path, device="cpu")
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{outcome.run_id}/model", dst_path=str(tmp_path))
    reference = fresh_colorizer(ckpt, ckpt["state_dict"])
    expected = np.stack(reference.colorize_many(list(photos)))

    np.testing.assert_array_equal(np.stack(by_run.colorize_many(list(photos))), expected)
    np.testing.assert_array_equal(np.stack(by_file.colorize_many(list(photos))), expected)
    np.testing.assert_array_equal(pyfunc.predict(photos), expected)
    L, _ = lab_batch(torch.from_numpy(SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 1}).images))
    with torch.no_grad():
        raw = reference.model(L)
        for model in (by_run.model, by_file.model, pyfunc.unwrap_python_model().colorizer.model):
            assert torch.equal(model.eval()(L), raw)

    untrained = fresh_colorizer(ckpt, None)
    with torch.no_grad():
        moved = (untrained.objective.decode(untrained.model(L)) - reference.objective.decode(raw)).abs()
    # 2 tiny epochs move ab by about 0.5 Lab units on average: far above float noise, and the comparisons above are exact
    assert moved.mean() > 0.1, "training must have moved the predicted ab (Lab units) away from an untrained net's"
    assert not np.array_equal(np.stack(untrained.colorize_many(list(photos))), expected)


def test_decoding_chosen_on_validation_reaches_every_load_path_and_the_test_scores(
    tracking_uri: str, tmp_path: Path, photos: np.ndarray
) -> None:
    """`train.decode`: the fold run's param, the checkpoint, the run id, the file, the pyfunc model and the fold's test metrics all
    use the chosen T (ce-mse) or s (rebalanced-mse), so both hybrids train through the lifecycle too. No candidate is the loss's
    own decoding, so a path that dropped the choice differs."""
    grid = copy.deepcopy(TINY_GRID)
    grid["grid"].update(loss=["rebalanced-mse", "ce-mse"], splitter=[{"name": "holdout", "val_fraction": 0.3}])
    grid["train"]["decode"] = {"choose": "val_psnr", "min_colorfulness_ratio": 0.5, "chroma_scales": [1.5, 2.0], "temperatures": [0.2, 0.9]}
    exp = parse_experiment(grid)
    outcomes, _ = run_grid(exp, tracking_uri)
    assert all(o.failure is None for o in outcomes)
    mlflow.set_tracking_uri(tracking_uri)
    data = SOURCES.build(exp.data.source, exp.data.options)
    test = data.subset(carve_test(data, exp.test_fraction, exp.seed)[1])
    for outcome, name in zip(outcomes, ("chroma_scale", "decode_temperature"), strict=True):
        (fold_run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("tiny").experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'")
        value = float(fold_run.data.params[name])
        assert value in (1.5, 2.0, 0.2, 0.9) and fold_run.data.metrics[name] == value
        path = mlflow.artifacts.download_artifacts(run_id=fold_run.info.run_id, artifact_path="checkpoint.pt", dst_path=str(tmp_path / name))
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["decoding"] == {name: value}
        reference = fresh_colorizer(ckpt, ckpt["state_dict"])
        untuned = np.stack(reference.colorize_many(list(photos)))
        reference.objective.tune(value)
        expected = np.stack(reference.colorize_many(list(photos)))
        assert not np.array_equal(untuned, expected), "the chosen decoding must change the output"
        np.testing.assert_array_equal(np.stack(colorbench.load(fold_run.info.run_id, device="cpu").colorize_many(list(photos))), expected)
        np.testing.assert_array_equal(np.stack(colorbench.load(path, device="cpu").colorize_many(list(photos))), expected)
        np.testing.assert_array_equal(mlflow.pyfunc.load_model(f"runs:/{outcome.run_id}/model", dst_path=str(tmp_path / name)).predict(photos), expected)
        meter = ColorizationMetrics()
        L, ab = lab_batch(torch.from_numpy(np.asarray(test.images[0 : len(test.images)])))
        with torch.no_grad():
            meter.update(L, reference.objective.decode(reference.model(L)), ab)
        assert fold_run.data.metrics["test_psnr"] == pytest.approx(meter.compute()["psnr"], rel=1e-6)
        assert fold_run.data.metrics["val_psnr.chosen"] > 0
