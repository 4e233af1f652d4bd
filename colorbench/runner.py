"""`colorbench run`: train every cell of a grid, fold by fold, where its executor puts them, and log it all to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from colorbench import tracking
from colorbench.backbones import build_model
from colorbench.components import LOSSES
from colorbench.config import Cell, Experiment, expand, named_baseline
from colorbench.errors import ConfigError
from colorbench.lifecycle.cell import CellOutcome, run_cells
from colorbench.lifecycle.executors import EXECUTORS
from colorbench.lifecycle.prepare import PreparedData, gray_baseline, prepare_data, report_skipped
from colorbench.splitters import SPLITTERS
from colorbench.train import resolve_device
from colorbench.ui import console


def plan(exp: Experiment) -> list[tuple[Cell, int]]:
    """Each cell with its number of fold trainings (splits x training repeats), without touching data."""
    return [(cell, SPLITTERS.build(cell.splitter.name, cell.splitter.options).n_splits() * cell.train.repeats) for cell in expand(exp)]


def run_grid(
    exp: Experiment,
    tracking_uri: str | None = None,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[list[CellOutcome], dict[str, float]]:
    """Train every unfinished cell of `exp` through the cell lifecycle (`lifecycle.cell.run_cells`), its folds on `executor` (`local`,
    `process`, `slurm`, `ray` or a plugin's, see colorbench.lifecycle.executors); return each cell's outcome and the gray baseline's test
    metrics (of replicate 0's test set). `overrides`, the command line's that made `exp`, are tagged on every run (`tracking.TAG_OVERRIDES`);
    each cell run records its place in the file's order (`tracking.TAG_ORDER`) and the experiment the file's `report.baseline`
    (`tracking.TAG_BASELINE`)."""
    engine = EXECUTORS.build(executor, executor_options)  # unknown names/options fail here
    cells = expand(exp)
    baseline = named_baseline(exp, cells)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_id = tracking.open_experiment(uri, exp.experiment)
    tracking.set_experiment_tag(experiment_id, tracking.TAG_BASELINE, baseline or "")  # the grid file run last names the report's baseline
    done = {c.id: runs[0] for c in cells if (runs := tracking.finished_cell_runs(c.id, experiment_id))}  # one query per cell, not per run
    todo = [c for c in cells if c.id not in done]
    if done:
        console.print(f"Skipping {len(cells) - len(todo)} finished cell(s) already in experiment {exp.experiment!r}.")
    device = resolve_device(exp.train.device)
    data = replicate_data(cells)
    report_skipped(data[0].skipped)
    sizes = f"{len(data[0].pool)} training-pool images, {len(data[0].test)} test images"
    console.print(f"Data: {sizes} ({exp.data.source}){f' in each of {exp.replicates} replicates' if exp.replicates > 1 else ''}; device {device}.")
    splits = {}
    for cell in todo:  # fail on impossible splits or unavailable weights before any training
        splits[cell.id] = SPLITTERS.build(cell.splitter.name, cell.splitter.options).split(data[cell.replicate].pool, cell.seed)
        objective = LOSSES.build(cell.loss.name, cell.loss.options)
        build_model(cell.backbone.name, cell.backbone.options, objective.out_channels)
        if cell.train.decode is not None and objective.tuning is None:
            raise ConfigError(f"train.decode: loss {cell.loss.name!r} has no decoding parameter to choose on validation; drop train.decode")
    outcomes = {c.id: CellOutcome(c, run.info.run_id, dict(run.data.metrics), skipped=True) for c in cells if (run := done.get(c.id))}
    gray = {r: gray_baseline(d.test) for r, d in data.items()}
    order = {c.id: i for i, c in enumerate(cells)}  # the file's order, recorded on each cell run: the report's default baseline is the first
    outcomes.update(run_cells(engine, todo, splits, experiment_id, uri, data, gray, device, overrides, order))
    fill_metrics(outcomes)
    return [outcomes[c.id] for c in cells], gray[0]


def replicate_data(cells: list[Cell]) -> dict[int, PreparedData]:
    """Each replicate's pool and test set (`lifecycle.prepare_data` with the replicate's data seed), by replicate."""
    first = {cell.replicate: cell for cell in reversed(cells)}
    return {r: prepare_data(first[r]) for r in sorted(first)}


def fill_metrics(outcomes: dict[str, CellOutcome]) -> None:
    """Read the fold means/stds of the cells another process trained meanwhile back from their runs, once FINISHED."""
    for outcome in outcomes.values():
        if outcome.skipped and not outcome.metrics and (run := tracking.get_run(outcome.run_id)).info.status == "FINISHED":
            outcome.metrics = dict(run.data.metrics)
