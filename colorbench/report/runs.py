"""An experiment's runs as the report reads them (through `colorbench.tracking`): finished cells or trials and their folds, each
row's component labels rebuilt from its flat params, per-image values, children, validation histories and test samples.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from colorbench import tracking
from colorbench.errors import ConfigError
from colorbench.metrics import METRICS
from colorbench.registry import Registry
from colorbench.report.comparisons import Images
from colorbench.tracking import TAG_STATE, TAG_TRIAL

ROW = "row"  # a run's row key: the cell id of a grid cell, `trial-N` of a search trial
FINGERPRINT = f"tags.{tracking.TAG_FINGERPRINT}"  # the column of a run's data fingerprint (its pool and test rows)


@dataclass
class Runs:
    """An experiment's finished cell or trial runs (one per row) and their finished fold runs."""

    cells: pd.DataFrame
    folds: pd.DataFrame
    failed: list[tuple[str, str]]
    pruned: int = 0
    named_baseline: str | None = None  # the grid file's `report.baseline`, as the last `colorbench run` recorded it

    def folds_of(self, cell: pd.Series) -> pd.DataFrame:
        """The fold runs of one cell run, by fold index."""
        children = self.folds[self.folds["tags.mlflow.parentRunId"] == cell["run_id"]]
        return children.assign(fold=children[f"tags.{tracking.TAG_FOLD}"].astype(int)).sort_values("fold")


def load_runs(name: str) -> Runs:
    """Finished cell runs (latest per cell) or search-trial runs, their finished folds, what failed, how many trials were pruned, the
    baseline the grid file names."""

    eid = tracking.experiment_id(name)
    df = tracking.experiment_runs(eid)  # newest first
    if df.empty:
        raise ConfigError(f"experiment {name!r} has no runs; run `colorbench run` on its grid first")
    role = df[f"tags.{tracking.TAG_ROLE}"]
    trial = df.get(f"tags.{TAG_TRIAL}", pd.Series(None, index=df.index, dtype=object))
    df[ROW] = np.where(role == "trial", "trial-" + trial.astype(str), df[f"tags.{tracking.TAG_CELL}"])
    finished, parent = df["status"] == "FINISHED", role.isin(tracking.PARENT_ROLES)
    cells = df[finished & parent].drop_duplicates(ROW)
    if cells.empty:
        raise ConfigError(f"experiment {name!r} has no finished cells or trials (all failed or were interrupted); run it again")
    folds = df[finished & (role == "fold") & df["tags.mlflow.parentRunId"].isin(cells["run_id"])]
    failed_runs = df[(df["status"] == "FAILED") & parent & ~df[ROW].isin(cells[ROW])].drop_duplicates(ROW)
    failure = failed_runs.get(f"tags.{tracking.TAG_FAILURE}", pd.Series("", index=failed_runs.index)).fillna("")
    failed = [(row[ROW] + ": " + " | ".join(components(row)), reason) for (_, row), reason in zip(failed_runs.iterrows(), failure, strict=True)]
    pruned = int((df.get(f"tags.{TAG_STATE}", pd.Series(dtype=object)) == "PRUNED").sum())
    return Runs(cells.reset_index(drop=True), folds, failed, pruned, tracking.experiment_tag(eid, tracking.TAG_BASELINE) or None)


def component_label(row: pd.Series, axis: str, registry: Registry, every: bool = False) -> str:
    """`name(options)` of a run's component, rebuilt from its flattened `params.<axis>.*` (see `Registry.label`)."""
    prefix = f"params.{axis}."
    options: dict = {}
    for key, value in row.items():
        if key.startswith(prefix) and key != prefix + "name" and pd.notna(value):
            *path, leaf = key[len(prefix) :].split(".")
            target = options
            for part in path:
                target = target.setdefault(part, {})
            target[leaf] = yaml.safe_load(value)
    return registry.label(row[prefix + "name"], options, every=every)


def components(row: pd.Series) -> tuple[str, str, str]:
    """(backbone, loss, splitter) labels; the splitter keeps all its options (k, val_fraction)."""
    from colorbench.components import BACKBONES, LOSSES, SPLITTERS  # the labels need the registries' defaults (and so torch)

    return component_label(row, "backbone", BACKBONES), component_label(row, "loss", LOSSES), component_label(row, "splitter", SPLITTERS, every=True)


def metric_names(cells: pd.DataFrame) -> list[str]:
    """Test metrics logged as `test_<m>_mean` on the cell runs, in the metric table's order, other names (decodings) last."""
    found = {m.group(1) for c in cells.columns if (m := re.fullmatch(r"metrics\.test_(.+)_mean", c)) and cells[c].notna().any()}
    return [m for m in METRICS if m in found] + sorted(found - set(METRICS))


def per_image_values(folds: pd.DataFrame, tmp: Path) -> pd.DataFrame:
    """Every per-image test metric averaged over folds (their `test_per_image.csv`), one row per test image in test-set order, with
    the image names in column `image`."""
    return tracking.per_image_mean(list(folds["run_id"]), tmp).reset_index()


def per_image(folds: pd.DataFrame, metric: str, tmp: Path) -> Images | None:
    """Test image names and the per-image `metric` averaged over folds; None when it is not logged per image."""
    values = per_image_values(folds, tmp)
    if metric not in values.columns:
        return None
    return values["image"].tolist(), values[metric].to_numpy(float)


def children(runs: Runs, table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every finished child run: its cell, configuration (backbone x loss, or a trial's sampled values), splitter, replicate, draw,
    repeat, test `metric` and validation `metric` at its best epoch."""
    rows = []
    for _, cell in runs.cells.iterrows():
        row = table.set_index("cell").loc[cell[ROW]]
        configuration = row["sampled"] if pd.notna(row.get("sampled")) else f"{row['backbone']} | {row['loss']}"
        folds = runs.folds_of(cell)
        draw, repeat = (folds.get(f"tags.{tag}", pd.Series(0, index=folds.index)).fillna(0).astype(int) for tag in (tracking.TAG_DRAW, tracking.TAG_REPEAT))
        rows.append(pd.DataFrame({
            "cell": cell[ROW], "configuration": configuration, "splitter": row["splitter"], "replicate": row["replicate"],
            "run_id": folds["run_id"], "fold": folds["fold"],
            "draw": draw, "repeat": repeat, "best_epoch": folds["metrics.best_epoch"], "test": folds[f"metrics.test_{metric}"],
        }))
    kids = pd.concat(rows, ignore_index=True)
    return kids.assign(val=validation_values(kids, metric))


def validation_values(children: pd.DataFrame, metric: str) -> pd.Series:
    """Each child's validation `metric` at its best epoch, read from its MLflow metric history (NaN where not logged)."""
    values = []
    for run_id, best in zip(children["run_id"], children["best_epoch"], strict=True):
        history = dict(tracking.metric_history(run_id, f"val_{metric}"))
        values.append(history.get(int(best), np.nan) if pd.notna(best) else np.nan)
    return pd.Series(values, index=children.index, dtype=float)


def val_loss_curves(runs: Runs) -> dict[str, pd.Series]:
    """Each cell's validation loss per epoch, mean over its folds, by the cell's component labels."""
    curves = {}
    for _, cell in runs.cells.iterrows():
        history = pd.DataFrame(
            [step_value for run_id in runs.folds_of(cell)["run_id"] for step_value in tracking.metric_history(run_id, "val_loss")],
            columns=["epoch", "val_loss"],
        )
        curves[" | ".join(components(cell))] = history.groupby("epoch")["val_loss"].mean()
    return curves


def sample_predictions(runs: Runs, cells: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """The test samples (`truth`, `predicted`, `names`) of each of `cells` (row keys), from its first fold run."""
    by_id = runs.cells.set_index(ROW)
    samples = []
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp:
        for cid in cells:
            run_id = runs.folds_of(by_id.loc[cid])["run_id"].iloc[0]
            with np.load(tracking.download(run_id, "test_samples.npz", Path(tmp) / run_id)) as npz:
                samples.append({k: npz[k] for k in ("truth", "predicted", "names")})
    return samples
