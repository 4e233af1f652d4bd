"""Scenarios 1, 2 and 7 with real `colorbench run` processes on one SQLite store: kill -9 and rerun, Ctrl-C, two runs at once."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
from reliability_support import Colorbench, cell_ids, cell_runs, fold_runs, runs, slow_grid, statuses, training, write_grid

from colorbench import cli, tracking

pytestmark = pytest.mark.processes


def table_row(stdout: str, cell_id: str) -> str:
    """The first line of a cell's row in the summary table's first column: its id, then its note (`(skipped: done)`, `(trained by`
    another process), if any; the table is 160 characters wide, so a long note wraps."""
    rows = re.findall(rf"^ *({cell_id}[^│]*)│", stdout, flags=re.MULTILINE)
    assert len(rows) == 1, f"cell {cell_id} is listed {len(rows)} times:\n{stdout}"
    return rows[0].strip()


def test_kill_9_mid_cell_then_rerun_finishes_the_grid_without_retraining(
    tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    grid = slow_grid(tiny_grid, cells=2, epochs=3, seconds=0.2)
    first, second = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    killed = Colorbench.start(path, tracking_uri, "killed")
    killed.wait_until(lambda: statuses(cell_runs(tracking_uri, first)) == ["FINISHED"] and training(tracking_uri, second))
    os.kill(killed.process.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    [done] = cell_runs(tracking_uri, first)
    [interrupted] = cell_runs(tracking_uri, second)
    assert interrupted.info.status == "RUNNING"  # what a kill -9 leaves behind
    assert interrupted.data.tags[tracking.TAG_CLAIM_PID] == str(killed.process.pid)

    assert cli.main(["run", str(path), "--tracking-uri", tracking_uri]) == 0  # the rerun (in this process, to save a start-up)
    rerun = capsys.readouterr()
    assert "Skipping 1 finished cell(s)" in rerun.err
    assert f"resuming cell {second} in its interrupted run {interrupted.info.run_id}" in rerun.err  # its fold saved its state
    assert [r.info.run_id for r in cell_runs(tracking_uri, first)] == [done.info.run_id]  # not retrained
    [resumed] = cell_runs(tracking_uri, second)
    assert (resumed.info.run_id, resumed.info.status) == (interrupted.info.run_id, "FINISHED")
    assert resumed.data.tags[tracking.TAG_CLAIM_PID] == str(os.getpid())  # claimed again by the rerun
    assert statuses(fold_runs(tracking_uri, interrupted.info.run_id)) == ["FINISHED"]  # the same fold run, continued
    assert table_row(rerun.out, first).startswith(f"{first} (skipped")
    assert table_row(rerun.out, second) == second


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_closes_the_runs_as_killed_and_says_how_to_resume(tiny_grid: dict, tracking_uri: str, tmp_path: Path, stop: int) -> None:
    grid = slow_grid(tiny_grid, cells=1, epochs=3, seconds=0.2)
    [cell] = cell_ids(grid)
    interrupted = Colorbench.start(write_grid(tmp_path, grid), tracking_uri)
    interrupted.wait_until(lambda: training(tracking_uri, cell))
    interrupted.process.send_signal(stop)  # SIGTERM: what Slurm, `kill` and container stops send
    assert interrupted.wait(timeout=60) == 130
    last = interrupted.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and "run the same command again to resume" in last
    [parent] = cell_runs(tracking_uri, cell)
    assert parent.info.status == "KILLED" and parent.data.tags[tracking.TAG_FAILURE].startswith("KeyboardInterrupt")
    assert statuses(fold_runs(tracking_uri, parent.info.run_id)) == ["KILLED"]


def test_two_processes_on_one_grid_train_every_cell_exactly_once(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    grid = slow_grid(tiny_grid, cells=4, epochs=2, seconds=0.1)
    ids = cell_ids(grid)
    path = write_grid(tmp_path, grid)
    both = [Colorbench.start(path, tracking_uri, name) for name in ("a", "b")]  # same grid, same store, same moment
    for process in both:
        assert process.wait() == 0, process.stderr
    assert {r.info.status for r in runs(tracking_uri)} == {"FINISHED"}  # lost claims were deleted, nothing left RUNNING
    trained_by = Counter()
    for cell in ids:
        [finished] = cell_runs(tracking_uri, cell)
        trained_by[int(finished.data.tags[tracking.TAG_CLAIM_PID])] += 1
    assert set(trained_by) <= {p.process.pid for p in both} and sum(trained_by.values()) == len(ids)
    for process in both:  # each table lists every cell once; those it trained itself carry no note
        here = [cell for cell in ids if table_row(process.stdout, cell) == cell]
        assert len(here) == trained_by[process.process.pid], process.stdout
        notes = [table_row(process.stdout, cell)[len(cell) :] for cell in ids if cell not in here]
        assert all(note.startswith((" (trained by", " (skipped")) for note in notes), process.stdout
