"""`colorbench run`: train every cell of a grid, fold by fold, and log it all to MLflow."""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from rich.progress import Progress, TaskID

from colorbench import tracking
from colorbench.backbones import ColorizationNet, build_model
from colorbench.checkpoints import save_checkpoint
from colorbench.color import lab_to_rgb
from colorbench.colorize import log_cell_model
from colorbench.components import LOSSES
from colorbench.config import Cell, Experiment, expand
from colorbench.data import SOURCES, ImageSet, gray_rgb, lab_batch
from colorbench.errors import DivergedError
from colorbench.losses import Objective
from colorbench.metrics import ColorizationMetrics
from colorbench.plots import image_grid, loss_curves
from colorbench.resolve import cell_labels
from colorbench.splitters import SPLITTERS, Fold, carve_test
from colorbench.train import EpochCallback, FoldResult, evaluate, fit, resolve_device
from colorbench.ui import console, progress

SAMPLE_IMAGES = 6  # test images shown in panels and kept as test_samples.npz
MAX_AB_RMSE = 1000.0  # Lab units: real colours lie within about 260 of each other in ab, so a larger error means the model blew up


@dataclass
class PreparedData:
    """The training pool and the fixed test set, shared by every cell of an experiment."""

    pool: ImageSet
    test: ImageSet
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def prepare_data(exp: Experiment | Cell) -> PreparedData:
    """Decode the data once and carve out the test set (or load `test_data`) identically for every cell."""
    data = SOURCES.build(exp.data.source, exp.data.options)
    skipped = list(data.skipped)
    if exp.test_data is not None:
        pool, test = data, SOURCES.build(exp.test_data.source, exp.test_data.options)
        skipped += test.skipped
    else:
        pool_idx, test_idx = carve_test(data, exp.test_fraction, exp.seed)
        pool, test = data.subset(pool_idx), data.subset(test_idx)
    fingerprint = hashlib.sha1((pool.fingerprint() + test.fingerprint()).encode()).hexdigest()[:16]
    return PreparedData(pool, test, fingerprint, skipped)


@torch.no_grad()
def predict_rgb(model: ColorizationNet, objective: Objective, images: torch.Tensor) -> np.ndarray:
    """uint8 (N,H,W,3) -> colorized float RGB (N,H,W,3) in [0,1], from the images' own L."""
    model.eval()
    L, _ = lab_batch(images.to(next(model.parameters()).device))
    ab = objective.decode(model(L))
    return lab_to_rgb(torch.cat([L, ab], dim=1)).permute(0, 2, 3, 1).cpu().numpy()


def gray_baseline(test: ImageSet) -> dict[str, float]:
    """Metrics of predicting ab = 0 (a plain gray image): the bar every model must clear."""
    meter = ColorizationMetrics()
    for start in range(0, len(test), 64):
        L, ab = lab_batch(torch.from_numpy(test.images[start : start + 64]))
        meter.update(L, torch.zeros_like(ab), ab)
    return meter.compute()


@dataclass
class CellOutcome:
    """How one cell ended: its parent run, fold-mean/std test metrics, or the failure."""

    cell: Cell
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    skipped: bool = False
    elsewhere: str = ""  # host:pid of the process that trained (or is training) it instead of this one


def write_fold_artifacts(
    folder: Path,
    cell: Cell,
    fold: Fold,
    result: FoldResult,
    per_image: list[dict[str, float]],
    model: ColorizationNet,
    objective: Objective,
    test: ImageSet,
) -> None:
    """Loss curve, test panel and samples, checkpoint, resolved config and per-image test metrics of one fold."""
    loss_curves(result.history, folder / "loss_curve.png", result.best_epoch)
    truth = test.images[:SAMPLE_IMAGES]
    predicted = (predict_rgb(model, objective, torch.from_numpy(truth)) * 255).round().astype(np.uint8)
    names = [Path(n).name for n in test.names[:SAMPLE_IMAGES]]
    np.savez_compressed(folder / "test_samples.npz", truth=truth, predicted=predicted, names=np.array(names))
    gray = gray_rgb(truth)
    image_grid([list(row) for row in zip(gray, predicted, truth, strict=True)], ["gray input", "predicted", "truth"], folder / "test_panel.png", names)
    save_checkpoint(folder / "checkpoint.pt", cell, fold.index, test.images.shape[1], result.best_state)
    (folder / "config.yaml").write_text(yaml.safe_dump(cell.model_dump(mode="json"), sort_keys=False))
    with open(folder / "test_per_image.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", *per_image[0]])
        writer.writeheader()
        for name, row in zip(test.names, per_image, strict=True):
            writer.writerow({"image": name, **row})


def train_fold(
    cell: Cell,
    fold: Fold,
    data: PreparedData,
    device: torch.device,
    bar: Progress,
    epoch_task: TaskID,
    after_epoch: EpochCallback | None = None,
) -> dict[str, float]:
    """Train one fold inside its (active) MLflow run; return its test metrics.

    After each epoch the record is logged, passed to `after_epoch` (e.g. a search's pruner), then checked for divergence."""
    torch.manual_seed(cell.train.seed)
    objective = LOSSES.build(cell.loss.name, cell.loss.options)
    model = build_model(cell.backbone.name, cell.backbone.options, objective.out_channels).to(device)
    train_images = torch.from_numpy(data.pool.images[fold.train])
    val_images = torch.from_numpy(data.pool.images[fold.val])
    mlflow.log_params({"fold": fold.index, "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(data.test)})
    bar.reset(epoch_task, total=cell.train.epochs, status="")

    def on_epoch(record: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        bar.update(epoch_task, advance=1, status=f"train {record['train_loss']:.4f} val {record['val_loss']:.4f}")
        if after_epoch:
            after_epoch(record)
        check_divergence(record, cell.train.lr)

    result = fit(model, objective, train_images, val_images, cell.train, on_epoch)
    test_metrics, per_image = evaluate(model, objective, torch.from_numpy(data.test.images), cell.train.batch_size, all_variants=True)
    summary = {f"test_{k}": v for k, v in test_metrics.items()}
    summary.update(best_epoch=result.best_epoch, best_val_loss=min(r["val_loss"] for r in result.history), train_seconds=result.seconds)
    mlflow.log_metrics(summary)
    with tracking.artifact_dir() as folder:
        write_fold_artifacts(folder, cell, fold, result, per_image, model, objective, data.test)
    return summary


def fold_summary(results: list[dict[str, float]]) -> dict[str, float]:
    """`<metric>_mean` and `<metric>_std` (sample std, 0 for one fold) over the folds' results."""
    summary = {}
    for key in results[0]:
        values = np.array([r[key] for r in results], dtype=float)
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def log_cell_summary(run_id: str, results: list[dict[str, float]], gray: dict[str, float], extra: dict[str, float] | None = None) -> dict[str, float]:
    """On the active cell or trial run `run_id`: fold means/stds, the gray baseline (`gray_test_*`), `n_folds`, `extra` metrics and the
    best fold as its pyfunc model (runs:/<run id>/model); returns the means/stds."""
    summary = fold_summary(results)
    mlflow.log_metrics({**summary, **{f"gray_test_{k}": v for k, v in gray.items()}, "n_folds": len(results), **(extra or {})})
    log_cell_model(run_id)
    return summary


def check_divergence(record: dict[str, float], lr: float) -> None:
    """After an epoch: raise DivergedError if its losses are not finite or its validation ab error is beyond any real colour's."""
    losses = [record["train_loss"], record["val_loss"]]
    if all(math.isfinite(v) for v in losses) and record["val_ab_rmse"] <= MAX_AB_RMSE:
        return
    raise DivergedError(
        f"diverged at epoch {int(record['epoch'])}: train loss {losses[0]:.3g}, val loss {losses[1]:.3g}, val ab RMSE {record['val_ab_rmse']:.3g}; "
        f"lower train.lr (now {lr})"
    )


def claim(cell: Cell, experiment_id: str, tags: dict[str, str]) -> CellOutcome:
    """Close the cell's dead runs and claim it (`tracking.claim_cell`): an outcome holding the claimed run id, or a skipped
    one naming the process that holds or finished the cell."""
    stale = tracking.close_stale_runs(experiment_id, cell.id)
    if stale:
        console.print(f"  closed {stale} interrupted run(s) of cell {cell.id} as KILLED")
    result = tracking.claim_cell(experiment_id, cell.id, " | ".join(cell_labels(cell)), tags)
    if result.won:
        return CellOutcome(cell, run_id=result.run_id)
    state = "was trained" if result.finished else "is being trained"
    console.print(f"  cell {cell.id} {state} by another process ({result.holder}, run {result.run_id}); skipping", highlight=False)
    return CellOutcome(cell, run_id=result.run_id, skipped=True, elsewhere=result.holder)


def print_fold(cell: Cell, index: int, n_folds: int, result: dict[str, float]) -> None:
    """One line per trained fold: its test PSNR and colourfulness ratio, best epoch, training time."""
    console.print(
        f"  [dim]{cell.id}[/] {' | '.join(cell_labels(cell))} fold {index + 1}/{n_folds}: test psnr {result['test_psnr']:.2f}, "
        f"colorfulness ratio {result['test_colorfulness_ratio']:.2f} (best epoch {result['best_epoch']}, {result['train_seconds']:.0f} s)"
    )


def run_cell(
    cell: Cell,
    experiment_id: str,
    folds: list[Fold],
    data: PreparedData,
    gray: dict[str, float],
    device: torch.device,
    bar: Progress,
    tasks: dict[str, TaskID],
) -> CellOutcome:
    """Claim the cell (`tracking.claim_cell`; skipped if another process holds or finished it) and train it: one parent run with one
    child run per fold; fold means and stds, the gray baseline (`gray_test_*`) and the best fold's pyfunc model (`model`) on the
    parent. A diverging cell fails alone (DivergedError, checked every epoch)."""
    params = cell.flat_params()
    label = " | ".join(cell_labels(cell))
    tags = tracking.cell_tags(cell, data.fingerprint)
    outcome = claim(cell, experiment_id, tags)
    if outcome.skipped:
        return outcome
    try:
        with tracking.run(label, tags, params, run_id=outcome.run_id) as parent_id, tracking.heartbeat(parent_id):
            results = []
            bar.reset(tasks["fold"], total=len(folds), status=label)
            for fold in folds:
                fold_tags = {**tags, tracking.TAG_ROLE: "fold", tracking.TAG_FOLD: str(fold.index)}
                with tracking.run(f"{label} | fold {fold.index}", fold_tags, params, nested=True):
                    results.append(train_fold(cell, fold, data, device, bar, tasks["epoch"]))
                bar.advance(tasks["fold"])
                print_fold(cell, fold.index, len(folds), results[-1])
            outcome.metrics = log_cell_summary(parent_id, results, gray)
    except DivergedError as err:
        outcome.failure = str(err)
        console.print(f"  [red]cell {cell.id} failed[/]: {err}")
    return outcome


def plan(exp: Experiment) -> list[tuple[Cell, int]]:
    """Each cell with its number of fold trainings, without touching data."""
    return [(cell, SPLITTERS.build(cell.splitter.name, cell.splitter.options).n_splits()) for cell in expand(exp)]


def run_grid(
    exp: Experiment, tracking_uri: str | None = None, executor: str = "local", executor_options: dict[str, Any] | None = None
) -> tuple[list[CellOutcome], dict[str, float]]:
    """Train every unfinished cell of `exp`, in this process (`local`) or as fold tasks of an executor (`process`, `slurm`, `ray`,
    see colorbench.executors); return each cell's outcome and the gray baseline's test metrics."""
    from colorbench.executors import EXECUTORS, run_cells

    engine = None if executor == "local" else EXECUTORS.build(executor, executor_options)  # unknown names/options fail here
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_id = tracking.open_experiment(uri, exp.experiment)
    cells = expand(exp)
    finished = tracking.cell_runs(experiment_id, "FINISHED")
    done = dict(zip(finished.get(f"tags.{tracking.TAG_CELL}", []), finished.get("run_id", []), strict=False))
    todo = [c for c in cells if c.id not in done]
    if done:
        console.print(f"Skipping {len(cells) - len(todo)} finished cell(s) already in experiment {exp.experiment!r}.")
    device = resolve_device(exp.train.device)
    data = prepare_data(exp)
    report_skipped(data.skipped)
    console.print(f"Data: {len(data.pool)} training-pool images, {len(data.test)} test images ({exp.data.source}); device {device}.")
    splits = {}
    for cell in todo:  # fail on impossible splits or unavailable weights before any training
        splits[cell.id] = SPLITTERS.build(cell.splitter.name, cell.splitter.options).split(data.pool, exp.seed)
        build_model(cell.backbone.name, cell.backbone.options, LOSSES.build(cell.loss.name, cell.loss.options).out_channels)
    outcomes = {c.id: CellOutcome(c, run_id=done[c.id], skipped=True) for c in cells if c.id in done}
    gray = gray_baseline(data.test)
    if engine is not None:
        outcomes.update(run_cells(engine, todo, splits, experiment_id, uri, gray, data.fingerprint))
        fill_metrics(experiment_id, outcomes)
        return [outcomes[c.id] for c in cells], gray
    with progress() as bar:
        tasks = {
            "grid": bar.add_task("cells", total=len(todo), status=""),
            "fold": bar.add_task("folds", total=1, status=""),
            "epoch": bar.add_task("epochs", total=exp.train.epochs, status=""),
        }
        for cell in todo:
            outcomes[cell.id] = run_cell(cell, experiment_id, splits[cell.id], data, gray, device, bar, tasks)
            bar.advance(tasks["grid"])
    fill_metrics(experiment_id, outcomes)
    return [outcomes[c.id] for c in cells], gray


def fill_metrics(experiment_id: str, outcomes: dict[str, CellOutcome]) -> None:
    """Read skipped cells' fold means/stds back from their finished parent runs."""
    finished = tracking.cell_runs(experiment_id, "FINISHED")
    for _, row in finished.iterrows():
        outcome = outcomes.get(row.get(f"tags.{tracking.TAG_CELL}"))
        if outcome is not None and outcome.skipped and row["run_id"] == outcome.run_id:
            outcome.metrics = {k[len("metrics.") :]: v for k, v in row.items() if k.startswith("metrics.") and pd.notna(v)}


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """Name (up to 10) and count the files that could not be used."""
    if not skipped:
        return
    console.print(f"[yellow]Skipped {len(skipped)} file(s):[/]")
    for name, reason in skipped[:10]:
        console.print(f"  {name}: {reason}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")
