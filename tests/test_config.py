"""Grid files: expansion, stable ids, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from colorbench.config import expand
from colorbench.errors import ConfigError
from colorbench.resolve import load_experiment, parse_experiment


def test_expansion_is_the_cartesian_product_with_defaults_filled(tiny_grid: dict) -> None:
    tiny_grid["grid"]["backbone"] = ["resnet18-6", "resnet18-7", {"name": "resnet18-8", "weights": "none"}]
    cells = expand(parse_experiment(tiny_grid))
    assert len(cells) == 3 * 1 * 2
    assert {c.backbone.name for c in cells} == {"resnet18-6", "resnet18-7", "resnet18-8"}
    assert all(c.backbone.options == {"weights": "none"} for c in cells)
    holdout = [c for c in cells if c.splitter.name == "holdout"]
    assert all(c.splitter.options == {"val_fraction": 0.3} for c in holdout)
    assert len({c.id for c in cells}) == len(cells)


def test_cell_ids_are_stable_and_defaults_do_not_change_them(tiny_grid: dict) -> None:
    first = [c.id for c in expand(parse_experiment(tiny_grid))]
    tiny_grid["grid"]["backbone"] = [{"name": "resnet18-6", "weights": "none"}]
    assert [c.id for c in expand(parse_experiment(tiny_grid))] == first
    tiny_grid["train"]["lr"] = 2e-3
    assert [c.id for c in expand(parse_experiment(tiny_grid))] != first


def test_duplicate_entries_expand_once(tiny_grid: dict) -> None:
    tiny_grid["grid"]["loss"] = ["mse", {"name": "mse"}]
    assert len(expand(parse_experiment(tiny_grid))) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g.update(epochs=3), "epochs: Extra inputs are not permitted"),
        (lambda g: g["grid"].update(backbone=["resnet18-66"]), "unknown backbone 'resnet18-66'. Did you mean"),
        (lambda g: g["grid"].update(loss=["msee"]), "Did you mean 'mse'"),
        (lambda g: g["grid"].update(splitter=[{"name": "kfold", "folds": 3}]), "has no option 'folds'; its options: k"),
        (lambda g: g["grid"].update(splitter=[{"name": "kfold", "k": "three"}]), "option 'k': Input should be a valid integer"),
        (lambda g: g["grid"].update(splitter=[{"name": "kfold", "k": 1}]), "option 'k': Input should be greater than or equal to 2"),
        (lambda g: g["train"].update(epochs=-1), "train.epochs: Input should be greater than 0"),
        (lambda g: g.update(test_fraction=1.0), "test_fraction: Input should be less than 1"),
        (lambda g: g["data"].update(source="web"), "unknown data source 'web'"),
        (lambda g: g["grid"].update(backbone=[{"weights": "none"}]), "needs a 'name' key"),
        (lambda g: g["grid"].update(backbone=[{"name": "resnet18-6", "weights": "imagenet21k"}]), "option 'weights'"),
    ],
)
def test_config_mistakes_fail_with_one_clear_line(tiny_grid: dict, change, message: str) -> None:
    change(tiny_grid)
    with pytest.raises(ConfigError) as info:
        parse_experiment(tiny_grid)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("experiment: x\ngrid:\n  backbone: [resnet18-6\n  loss: [mse]\n")
    with pytest.raises(ConfigError, match=r"grid.yaml: line \d+, column \d+: YAML syntax error"):
        load_experiment(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope.yaml: No such file"):
        load_experiment(tmp_path / "nope.yaml")


def test_the_shipped_default_grid_is_valid() -> None:
    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "grid.yaml")
    cells = expand(exp)
    assert {c.backbone.name for c in cells} == {"resnet18-6", "resnet18-7", "resnet18-8"}
    assert {c.splitter.name for c in cells} == {"holdout", "kfold"}


@pytest.mark.parametrize("value", [True, "5", 2.5])
def test_epochs_must_be_a_whole_number_not_a_bool_or_text(tiny_grid: dict, value: object) -> None:
    tiny_grid["train"]["epochs"] = value
    with pytest.raises(ConfigError, match="train.epochs: Input should be a valid integer"):
        parse_experiment(tiny_grid)
