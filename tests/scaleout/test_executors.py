"""`colorbench run --executor slurm|ray` on a tiny grid: every cell once in the store (the process pool: tests/test_process_executor.py)."""

from __future__ import annotations

import pytest
from test_process_executor import store_cells

from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid

pytestmark = pytest.mark.scaleout


def test_slurm_executor_through_submitit_local(tiny_grid: dict, tracking_uri: str, tmp_path) -> None:
    pytest.importorskip("submitit", reason="pip install 'colorbench[slurm]'")
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]  # one job: each starts a fresh Python
    outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri, "slurm", {"cluster": "local", "folder": str(tmp_path / "jobs"), "time": 10})
    assert not any(o.failure for o in outcomes)
    assert set(store_cells("tiny")) == {o.cell.id for o in outcomes}
    assert list((tmp_path / "jobs").glob("*_log.out")), "submitit wrote no job logs: the jobs did not go through it"


def test_ray_executor_on_a_local_cluster(tiny_grid: dict, tracking_uri: str) -> None:
    ray = pytest.importorskip("ray", reason="pip install 'colorbench[ray]'")
    try:
        outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri, "ray", {"num_cpus": 2})
    finally:
        ray.shutdown()
    assert not any(o.failure for o in outcomes)
    stored = store_cells("tiny")
    assert set(stored) == {o.cell.id for o in outcomes} and sorted(c["folds"] for c in stored.values()) == [1, 2]
