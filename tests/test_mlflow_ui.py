"""What a user meets in `mlflow ui`: dataset inputs for the Dataset column, the experiment's kind, the training-runs URL."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from racing import log_the_same_dataset_at_once

from colorbench import cli, tracking


def test_runs_carry_dataset_inputs_and_the_experiment_its_kind(tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny_grid["train"]["epochs"] = 1
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(tiny_grid))
    assert cli.main(["run", str(tmp_path / "grid.yaml"), "--tracking-uri", tracking_uri]) == 0
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    *_, hint, last = capsys.readouterr().err.strip().splitlines()
    assert f"colorbench colorize CELL PHOTO -o out/ --tracking-uri {tracking_uri}" in hint
    assert f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in last and "Model training" in last
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags[tracking.TAG_ROLE] for r in found) == ["cell", "fold"]
    for run in found:
        inputs = {tag.value: i.dataset for i in run.inputs.dataset_inputs for tag in i.tags if tag.key == "mlflow.data.context"}
        assert sorted(inputs) == ["test", "training", "validation"], run.data.tags[tracking.TAG_ROLE]
        assert {d.digest for d in inputs.values()} == {run.data.tags[tracking.TAG_FINGERPRINT]}
        assert {d.name for d in inputs.values()} == {"builtin-training", "builtin-validation", "builtin-test"}
    filtered = client.search_runs([experiment.experiment_id], filter_string="dataset.name = 'builtin-training'")
    assert len(filtered) == 2  # the runs table's Dataset filter


def test_runs_logging_the_same_new_dataset_at_once_all_get_it(tracking_uri: str) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    assert log_the_same_dataset_at_once(tracking_uri) == []  # MLflow checks for the row, then inserts it: racing runs collide
