"""Command-line overrides (`colorbench run grid.yaml train.epochs=5 ...`): checked like the file, same cells as the same edit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_search import TINY_SEARCH

from colorbench import tracking
from colorbench.cli import main
from colorbench.config import expand
from colorbench.errors import ConfigError
from colorbench.resolve import load_experiment, parse_experiment
from colorbench.search.space import load_search, parse_search


def write(tmp_path: Path, raw: dict, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_give_the_cell_ids_of_the_same_edit_in_the_file(tiny_grid: dict, tmp_path: Path) -> None:
    path = write(tmp_path, tiny_grid)
    edited = copy.deepcopy(tiny_grid)
    edited["train"]["epochs"] = 5
    edited["data"]["image_size"] = 24
    edited["grid"]["loss"] = ["mse", "ce-rebalanced"]
    edited["grid"]["backbone"] = "resnet18-7"
    with pytest.raises(ConfigError, match="grid.backbone: Input should be a valid list"):  # in the file and on the command line alike
        parse_experiment(edited)
    with pytest.raises(ConfigError, match="override 'grid.backbone=resnet18-7': grid.backbone: Input should be a valid list"):
        load_experiment(path, ["grid.backbone=resnet18-7"])
    edited["grid"]["backbone"] = ["resnet18-7"]
    overridden = load_experiment(path, ["train.epochs=5", "data.image_size=24", "grid.loss=[mse, ce-rebalanced]", "grid.backbone=[resnet18-7]"])
    ids = [c.id for c in expand(overridden)]
    assert ids == [c.id for c in expand(parse_experiment(edited))]
    assert len(ids) == 4 and not set(ids) & {c.id for c in expand(load_experiment(path))}
    assert {c.train.epochs for c in expand(overridden)} == {5}


def test_an_override_of_a_shorthand_section_or_component_option(tmp_path: Path) -> None:
    raw = {"experiment": "x", "data": "builtin", "grid": {"backbone": ["resnet18-6"]}}
    exp = load_experiment(write(tmp_path, raw), ["data.image_size=40", "test_data.source=builtin"])
    assert exp.data.options["image_size"] == 40 and exp.test_data is not None and exp.test_data.source == "builtin"
    search = load_search(write(tmp_path, {**TINY_SEARCH, "loss": "ce-rebalanced"}, "search.yaml"), ["loss.temperature=0.2", "space.train.lr={uniform: [0.001, 0.002]}"])
    assert search.config.loss.options["temperature"] == 0.2
    assert next(p for p in search.params if p.key == "train.lr").values == (0.001, 0.002)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trian.epochs=5", "override 'trian.epochs=5': unknown key 'trian'. Did you mean 'train'?"),
        ("train.epoch=5", "unknown key 'train.epoch'. Did you mean 'train.epochs'?"),
        ("grid.los=[mse]", "Did you mean 'grid.loss'?"),
        ("data.image_sise=32", "has no option 'image_sise' (did you mean 'image_size'?)"),
        ("train.epochs=five", "override 'train.epochs=five': train.epochs: Input should be a valid integer"),
        ("train.epochs=0", "train.epochs: Input should be greater than 0"),
        ("grid.loss=[msee]", "unknown loss 'msee'. Did you mean 'mse'"),
        ("train.epochs.max=3", "train.epochs takes a value, not sub-keys"),
        ("train.epochs", "write KEY=VALUE"),
        ("train.lr=[1", "YAML error in the value"),
    ],
)
def test_a_bad_override_is_one_clear_line(tiny_grid: dict, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, tiny_grid), [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_search_overrides_are_checked_like_the_search_file(tmp_path: Path) -> None:
    path = write(tmp_path, TINY_SEARCH, "search.yaml")
    with pytest.raises(ConfigError, match="unknown key 'objective.metrc'. Did you mean 'objective.metric'"):
        load_search(path, ["objective.metrc=val_psnr"])
    with pytest.raises(ConfigError, match="override 'objective.metric=test_psnr': objective.metric: .*test metric"):
        load_search(path, ["objective.metric=test_psnr"])
    overridden = load_search(path, ["train.epochs=1", "n_trials=2"]).config
    assert (overridden.train.epochs, overridden.n_trials) == (1, 2)
    assert overridden == parse_search({**TINY_SEARCH, "train": {**TINY_SEARCH["train"], "epochs": 1}, "n_trials": 2}).config


def test_dry_run_prints_the_resolved_config(tiny_grid: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, tiny_grid)
    assert main(["run", str(path), "--dry-run", "train.epochs=7", "grid.loss=[mse,ce-rebalanced]"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out.split("\n\n")[0] if "\n\n" in out else "\n".join(line for line in out.splitlines() if "  folds=" not in line and "cells," not in line))
    assert printed["train"]["epochs"] == 7 and [c["name"] for c in printed["grid"]["loss"]] == ["mse", "ce-rebalanced"]
    assert printed["grid"]["loss"][1]["options"]["temperature"] == 0.38  # defaults filled in
    assert "4 cells" in out
    assert main(["run", str(path), "--dry-run", "train.epoch=7"]) == 2
    assert "Did you mean 'train.epochs'" in capsys.readouterr().err


def test_runs_record_the_overrides_given_and_only_those(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    tiny_grid["train"]["epochs"] = 1
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    path = write(tmp_path, tiny_grid)
    given = ["experiment=tiny-overridden", "train.lr=2.0e-3", "grid.loss=[mse]"]
    assert main(["run", str(path), "--tracking-uri", tracking_uri]) == 0
    assert main(["run", str(path), *given, "--tracking-uri", tracking_uri]) == 0
    client = MlflowClient(tracking_uri)

    def runs(experiment: str) -> list:
        return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])

    plain, overridden = runs("tiny"), runs("tiny-overridden")
    assert sorted(r.data.tags[tracking.TAG_ROLE] for r in overridden) == ["cell", "fold"]
    assert all(json.loads(r.data.tags[tracking.TAG_OVERRIDES]) == given for r in overridden)  # cell and fold run, in the given order
    assert len(plain) == 2 and not any(tracking.TAG_OVERRIDES in r.data.tags for r in plain)  # no override given: no tag

    search = write(tmp_path, TINY_SEARCH, "search.yaml")
    trial_given = ["train.epochs=1", "space.train.lr={loguniform: [1.0e-3, 2.0e-3]}"]
    assert main(["search", str(search), *trial_given, "--n-trials", "1", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "figures")]) == 0
    trials = runs("tiny-search")  # worker processes: tests/test_search.py::test_two_worker_processes_share_one_study
    assert sorted(r.data.tags[tracking.TAG_ROLE] for r in trials) == ["fold", "trial"]
    assert all(json.loads(r.data.tags[tracking.TAG_OVERRIDES]) == trial_given for r in trials)
