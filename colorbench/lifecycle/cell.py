"""Steps 2 and 4 of a cell's lifecycle: hold the cell's parent run (`claim` for a grid cell, `CellRun` for both), send its fold
tasks to an executor, finish it (fold means, variance components, the deployed child); and the grid's loop over cells (`run_cells`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import torch

from colorbench import tracking
from colorbench.checkpoints import log_cell_model
from colorbench.config import Cell
from colorbench.errors import StoreError, TrialPruned
from colorbench.lifecycle import states
from colorbench.lifecycle.fold import Executor, FoldTask, TaskResult, Workbench, run_fold
from colorbench.lifecycle.prepare import PreparedData
from colorbench.plugins import loaded_plugins
from colorbench.resolve import cell_labels
from colorbench.splitters import Fold, with_repeats
from colorbench.stats import variance_components
from colorbench.ui import console, progress


@dataclass
class CellOutcome:
    """How one cell ended: its parent run, fold-mean/std test metrics, or the failure."""

    cell: Cell
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    skipped: bool = False
    elsewhere: str = ""  # host:pid of the process that trained (or is training) it instead of this one


def fold_summary(results: list[dict[str, float]]) -> dict[str, float]:
    """`<metric>_mean` and `<metric>_std` (sample std, 0 for one fold) over the folds' results."""
    summary = {}
    for key in results[0]:
        values = np.array([r[key] for r in results], dtype=float)
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


ChildKey = tuple[int, int]  # a child run of a cell: (fold index, training repeat)


def variance_summary(results: dict[ChildKey, dict[str, float]], children: dict[ChildKey, str]) -> dict[str, float]:
    """Per test metric `m` with per-image values: `test_<m>_sd_split`, `test_<m>_sd_seed` and `test_<m>_se_images`
    (`stats.variance_components`), the per-image values averaged over the children (their `test_per_image.csv`)."""
    keys = sorted(results)
    with tempfile.TemporaryDirectory(prefix="colorbench-") as tmp:
        per_image = tracking.per_image_mean([children[k] for k in keys], Path(tmp))
    out = {}
    for metric in (c for c in per_image.columns if f"test_{c}" in results[keys[0]]):
        values = np.array([results[k][f"test_{metric}"] for k in keys])
        parts = variance_components(values, np.array([k[0] for k in keys]), per_image[metric].dropna().to_numpy())  # NaN: no value for that image
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
    children = tracking.finished_children(run_id)
    components = variance_summary(results, children)
    mlflow.log_metrics({**summary, **components, **{f"gray_test_{k}": v for k, v in gray.items()}, "n_folds": len(results), **(extra or {})})
    chosen = (max if maximize else min)(sorted(scores), key=lambda k: scores[k])
    mlflow.set_tag(tracking.TAG_DEPLOYED, refit or children[chosen])
    log_cell_model(run_id)
    return {**summary, **components}


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
        states.drop_states(self.cell.id, self.run_id)  # ended for good: nothing left to resume
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
        experiment_id = tracking.experiment_of(self.run_id)
        task = FoldTask(self.cell, fold, len(self.folds), self.run_id, experiment_id, mlflow.get_tracking_uri(), self.name, self.tags)
        try:
            run_fold(task, replace(bench, after_epoch=None))
        except Exception as err:  # noqa: BLE001 - a failed refit fails its cell, like a failed fold
            self.error = err
            return None
        return tracking.finished_children(self.run_id, "refit")[(fold.index, 0)], epochs

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
            tracking.set_tag(self.run_id, tracking.TAG_STATE, state)


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
    return states.has_states(cell_id, run_id) or bool(tracking.state_runs(run_id))


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
    order: Mapping[str, int] | None = None,
) -> dict[str, CellOutcome]:
    """The grid's lifecycle: claim each cell just before `executor` takes its first fold task (a pool as its workers free up), send
    its folds, finish each cell when its last fold reports. A failed fold fails its cell only; Ctrl-C, SIGTERM or a failed store
    end the open cell runs KILLED and stop the grid. `data` and the `gray` baseline's metrics are per replicate. Every run is tagged
    with the command line's `overrides`, and each cell run with its place in the grid file's `order` of cell ids (`tracking.TAG_ORDER`)."""
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
                if order is not None:
                    tags[tracking.TAG_ORDER] = str(order[cell.id])
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
