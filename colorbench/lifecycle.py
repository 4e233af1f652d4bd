"""The one lifecycle of a cell, for the grid (`runner`), each search trial (`search`) and every executor (`executors`).

1. Prepare the data once (`prepare_data`; the decode-once cache makes it cheap in a worker too) and the gray baseline.
2. Hold the cell's parent run: claimed for a grid cell (`claim`), created for a search trial (`CellRun`).
3. Train its folds where an executor puts them: each `FoldTask` trains in its own fold run (`run_fold`), in this process
   (`run_here`) or in a worker (`run_fold_task`).
   Each split trains `train.repeats` times (training seed `train.seed + repeat`): one child run per (split, repeat).
4. Finish the cell (`CellRun.finish`): means/stds over the children, the variance components (between splits, between training
   seeds, over test images), the gray baseline and the deployed child (best validation score, never a test metric), run FINISHED.

One failure policy: any exception in a fold fails that cell (its run FAILED, the reason in `colorbench.failure`) and the grid or
search goes on; a pruned trial ends KILLED (Optuna: PRUNED); Ctrl-C and SIGTERM end the open runs KILLED; a failure of the
tracking store itself ends the grid with one StoreError line (`tracking.store_guard`).
"""

from __future__ import annotations

import csv
import hashlib
import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.tracking import MlflowClient
from rich.progress import Progress, TaskID

from colorbench import cache, tracking
from colorbench.backbones import ColorizationNet, build_model
from colorbench.checkpoints import log_cell_model, save_checkpoint
from colorbench.color import lab_to_rgb
from colorbench.components import LOSSES
from colorbench.config import Cell, Experiment
from colorbench.data import SOURCES, ImageSet, gray_rgb, lab_batch, rows
from colorbench.errors import DivergedError, StoreError, TrialPruned
from colorbench.losses import Objective
from colorbench.metrics import ColorizationMetrics
from colorbench.plots import image_grid, loss_curves
from colorbench.plugins import load_plugins, loaded_plugins
from colorbench.resolve import cell_labels
from colorbench.splitters import Fold, carve_test, subsample_photos, with_repeats
from colorbench.stats import variance_components
from colorbench.train import EpochCallback, FoldResult, evaluate, fit, resolve_device
from colorbench.ui import console, progress, quiet_libraries

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
    """Decode the data once, draw its `subsample` and carve out the test set (or load `test_data`) identically for every cell of a
    replicate: all three seeded by the data seed."""
    data = SOURCES.build(exp.data.source, exp.data.options)
    skipped = list(data.skipped)
    if exp.data.subsample is not None:
        data = data.subset(subsample_photos(data, exp.data.subsample, exp.seed))
    if exp.test_data is not None:
        pool, test = data, SOURCES.build(exp.test_data.source, exp.test_data.options)
        skipped += test.skipped
    else:
        pool_idx, test_idx = carve_test(data, exp.test_fraction, exp.seed)
        pool, test = data.subset(pool_idx), data.subset(test_idx)
    fingerprint = hashlib.sha1((pool.fingerprint() + test.fingerprint()).encode()).hexdigest()[:16]
    return PreparedData(pool, test, fingerprint, skipped)


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """Name (up to 10) and count the files that could not be used."""
    if not skipped:
        return
    console.print(f"[yellow]Skipped {len(skipped)} file(s):[/]")
    for name, reason in skipped[:10]:
        console.print(f"  {name}: {reason}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")


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
    state: Path | None = None,
) -> dict[str, float]:
    """Train one fold inside its (active) MLflow run; return its test metrics.

    After each epoch the record is logged, passed to `after_epoch` (e.g. a search's pruner), then checked for divergence. With a
    `state` file, the training state is saved there (`cache.save_state`), and also as the run's artifact
    `training_state/<file name>` when its artifact store is remote (`tracking.upload_state`); when one is there already,
    training continues from it: epochs the run has not logged yet are logged first, so each epoch is logged once, at its own step,
    and the saved epochs pass through `after_epoch` again (a search's reporter then scores the fold as if uninterrupted)."""
    train_cfg = cell.train.model_copy(update={"seed": cell.train.seed + fold.repeat})  # a training repeat: new init and batch order
    if fold.refit_epochs is not None:
        train_cfg = train_cfg.model_copy(update={"epochs": fold.refit_epochs, "patience": None})
    torch.manual_seed(train_cfg.seed)
    objective = LOSSES.build(cell.loss.name, cell.loss.options)
    model = build_model(cell.backbone.name, cell.backbone.options, objective.out_channels).to(device)
    train_images = rows(data.pool.images, fold.train)  # views of the cache's memory map: batches are read as training needs them
    val_images = rows(data.pool.images, fold.val)
    mlflow.log_params({"fold": fold.index, "draw": fold.draw, "repeat": fold.repeat, "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(data.test)})
    bar.reset(epoch_task, total=train_cfg.epochs, status="")
    run_id = mlflow.active_run().info.run_id
    tracking.log_datasets(run_id, cell.data.model_dump(mode="json"), data.fingerprint)
    resume = None if state is None else cache.load_state(state)
    logged = tracking.logged_steps(run_id, "val_loss") if resume else set()
    if resume:
        tracking.log_history([r for r in resume["history"] if r["epoch"] not in logged])
        bar.update(epoch_task, completed=resume["epoch"], status=f"resumed after epoch {resume['epoch']}")
        for record in resume["history"] if after_epoch else []:  # a search's reporter sees every epoch, as in an uninterrupted fold
            after_epoch(record)

    def on_epoch(record: dict[str, float]) -> None:
        if record["epoch"] not in logged:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        bar.update(epoch_task, advance=1, status=f"train {record['train_loss']:.4f} val {record['val_loss']:.4f}")
        if after_epoch:
            after_epoch(record)
        check_divergence(record, cell.train.lr)

    remote = state is not None and tracking.remote_artifacts(run_id)

    def save_here(training: dict[str, object]) -> None:
        cache.save_state(state, training)
        if remote:
            tracking.upload_state(run_id, state)

    save = None if state is None else save_here
    result = fit(model, objective, train_images, val_images, train_cfg, on_epoch, keep_last=fold.refit_epochs is not None, resume=resume, save_state=save)
    test_metrics, per_image = evaluate(model, objective, data.test.images, cell.train.batch_size, all_variants=True)
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


ChildKey = tuple[int, int]  # a child run of a cell: (fold index, training repeat)


def finished_children(run_id: str, role: str = "fold") -> dict[ChildKey, str]:
    """The finished child runs (`fold`, or the `refit`) of a cell or trial run, by (fold index, training repeat)."""
    query = f"tags.`{tracking.TAG_PARENT}` = '{run_id}' and tags.`{tracking.TAG_ROLE}` = '{role}' and attributes.status = 'FINISHED'"
    runs = MlflowClient().search_runs([mlflow.get_run(run_id).info.experiment_id], filter_string=query, max_results=10_000)
    return {(int(r.data.tags[tracking.TAG_FOLD]), int(r.data.tags.get(tracking.TAG_REPEAT, 0))): r.info.run_id for r in runs}


def variance_summary(results: dict[ChildKey, dict[str, float]], children: dict[ChildKey, str]) -> dict[str, float]:
    """Per test metric `m` with per-image values: `test_<m>_sd_split`, `test_<m>_sd_seed` and `test_<m>_se_images`
    (`stats.variance_components`), the per-image values averaged over the children (their `test_per_image.csv`)."""
    keys = sorted(results)
    with tempfile.TemporaryDirectory(prefix="colorbench-") as tmp:
        tables = [pd.read_csv(tracking.download(children[k], "test_per_image.csv", Path(tmp) / str(i))).set_index("image") for i, k in enumerate(keys)]
    per_image = sum(tables) / len(tables)
    out = {}
    for metric in (c for c in per_image.columns if f"test_{c}" in results[keys[0]]):
        values = np.array([results[k][f"test_{metric}"] for k in keys])
        parts = variance_components(values, np.array([k[0] for k in keys]), per_image[metric].to_numpy())
        out.update({f"test_{metric}_{part}": value for part, value in parts.items()})
    return out


def log_cell_summary(
    run_id: str, results: dict[ChildKey, dict[str, float]], scores: dict[ChildKey, float], maximize: bool, gray: dict[str, float],
    extra: dict[str, float] | None = None, refit: str | None = None,
) -> dict[str, float]:
    """On the active cell or trial run `run_id`: means/stds over all children, the variance components (`variance_summary`), the
    gray baseline (`gray_test_*`), `n_folds` (children), `extra` metrics, and the deployed child: the one with the best validation
    score (`scores`; no test metric takes part) or else the `refit` child run, tagged `colorbench.deployed` and logged as the run's pyfunc model
    (runs:/<run id>/model); returns the means/stds and the components."""
    summary = fold_summary([results[k] for k in sorted(results)])
    children = finished_children(run_id)
    components = variance_summary(results, children)
    mlflow.log_metrics({**summary, **components, **{f"gray_test_{k}": v for k, v in gray.items()}, "n_folds": len(results), **(extra or {})})
    chosen = (max if maximize else min)(sorted(scores), key=lambda k: scores[k])
    mlflow.set_tag(tracking.TAG_DEPLOYED, refit or children[chosen])
    log_cell_model(run_id)
    return {**summary, **components}


def check_divergence(record: dict[str, float], lr: float) -> None:
    """After an epoch: raise DivergedError if its losses are not finite or its validation ab error is beyond any real colour's."""
    losses = [record["train_loss"], record["val_loss"]]
    if all(math.isfinite(v) for v in losses) and record["val_ab_rmse"] <= MAX_AB_RMSE:
        return
    raise DivergedError(
        f"diverged at epoch {int(record['epoch'])}: train loss {losses[0]:.3g}, val loss {losses[1]:.3g}, val ab RMSE {record['val_ab_rmse']:.3g}; "
        f"lower train.lr (now {lr})"
    )


def fold_label(cell: Cell, fold: Fold, n_folds: int) -> str:
    """`fold i/n`, with ` repeat r/R` when the cell trains each split more than once."""
    repeat = f" repeat {fold.repeat + 1}/{cell.train.repeats}" if cell.train.repeats > 1 else ""
    return f"fold {fold.index + 1}/{n_folds}{repeat}"


def print_fold(cell: Cell, fold: Fold, n_folds: int, result: dict[str, float]) -> None:
    """One line per trained fold: its test PSNR and colourfulness ratio, best epoch, training time."""
    console.print(
        f"  [dim]{cell.id}[/] {' | '.join(cell_labels(cell))} {fold_label(cell, fold, n_folds)}: test psnr {result['test_psnr']:.2f}, "
        f"colorfulness ratio {result['test_colorfulness_ratio']:.2f} (best epoch {result['best_epoch']}, {result['train_seconds']:.0f} s)"
    )


@dataclass(frozen=True)
class FoldTask:
    """One fold training of a held cell, self-contained so it can run in another process or on another machine."""

    cell: Cell
    fold: Fold
    n_folds: int
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    name: str  # the fold run is named "<name> | fold <index>" (" | repeat <r>" added with train.repeats > 1)
    tags: dict[str, str]  # the cell or trial run's tags, which the fold run carries too (`tracking.fold_tags`)
    plugins: tuple[str, ...] = ()  # plugin modules the worker imports first


TaskResult = dict[str, float] | BaseException


@dataclass
class Workbench:
    """What a fold needs to train in this process: the prepared data, the device, the progress display and, for a search trial,
    the pruner's per-epoch callback."""

    data: PreparedData
    device: torch.device
    bar: Progress
    epoch_task: TaskID | None = None
    after_epoch: EpochCallback | None = None
    replicates: dict[int, PreparedData] = field(default_factory=dict)  # a grid's data by replicate (`data` is then replicate 0's)

    def data_of(self, cell: Cell) -> PreparedData:
        """The prepared data of `cell`'s replicate."""
        return self.replicates[cell.replicate] if self.replicates else self.data


class Executor(Protocol):
    """Runs fold tasks somewhere and yields each with its metrics (or the exception it raised) as it completes. It may consume
    `tasks` lazily (one after another in this process: each cell is claimed just before it trains) or at once (a pool)."""

    def run(self, tasks: Iterable[FoldTask], bench: Workbench) -> Iterator[tuple[FoldTask, TaskResult]]: ...


def fold_state(task: FoldTask) -> tuple[Path, str | None]:
    """The task's training state file and the fold run that saved it, which the fold continues in (None: no state, train from epoch
    1 in a new run). A state missing here (another machine saved it) is fetched from that run's artifacts, where a remote
    artifact store keeps a copy (`tracking.download_state`)."""
    fold = task.fold
    state = cache.state_path(task.cell.id, task.parent_run_id, fold.index, fold.repeat)
    earlier = tracking.fold_run(task.experiment_id, task.parent_run_id, fold.index, fold.repeat)
    if earlier is not None and not state.exists() and tracking.remote_artifacts(earlier):
        tracking.download_state(earlier, state)
    return state, earlier if state.exists() else None


def run_fold(task: FoldTask, bench: Workbench) -> dict[str, float]:
    """Train the task's fold in its own fold run (a child of the cell or trial run, tagged like it); return its test metrics. A fold
    that saved a training state (an interrupted process, a retried task, here or on another machine) continues from it in the same
    fold run (`fold_state`)."""
    fold = task.fold
    if bench.epoch_task is None:
        bench.epoch_task = bench.bar.add_task("epochs", total=task.cell.train.epochs, status="")
    with tracking.store_guard(task.tracking_uri):
        state, earlier = fold_state(task)
        refit = fold.refit_epochs is not None
        tags = tracking.fold_tags(task.tags, fold.index, fold.draw, fold.repeat, task.parent_run_id, "refit" if refit else "fold")
        repeat = f" | repeat {fold.repeat}" if task.cell.train.repeats > 1 else ""
        name = f"{task.name} | refit" if refit else f"{task.name} | fold {fold.index}{repeat}"
        with tracking.run(name, tags, task.cell.flat_params(), run_id=earlier):
            return train_fold(task.cell, fold, bench.data_of(task.cell), bench.device, bench.bar, bench.epoch_task, bench.after_epoch, state)


def run_here(tasks: Iterable[FoldTask], bench: Workbench) -> Iterator[tuple[FoldTask, TaskResult]]:
    """Train each task in this process, one after another: a fold's exception is its result (KeyboardInterrupt and SystemExit end
    everything)."""
    for task in tasks:
        try:
            result: TaskResult = run_fold(task, bench)
        except Exception as err:  # noqa: BLE001 - a failed fold fails its cell, not the grid
            result = err
        yield task, result


def close_earlier_attempts(task: FoldTask) -> None:
    """A retried task (its worker was lost) first closes the runs its earlier attempts left RUNNING, except one that saved a training
    state: the task continues in it (`run_fold`)."""
    query = (
        f"tags.`{tracking.TAG_PARENT}` = '{task.parent_run_id}' and tags.`{tracking.TAG_FOLD}` = '{task.fold.index}' "
        f"and tags.`{tracking.TAG_REPEAT}` = '{task.fold.repeat}' and attributes.status = 'RUNNING'"
    )
    resumed = fold_state(task)[1] is not None
    for run in MlflowClient().search_runs([task.experiment_id], filter_string=query, max_results=100):
        if resumed and run.data.tags.get(tracking.TAG_REPEAT) == str(task.fold.repeat):
            continue
        tracking.close_run(run.info.run_id, "KILLED", "interrupted: its worker was lost; the task was retried")


def run_fold_task(task: FoldTask) -> dict[str, float]:
    """Worker side (another process or machine): import the plugins, load the data (the decode-once cache makes this cheap),
    train the fold; return its test metrics."""
    quiet_libraries()
    load_plugins(task.plugins)
    data = prepare_data(task.cell)
    with tracking.store_guard(task.tracking_uri):
        mlflow.set_tracking_uri(task.tracking_uri)
        mlflow.set_experiment(experiment_id=task.experiment_id)
        close_earlier_attempts(task)
    with progress(False) as bar:
        return run_fold(task, Workbench(data, resolve_device(task.cell.train.device), bar))


@dataclass
class CellRun:
    """A cell (or search trial) whose parent run this process holds: its fold tasks, their results so far, the first failure."""

    cell: Cell
    run_id: str
    name: str  # its fold runs are named "<name> | fold <index>"
    tags: dict[str, str]  # the parent run's tags, copied onto its fold runs
    folds: list[Fold]
    results: dict[ChildKey, dict[str, float]] = field(default_factory=dict)
    scores: dict[ChildKey, float] = field(default_factory=dict)  # each child's validation score, which picks the deployed child
    maximize: bool = False  # whether a higher score is better (a search objective's direction; the grid's best_val_loss: no)
    error: BaseException | None = None
    sent: int = 0
    done: int = 0
    all_sent: bool = False
    closed: bool = False
    held: ExitStack = field(default_factory=ExitStack)  # the claim's heartbeat, for a grid cell

    def tasks(self, experiment_id: str, tracking_uri: str) -> Iterator[FoldTask]:
        """Its fold tasks, each split `train.repeats` times, stopping after a failed fold (so folds trained one after another do not
        train the rest)."""
        plugins = tuple(loaded_plugins())
        for fold in with_repeats(self.folds, self.cell.train.repeats):
            if self.error is not None:
                break
            self.sent += 1
            yield FoldTask(self.cell, fold, len(self.folds), self.run_id, experiment_id, tracking_uri, self.name, self.tags, plugins)
        self.all_sent = True

    @property
    def settled(self) -> bool:
        """Every fold task it sent has reported."""
        return self.all_sent and self.done == self.sent

    def record(self, task: FoldTask, result: TaskResult, score: float | None = None) -> None:
        """Note one fold's result, its validation `score` (default: its best_val_loss) and print it; a failure of the store itself
        ends everything (StoreError)."""
        self.done += 1
        if isinstance(result, StoreError):
            raise result
        if isinstance(result, BaseException):
            self.error = self.error or result
            if not isinstance(result, TrialPruned):
                where = f"{self.cell.id} {' | '.join(cell_labels(self.cell))} {fold_label(self.cell, task.fold, task.n_folds)}"
                console.print(f"  [red]{where} failed[/]: {result}", highlight=False)
            return
        key = (task.fold.index, task.fold.repeat)
        self.results[key] = result
        self.scores[key] = result["best_val_loss"] if score is None else score
        print_fold(self.cell, task.fold, task.n_folds, result)

    @property
    def failure(self) -> str | None:
        """The first failed fold's message, if any."""
        return None if self.error is None else str(self.error) or type(self.error).__name__

    def finish(self, gray: dict[str, float], bench: Workbench, extra: dict[str, float] | None = None) -> dict[str, float]:
        """All folds reported: log the fold means/stds, the variance components, the gray baseline and the deployed child and end the run FINISHED; after a
        failed fold end it FAILED (KILLED when pruned) with the reason instead. Returns the means/stds ({} on a failure)."""
        refit = self.refit(bench) if self.error is None and self.cell.train.refit else None
        self.held.close()
        self.closed = True
        cache.drop_states(self.cell.id, self.run_id)  # ended for good: nothing left to resume
        tracking.drop_remote_states(self.run_id)
        self.set_state("COMPLETE" if self.error is None else "PRUNED" if isinstance(self.error, TrialPruned) else "FAIL")
        if self.error is not None:
            tracking.close_run(self.run_id, tracking.status_for(self.error), tracking.failure_reason(self.error))
            return {}
        with tracking.run(self.name, {}, {}, run_id=self.run_id) as run_id:
            tracking.log_datasets(run_id, self.cell.data.model_dump(mode="json"), self.tags.get(tracking.TAG_FINGERPRINT, ""))
            extra = {**(extra or {}), **({"refit_epochs": refit[1]} if refit else {})}
            return log_cell_summary(run_id, self.results, self.scores, self.maximize, gray, extra, refit and refit[0])

    def refit(self, bench: Workbench) -> tuple[str, int] | None:
        """`train.refit`: train one model here on train + validation of the first split for the children's median best epoch, score
        it on the test set in its own child run (role `refit`); returns (its run id, its epochs), or None after noting its failure."""
        first = self.folds[0]
        epochs = max(1, round(float(np.median([r["best_epoch"] for r in self.results.values()]))))
        pool = np.union1d(first.train, first.val)
        fold = Fold(len(self.folds), pool, pool, refit_epochs=epochs)  # no held-out data: its val_* records are on its training rows
        experiment_id = MlflowClient().get_run(self.run_id).info.experiment_id
        task = FoldTask(self.cell, fold, len(self.folds), self.run_id, experiment_id, mlflow.get_tracking_uri(), self.name, self.tags)
        try:
            run_fold(task, replace(bench, after_epoch=None))
        except Exception as err:  # noqa: BLE001 - a failed refit fails its cell, like a failed fold
            self.error = err
            return None
        return finished_children(self.run_id, "refit")[(fold.index, 0)], epochs

    def abort(self, error: BaseException) -> None:
        """Interrupted (Ctrl-C, SIGTERM) or the store failed: end the run KILLED with the reason, as far as the store still allows."""
        self.held.close()
        if self.closed:
            return
        self.closed = True
        with tracking.preflight():  # a server that is gone fails at once instead of after minutes of retries
            self.set_state("FAIL")
            tracking.close_run(self.run_id, tracking.status_for(error), tracking.failure_reason(error))

    def set_state(self, state: str) -> None:
        """A search trial's run records how its Optuna trial ended (`tracking.TAG_STATE`)."""
        if self.tags.get(tracking.TAG_ROLE) == "trial":
            MlflowClient().set_tag(self.run_id, tracking.TAG_STATE, state)


def abort_all(cells: Iterable[CellRun], error: BaseException) -> None:
    """Close every open cell run KILLED (`CellRun.abort`); once the store refuses a write, the rest are left to the next run, which
    closes them as stale."""
    for held in cells:
        try:
            held.abort(error)
        except Exception:  # noqa: BLE001 - the store is down: the same command closes them when it works again
            return


def resumable(cell_id: str, run_id: str) -> bool:
    """Whether the cell or trial run `run_id` has folds that saved a training state, here or as its fold runs' artifacts."""
    return cache.has_states(cell_id, run_id) or bool(tracking.state_runs(run_id))


def claim(cell: Cell, experiment_id: str, tags: dict[str, str]) -> CellOutcome:
    """Close the cell's dead runs and claim it (`tracking.claim_cell`): an outcome holding the claimed run id, or a skipped
    one naming the process that holds or finished the cell. An interrupted cell run whose folds saved training states is not
    closed but claimed again, so its folds continue in their own fold runs."""
    keep = partial(resumable, cell.id)
    stale = tracking.close_stale_runs(experiment_id, cell.id, keep=keep)
    if stale:
        console.print(f"  closed {stale} interrupted run(s) of cell {cell.id} as KILLED")
    result = tracking.claim_cell(experiment_id, cell.id, " | ".join(cell_labels(cell)), tags, keep)
    if result.resumed:
        console.print(f"  resuming cell {cell.id} in its interrupted run {result.run_id} from its folds' saved training states", highlight=False)
    if result.won:
        return CellOutcome(cell, run_id=result.run_id)
    state = "was trained" if result.finished else "is being trained"
    console.print(f"  cell {cell.id} {state} by another process ({result.holder}, run {result.run_id}); skipping", highlight=False)
    return CellOutcome(cell, run_id=result.run_id, skipped=True, elsewhere=result.holder)


def run_cells(
    executor: Executor,
    cells: list[Cell],
    splits: dict[str, list[Fold]],
    experiment_id: str,
    tracking_uri: str,
    data: dict[int, PreparedData],
    gray: dict[int, dict[str, float]],
    device: torch.device,
    overrides: Sequence[str] = (),
) -> dict[str, CellOutcome]:
    """The grid's lifecycle: claim each cell just before `executor` takes its first fold task (a pool takes them all at once), send
    its folds, finish each cell when its last fold reports. A failed fold fails its cell only; Ctrl-C, SIGTERM or a failed store
    end the open cell runs KILLED and stop the grid. `data` and the `gray` baseline's metrics are per replicate. Every run is tagged
    with the command line's `overrides`."""
    uri = tracking.absolute_uri(tracking_uri)
    outcomes: dict[str, CellOutcome] = {}
    open_cells: dict[str, CellRun] = {}
    with progress() as bar:
        cells_bar = bar.add_task("cells", total=len(cells), status="")
        bench = Workbench(data[min(data)], device, bar, replicates=data)
        folds_bar = bar.add_task("folds", total=sum(len(splits[c.id]) * c.train.repeats for c in cells), status=type(executor).__name__)

        def settle(held: CellRun) -> None:
            if held.settled:
                metrics = held.finish(gray[held.cell.replicate], bench)
                outcomes[held.cell.id] = CellOutcome(held.cell, held.run_id, metrics, held.failure)
                del open_cells[held.cell.id]
                bar.advance(cells_bar)

        def tasks() -> Iterator[FoldTask]:
            for cell in cells:
                tags = {**tracking.cell_tags(cell, data[cell.replicate].fingerprint, overrides), tracking.TAG_ROLE: "cell"}
                outcome = claim(cell, experiment_id, tags)
                if outcome.skipped:
                    outcomes[cell.id] = outcome
                    bar.advance(cells_bar)
                    bar.advance(folds_bar, len(splits[cell.id]) * cell.train.repeats)
                    continue
                label = " | ".join(cell_labels(cell))
                tracking.log_params(outcome.run_id, cell.flat_params())
                held = open_cells[cell.id] = CellRun(cell, outcome.run_id, label, tags, splits[cell.id])
                held.held.enter_context(tracking.heartbeat(outcome.run_id))
                bar.update(folds_bar, status=label)
                yield from held.tasks(experiment_id, uri)
                settle(held)

        try:
            with tracking.store_guard(uri):
                for task, result in executor.run(tasks(), bench):
                    held = open_cells[task.cell.id]
                    held.record(task, result)
                    bar.advance(folds_bar)
                    settle(held)
        except BaseException as err:
            abort_all(list(open_cells.values()), err)
            raise
    return outcomes
