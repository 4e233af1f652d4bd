"""`colorbench run --executor process` on a tiny grid: every cell once in the store, same metrics as a local run.

The process pool needs only the standard library, so it runs in the default suite (the engines with extras run in the
scale-out group, tests/scaleout/test_executors.py, which imports `store_cells` from here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from colorbench import tracking
from colorbench.lifecycle.executors import stream
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid

METRICS = ("test_psnr_mean", "test_auc_rebalanced_mean", "test_colorfulness_ratio_mean")


def store_cells(experiment: str) -> dict[str, dict]:
    """FINISHED cell runs by cell id (fails if a cell has two), with their fold runs' count."""
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'cell' and attributes.status = 'FINISHED'")
    ids = [r.data.tags[tracking.TAG_CELL] for r in runs]
    assert len(ids) == len(set(ids)), f"a cell was logged twice: {ids}"
    out = {}
    for run in runs:
        folds = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'FINISHED'")
        out[run.data.tags[tracking.TAG_CELL]] = {"metrics": run.data.metrics, "folds": len(folds)}
    return out


def test_process_executor_matches_local(tiny_grid: dict, tracking_uri: str) -> None:
    local, _ = run_grid(parse_experiment({**tiny_grid, "experiment": "local"}), tracking_uri)
    pooled, _ = run_grid(parse_experiment({**tiny_grid, "experiment": "pooled"}), tracking_uri, "process", {"workers": 2})
    assert [o.cell.id for o in pooled] == [o.cell.id for o in local] and not any(o.failure for o in pooled)
    stored = store_cells("pooled")
    assert set(stored) == {o.cell.id for o in local} and [stored[o.cell.id]["folds"] for o in local] == [1, 2]
    for a, b in zip(local, pooled, strict=True):
        for key in METRICS:
            assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-3), key


def test_a_pool_takes_the_next_task_only_when_one_ends() -> None:
    """The body every pool shares (`executors.stream`): at most `room()` tasks submitted, the next pulled only when one ends, so a grid
    claims each cell just before it trains and a search samples each trial as late as it can."""
    pulled: list[int] = []
    in_flight: list[int] = []

    def tasks() -> Iterator[int]:
        for task in range(5):
            pulled.append(task)
            yield task

    def ended(handles: list[int]) -> list[int]:
        in_flight.append(len(handles))
        return [min(handles)]

    results = stream(tasks(), lambda: 2, lambda task: task, ended, lambda handle: handle * 10)
    assert next(results) == (0, 0) and pulled == [0, 1]  # two started, none more until one ends
    assert next(results) == (1, 10) and pulled == [0, 1, 2]
    assert list(results) == [(2, 20), (3, 30), (4, 40)] and max(in_flight) == 2
    everything = stream(iter(range(3)), lambda: None, lambda task: task, lambda handles: handles, lambda handle: handle)
    assert list(everything) == [(0, 0), (1, 1), (2, 2)]  # no room limit: all submitted at once
