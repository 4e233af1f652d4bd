"""`train.decode`: the rule that picks a decoding on validation (hand-worked), the candidates' metrics (against `evaluate`), the
config (cell ids unchanged without it, clear errors)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY_GRID
from mlflow.tracking import MlflowClient
from test_search import TINY_SEARCH, trial_runs

from colorbench.backbones import build_model
from colorbench.config import DecodeRule, expand
from colorbench.data import SOURCES
from colorbench.errors import ConfigError
from colorbench.losses import LOSSES
from colorbench.resolve import parse_experiment
from colorbench.search.optimize import run_search
from colorbench.search.space import parse_search
from colorbench.train import choose_decoding, evaluate, pick_decoding

TINY_IDS = ["17c83d286fc1", "9000afadfe8a"]  # TINY_GRID's cell ids before train.decode existed


def scores(*rows: tuple[float, float, float, float]) -> dict[float, dict[str, float]]:
    """{candidate: metrics} from (candidate, psnr, colorfulness_ratio, ab_rmse) rows."""
    return {c: {"psnr": p, "colorfulness_ratio": r, "ab_rmse": e} for c, p, r, e in rows}


TABLE = scores((0.2, 21.0, 0.95, 12.0), (0.4, 22.0, 0.70, 11.0), (0.6, 22.5, 0.55, 10.5), (0.8, 22.9, 0.40, 10.0))


@pytest.mark.parametrize(
    ("rule", "chosen"),
    [
        ({"choose": "val_psnr"}, 0.8),  # no floor: the best PSNR
        ({"choose": "val_psnr", "min_colorfulness_ratio": 0.6}, 0.4),  # the best PSNR among ratios >= 0.6
        ({"choose": "val_psnr", "min_colorfulness_ratio": 0.55}, 0.6),  # the floor is inclusive
        ({"choose": "val_psnr", "min_colorfulness_ratio": 0.99}, 0.2),  # none reaches it: the most colourful
        ({"choose": "val_ab_rmse", "min_colorfulness_ratio": 0.5}, 0.6),  # lower is better
        ({"choose": "val_colorfulness_ratio"}, 0.2),  # closest to 1
    ],
)
def test_pick_follows_the_stated_rule(rule: dict, chosen: float) -> None:
    assert pick_decoding(TABLE, DecodeRule(**rule)) == chosen


def test_ties_go_to_the_first_candidate() -> None:
    tied = scores((1.0, 22.0, 0.5, 10.0), (0.5, 22.0, 0.5, 10.0))
    assert pick_decoding(tied, DecodeRule()) == 1.0


@pytest.mark.parametrize(("loss", "tuning", "candidates"), [("mse", "chroma_scale", [0.7, 1.6]), ("ce", "decode_temperature", [0.15, 0.9])])
def test_candidate_metrics_equal_evaluate_at_each_value(loss: str, tuning: str, candidates: list[float]) -> None:
    images = torch.from_numpy(SOURCES.build("builtin", {"image_size": 16, "crops_per_photo": 1}).images)
    torch.manual_seed(0)
    objective = LOSSES.build(loss)
    model = build_model("resnet18-6", {}, objective.out_channels).eval()
    rule = DecodeRule(chroma_scales=candidates, temperatures=candidates)
    chosen, got = choose_decoding(model, objective, images, rule, batch_size=3)
    assert objective.tuning == tuning and list(got) == candidates
    for value in candidates:
        reference = LOSSES.build(loss)
        reference.tune(value)
        expected, _ = evaluate(model, reference, images, batch_size=5)
        assert got[value] == pytest.approx({k: v for k, v in expected.items() if k != "loss"}, rel=1e-6)
    assert got[candidates[0]]["colorfulness_pred"] != pytest.approx(got[candidates[1]]["colorfulness_pred"], rel=1e-3)
    assert chosen == pick_decoding(got, rule) and getattr(objective, "chroma_scale" if loss == "mse" else "temperature") == chosen


def test_without_decode_the_cell_ids_are_unchanged() -> None:
    cells = expand(parse_experiment(copy.deepcopy(TINY_GRID)))
    assert [c.id for c in cells] == TINY_IDS
    assert "decode" not in cells[0].model_dump(mode="json")["train"]
    grid = copy.deepcopy(TINY_GRID)
    grid["train"]["decode"] = {"choose": "val_psnr", "min_colorfulness_ratio": 0.6}
    decoded = expand(parse_experiment(grid))
    assert not {c.id for c in decoded} & set(TINY_IDS)
    assert decoded[0].flat_params()["train.decode.min_colorfulness_ratio"] == "0.6"


@pytest.mark.parametrize(
    ("decode", "train", "message"),
    [
        ({"choose": "val_nope"}, {}, "'val_nope' is not a validation metric"),
        ({"choose": "val_loss"}, {}, "'val_loss' is not a validation metric"),
        ({"choose": "test_psnr"}, {}, "should match pattern"),
        ({"temperatures": [0.0, 0.5]}, {}, "must be > 0"),
        ({}, {"refit": True}, "drop one of the two"),
    ],
)
def test_bad_rules_are_one_line_errors(decode: dict, train: dict, message: str) -> None:
    grid = copy.deepcopy(TINY_GRID)
    grid["train"].update(train, decode=decode)
    with pytest.raises(ConfigError, match=message) as err:
        parse_experiment(grid)
    assert "\n" not in str(err.value)


def test_bg_weighted_tunes_its_base() -> None:
    objective = LOSSES.build("bg-weighted", {"base": "ce"})
    assert objective.tuning == "decode_temperature"
    objective.tune(0.2)
    assert objective.base.temperature == 0.2


def test_a_search_optimizes_the_validation_metrics_at_the_chosen_decoding(tracking_uri: str, tmp_path: Path) -> None:
    raw = copy.deepcopy(TINY_SEARCH)
    raw.pop("objective"), raw.pop("pruner")
    goals = ["val_psnr", "val_colorfulness_ratio"]
    raw |= {"experiment": "decode-search", "objectives": [{"metric": m, "direction": "maximize"} for m in goals], "sampler": "random"}
    raw["splitter"] = {"name": "kfold", "k": 2}
    raw["train"] |= {"epochs": 1, "decode": {"temperatures": [0.9], "chroma_scales": [1.7]}}  # never the default decoding
    run_search(parse_search(raw), n_trials=2, tracking_uri=tracking_uri, out_dir=tmp_path / "figures")
    client = MlflowClient()
    for trial in trial_runs("decode-search").values():
        folds = client.search_runs([trial.info.experiment_id], f"tags.`mlflow.parentRunId` = '{trial.info.run_id}'")
        assert len(folds) == 2
        for metric in goals:
            chosen = [fold.data.metrics[f"{metric}.chosen"] for fold in folds]
            assert trial.data.metrics[f"objective_{metric}"] == pytest.approx(sum(chosen) / 2, rel=1e-9)
