"""A Ray retry picks up the training state: the Ray worker training a fold of a real `colorbench run --executor ray` is killed
(kill -9) at epoch 3 of 6; Ray retries the task in a new worker, which continues the fold from its saved epoch in the same fold
run, to the result of a run never interrupted."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from reliability_support import (
    Colorbench,
    cell_ids,
    cell_runs,
    check_continued,
    check_uninterrupted,
    epochs_logged,
    fold_history,
    fold_runs,
    slow_grid,
    write_grid,
)

from colorbench.lifecycle import states

pytestmark = pytest.mark.scaleout
EPOCHS = 6


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Ray's raylet and its workers, for the driver `colorbench run`), read from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def fold_worker(pid: int) -> int:
    """The Ray worker (a descendant of `pid`) running the fold task: Ray titles it `ray::run_fold_task`."""
    for child in descendants(pid):
        try:
            if b"ray::run_fold_task" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    raise AssertionError("no Ray worker titled ray::run_fold_task below the colorbench process")


def test_a_ray_retry_continues_the_fold_from_its_saved_state(tiny_grid: dict, tracking_uri: str, tmp_path: Path, empty_store: Path) -> None:
    pytest.importorskip("ray", reason="pip install 'colorbench[ray]'")
    grid = slow_grid(tiny_grid, cells=1, epochs=EPOCHS, seconds=0.2)
    [cell] = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    driver = Colorbench.start(path, tracking_uri, "ray", ("--executor", "ray", "--num-cpus", "1"))

    driver.wait_until(lambda: epochs_logged(tracking_uri, cell_runs(tracking_uri, cell)) >= 3)
    [interrupted] = cell_runs(tracking_uri, cell)
    [fold] = fold_runs(tracking_uri, interrupted.info.run_id)
    killed = fold_worker(driver.process.pid)
    os.kill(killed, signal.SIGKILL)  # the worker dies mid-fold; the driver lives on and Ray retries the task
    assert len(fold_history(tracking_uri, fold.info.run_id)) < EPOCHS

    def retried() -> bool:
        try:
            return fold_worker(driver.process.pid) != killed
        except AssertionError:
            return False

    driver.wait_until(retried)  # a new worker runs the task again
    assert driver.wait() == 0, driver.stderr

    check_continued(tracking_uri, cell, interrupted.info.run_id, fold.info.run_id, EPOCHS)  # the retried task continued the fold run
    assert all(s.cell_id != cell for s in states.states())
    check_uninterrupted(path, cell, tracking_uri, fold.info.run_id, tmp_path, empty_store)  # the same grid in one process
