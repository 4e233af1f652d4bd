"""Step 3 of a cell's lifecycle: one fold task trained in its own fold run, in this process (`run_here`) or in a worker
(`run_task`), continuing from its saved training state when it has one; the `Task` protocol (a fold, or a whole search trial)
and the `Executor` protocol that runs tasks.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import mlflow
import numpy as np
import torch
import yaml
from rich.progress import Progress, TaskID

from colorbench import tracking
from colorbench.backbones import ColorizationNet, build_model
from colorbench.checkpoints import save_checkpoint
from colorbench.color import lab_to_rgb
from colorbench.components import LOSSES
from colorbench.config import Cell
from colorbench.images import ImageSet, gray_rgb, lab_batch, rows
from colorbench.lifecycle import states
from colorbench.lifecycle.prepare import PreparedData, prepare_data
from colorbench.losses import Objective
from colorbench.metrics import CHOSEN, decoded
from colorbench.plots import image_grid, loss_curves
from colorbench.plugins import load_plugins
from colorbench.splitters import Fold, training_seed
from colorbench.train import EpochCallback, FoldResult, Images, autocast_dtype, choose_decoding, evaluate, fit, resolve_device
from colorbench.ui import progress, quiet_libraries

SAMPLE_IMAGES = 6  # test images shown in panels and kept as test_samples.npz


@torch.no_grad()
def predict_rgb(model: ColorizationNet, objective: Objective, images: torch.Tensor) -> np.ndarray:
    """uint8 (N,H,W,3) -> colorized float RGB (N,H,W,3) in [0,1], from the images' own L."""
    model.eval()
    L, _ = lab_batch(images.to(next(model.parameters()).device))
    ab = objective.decode(model(L))
    return lab_to_rgb(torch.cat([L, ab], dim=1)).permute(0, 2, 3, 1).cpu().numpy()


def write_fold_artifacts(
    folder: Path,
    cell: Cell,
    fold: Fold,
    result: FoldResult,
    per_image: list[dict[str, float]],
    model: ColorizationNet,
    objective: Objective,
    test: ImageSet,
    decoding: dict[str, float] | None = None,
) -> None:
    """Loss curve, test panel and samples, checkpoint (with the `decoding` chosen on validation), resolved config and per-image test
    metrics of one fold."""
    loss_curves(result.history, folder / "loss_curve.png", result.best_epoch)
    truth = test.images[:SAMPLE_IMAGES]
    predicted = (predict_rgb(model, objective, torch.from_numpy(truth)) * 255).round().astype(np.uint8)
    names = [Path(n).name for n in test.names[:SAMPLE_IMAGES]]
    np.savez_compressed(folder / "test_samples.npz", truth=truth, predicted=predicted, names=np.array(names))
    gray = gray_rgb(truth)
    image_grid([list(row) for row in zip(gray, predicted, truth, strict=True)], ["gray input", "predicted", "truth"], folder / "test_panel.png", names)
    save_checkpoint(folder / "checkpoint.pt", cell, fold.index, test.images.shape[1], result.best_state, decoding)
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

    After each epoch the record is logged and passed to `after_epoch` (e.g. a search's pruner); `fit` then checks it for divergence. With a
    `state` file, the training state is saved there (`states.save_state`), and also as the run's artifact
    `training_state/<file name>` when its artifact store is remote (`tracking.upload_state`); when one is there already,
    training continues from it: epochs the run has not logged yet are logged first, so each epoch is logged once, at its own step,
    and the saved epochs pass through `after_epoch` again (a search's reporter then scores the fold as if uninterrupted)."""
    train_cfg = cell.train.model_copy(update={"seed": training_seed(cell.train.seed, fold)})  # per split and repeat: new init and batch order
    if fold.refit_epochs is not None:
        train_cfg = train_cfg.model_copy(update={"epochs": fold.refit_epochs, "patience": None})
    torch.manual_seed(train_cfg.seed)
    objective = LOSSES.build(cell.loss.name, cell.loss.options)
    model = build_model(cell.backbone.name, cell.backbone.options, objective.out_channels).to(device)
    train_images = rows(data.pool.images, fold.train)  # views of the cache's memory map: batches are read as training needs them
    val_images = rows(data.pool.images, fold.val)
    mlflow.log_params({"fold": fold.index, "draw": fold.draw, "repeat": fold.repeat, "training_seed": train_cfg.seed, "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(data.test)})
    bar.reset(epoch_task, total=train_cfg.epochs, status="")
    run_id = mlflow.active_run().info.run_id
    tracking.log_datasets(run_id, cell.data.model_dump(mode="json"), data.fingerprint)
    resume = None if state is None else states.load_state(state)
    logged = tracking.logged_steps(run_id, "val_loss") if resume else set()
    if resume:
        tracking.log_history([r for r in resume["history"] if r["epoch"] not in logged])
        bar.update(epoch_task, completed=resume["epoch"], status=f"resumed after epoch {resume['epoch']}")
        for record in resume["history"] if after_epoch else []:  # a search's reporter sees every epoch, as in an uninterrupted fold
            after_epoch(record)

    def on_epoch(record: dict[str, float]) -> None:
        if record["epoch"] not in logged:
            tracking.log_epoch(record)
        bar.update(epoch_task, advance=1, status=f"train {record['train_loss']:.4f} val {record['val_loss']:.4f}")
        if after_epoch:
            after_epoch(record)

    remote = state is not None and tracking.remote_artifacts(run_id)

    def save_here(training: dict[str, object]) -> None:
        states.save_state(state, training)
        if remote:
            tracking.upload_state(run_id, state)

    save = None if state is None else save_here
    result = fit(model, objective, train_images, val_images, train_cfg, on_epoch, keep_last=fold.refit_epochs is not None, resume=resume, save_state=save)
    decoding, chosen = choose_fold_decoding(cell, model, objective, val_images, device)
    test_metrics, per_image = evaluate(model, objective, data.test.images, cell.train.batch_size, all_variants=True)
    summary = {f"test_{k}": v for k, v in test_metrics.items()}
    summary.update(best_epoch=result.best_epoch, best_val_loss=min(r["val_loss"] for r in result.history), train_seconds=result.seconds, **chosen)
    mlflow.log_metrics(summary)
    with tracking.artifact_dir() as folder:
        write_fold_artifacts(folder, cell, fold, result, per_image, model, objective, data.test, decoding)
    return summary


def choose_fold_decoding(
    cell: Cell, model: ColorizationNet, objective: Objective, val_images: Images, device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    """`train.decode`: tune the best checkpoint's decoding on the fold's validation rows (`train.choose_decoding`; never a test row)
    and log the choice as a param of the fold run (`decode_temperature` or `chroma_scale`). Returns ({that name: the value}, metrics
    for the summary: the value and the validation metrics at it, `val_<metric>.chosen`); two empty dicts without the rule."""
    rule = cell.train.decode
    if rule is None:
        return {}, {}
    value, scores = choose_decoding(model, objective, val_images, rule, cell.train.batch_size, autocast_dtype(cell.train.precision, device))
    mlflow.log_param(objective.tuning, value)
    return {objective.tuning: value}, {objective.tuning: value, **{f"val_{decoded(k, CHOSEN)}": v for k, v in scores[value].items()}}


class Task(Protocol):
    """Work an executor runs, self-contained so it can run in another process or on another machine: one fold of a cell
    (`FoldTask`) or a whole search trial (`colorbench.search.trial.TrialTask`)."""

    kind: ClassVar[str]  # "fold", "trial": Ray names its tasks `run_<kind>_task`
    cell: Cell  # whose data a worker prepares and whose device it trains on
    experiment_id: str
    tracking_uri: str
    plugins: tuple[str, ...]  # plugin modules a worker imports first

    def run(self, bench: Workbench) -> Any:
        """Do the work in a process that has the data (`bench`); return what the executor yields with the task."""
        ...

    def retried(self) -> None:
        """In a worker, before `run`: close what an earlier attempt of this task left open (its worker was lost)."""
        ...


TaskT = TypeVar("TaskT", bound=Task)
TaskResult = Any  # what the task's `run` returned, or the exception it raised


@dataclass(frozen=True)
class FoldTask:
    """One fold training of a held cell."""

    kind: ClassVar[str] = "fold"
    cell: Cell
    fold: Fold
    n_folds: int
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    name: str  # the fold run is named "<name> | fold <index>" (" | repeat <r>" added with train.repeats > 1)
    tags: dict[str, str]  # the cell or trial run's tags, which the fold run carries too (`tracking.fold_tags`)
    plugins: tuple[str, ...] = ()

    def run(self, bench: Workbench) -> dict[str, float]:
        """Train the fold in its fold run (`run_fold`); its test metrics."""
        return run_fold(self, bench)

    def retried(self) -> None:
        close_earlier_attempts(self)


@dataclass
class Workbench:
    """What a task needs to run in this process: the prepared data, the device, the progress display and, for a search trial,
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
    """Runs tasks somewhere and yields each with its result (or the exception it raised) as it completes. It takes a task from
    `tasks` only when it can start it (one after another in this process; as a worker frees up in a pool), so a grid claims each
    cell just before it trains and a search samples each trial as late as it can."""

    def run(self, tasks: Iterable[TaskT], bench: Workbench) -> Iterator[tuple[TaskT, TaskResult]]: ...


def fold_state(task: FoldTask) -> tuple[Path, str | None]:
    """The task's training state file and the fold run that saved it, which the fold continues in (None: no state, train from epoch
    1 in a new run). A state missing here (another machine saved it) is fetched from that run's artifacts, where a remote
    artifact store keeps a copy (`tracking.download_state`)."""
    fold = task.fold
    state = states.state_path(task.cell.id, task.parent_run_id, fold.index, fold.repeat)
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


def run_here(tasks: Iterable[TaskT], bench: Workbench) -> Iterator[tuple[TaskT, TaskResult]]:
    """Run each task in this process, one after another: a task's exception is its result (KeyboardInterrupt and SystemExit end
    everything)."""
    for task in tasks:
        try:
            result: TaskResult = task.run(bench)
        except Exception as err:  # noqa: BLE001 - a failed fold fails its cell (a failed trial its trial), not the grid or the study
            result = err
        yield task, result


def close_earlier_attempts(task: FoldTask) -> None:
    """A retried task (its worker was lost) first closes the runs its earlier attempts left RUNNING, except one that saved a training
    state: the task continues in it (`run_fold`)."""
    resumed = fold_state(task)[1] is not None
    for run in tracking.running_fold_runs(task.experiment_id, task.parent_run_id, task.fold.index, task.fold.repeat):
        if resumed and run.data.tags.get(tracking.TAG_REPEAT) == str(task.fold.repeat):
            continue
        tracking.close_run(run.info.run_id, "KILLED", "interrupted: its worker was lost; the task was retried")


def run_task(task: Task) -> TaskResult:
    """Worker side (another process or machine): import the plugins, load the data (the decode-once cache makes this cheap), close
    what an earlier attempt left open, run the task; return its result."""
    quiet_libraries()
    load_plugins(task.plugins)
    data = prepare_data(task.cell)
    with tracking.store_guard(task.tracking_uri):
        mlflow.set_tracking_uri(task.tracking_uri)
        mlflow.set_experiment(experiment_id=task.experiment_id)
        task.retried()
    with progress(False) as bar:
        return task.run(Workbench(data, resolve_device(task.cell.train.device), bar))
