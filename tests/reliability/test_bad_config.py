"""Scenario 5: every config mistake is one clear ConfigError line before any training; fuzzed configs raise nothing else."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colorbench.errors import ConfigError
from colorbench.resolve import load_experiment, parse_experiment
from colorbench.runner import run_grid

GOOD = "experiment: x\ndata: {source: builtin, image_size: 32}\ntrain: {epochs: 2}\ngrid:\n  backbone: [resnet18-6]\n  loss: [mse]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("[mse]", "[mse"), r"grid.yaml: line 7, column 1: YAML syntax error: expected ',' or ']'"),
        (GOOD + "tain: {epochs: 3}\n", "grid.yaml: tain: Extra inputs are not permitted"),
        (GOOD.replace("[mse]", "[mes]"), "grid.yaml: grid.loss: unknown loss 'mes'. Did you mean 'mse'?"),
        (GOOD.replace("builtin", "bultin"), "grid.yaml: data: unknown data source 'bultin'. Did you mean 'builtin'?"),
        (GOOD.replace("epochs: 2", "epochs: two"), "grid.yaml: train.epochs: Input should be a valid integer"),
        (GOOD.replace("image_size: 32", "image_size: [32]"), "data source 'builtin', option 'image_size': Input should be a valid integer"),
        (GOOD.replace("epochs: 2", "epochs: -3"), "grid.yaml: train.epochs: Input should be greater than 0"),
        ("- just\n- a list\n", "grid.yaml: expected a mapping"),
    ],
)
def test_each_mistake_in_a_grid_file_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"splitter": [{"name": "kfold", "k": 50}]}}, "kfold k=50 needs at least 50 photos in the training pool, found 6; lower k"),
        ({"test_fraction": 0.9}, "test_fraction 0.9 puts all 8 usable photos in the test set, leaving none to train on"),
    ],
)
def test_impossible_splits_fail_before_any_run_is_created(tiny_grid: dict, tracking_uri: str, change: dict, message: str) -> None:
    for key, value in change.items():
        tiny_grid[key] = {**tiny_grid[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as info:
        run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert message in str(info.value) and "\n" not in str(info.value)
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(experiment_names=[tiny_grid["experiment"]]).empty


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(["mse", "kfold", "resnet18-6"])
keys = st.sampled_from(["experiment", "data", "source", "train", "epochs", "grid", "backbone", "loss", "splitter", "name", "k"]) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def parses_or_config_error(raw: Any) -> None:
    try:
        parse_experiment(raw)
    except ConfigError as err:
        assert "\n" not in str(err)


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a nested dict/list."""
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    return [prefix] + [p for key, child in children for p in paths(child, (*prefix, key))]


@FUZZ
@given(values)
def test_fuzzed_structures_raise_only_config_errors(raw: Any) -> None:
    parses_or_config_error(raw)


@FUZZ
@given(st.data())
def test_fuzzed_mutations_of_a_valid_grid_raise_only_config_errors(tiny_grid: dict, data: st.DataObject) -> None:
    grid = copy.deepcopy(tiny_grid)
    *parent, last = data.draw(st.sampled_from(paths(grid)[1:]))
    target = grid
    for key in parent:
        target = target[key]
    if data.draw(st.booleans()):
        target[last] = data.draw(values)
    elif isinstance(target, dict):
        del target[last]
    parses_or_config_error(grid)


@FUZZ
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=200) | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True)))
def test_fuzzed_grid_files_raise_only_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_experiment(path)
    except ConfigError as err:
        assert "\n" not in str(err)

