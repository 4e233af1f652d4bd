"""The report's table: one row per cell in rank order with its comparison to the baseline (colorbench.report.comparisons), the
gray baseline last.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from colorbench import tracking
from colorbench.errors import ConfigError
from colorbench.metrics import badness
from colorbench.report.comparisons import (
    NOT_COMPARED,
    VERDICT,
    Friedman,
    Images,
    Sample,
    compare,
    computed_columns,
    friedman_test,
    rank_matrix,
    settle,
)
from colorbench.report.runs import ROW, Runs, components, metric_names, per_image
from colorbench.tracking import TAG_ORDER, TAG_SAMPLED, TAG_TRIAL

GRAY = "gray baseline"
SPLIT_PARAMS = ("params.seed", "params.test_fraction", "params.data.", "params.test_data", "params.splitter.")  # decide the folds
SPLIT_COLUMN = re.compile(r"split(\d+)_test_(.+)")  # scikit-learn style per-fold column: fold index, metric


@dataclass(frozen=True)
class Baseline:
    """The cell every other is compared with, and how it was chosen (never by a test metric)."""

    cell: str
    how: str


@dataclass
class Report:
    """A built report: the table (rank order, gray baseline last) and where it was written."""

    experiment: str
    metric: str
    baseline: str
    table: pd.DataFrame
    out_dir: Path
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell label, failure)
    n_images: int = 0
    pruned: int = 0  # search trials stopped by the pruner (not in the table)
    study_figures: list[str] = field(default_factory=list)  # Optuna's plots, for a search experiment
    correction: str = "holm"  # how the p-values were adjusted (colorbench.stats.CORRECTIONS)
    friedman: Friedman | None = None  # across all cells, test images as blocks
    validation: pd.DataFrame | None = None  # the validation schemes' table (report.validation), when the experiment has one
    baseline_how: str = ""  # how the baseline was chosen (`Baseline.how`)
    rope: float = 0.0  # the region of practical equivalence of `metric` used for the verdicts (0: equivalence not judged)
    pairs: pd.DataFrame | None = None  # --all-pairs: every pair of cells of the baseline's replicate (`pair_table`)
    baselines: dict[str, str] = field(default_factory=dict)  # each cell's baseline: the baseline configuration's cell in its replicate
    top: int | None = None  # --top: the cells drawn in the per-cell figures (figures.shown_cells)
    compare: tuple[str, str] | None = None  # --compare: the photo comparison's two cells, when chosen
    published: str = ""  # report.html in the MLflow UI (the experiment's report run), when logged
    notices: list[str] = field(default_factory=list)  # what the report could not do (photos, logging), one line each

    @property
    def replicates(self) -> int:
        """How many replicates (independent data sets) the table's cells come from."""
        return int(self.table["replicate"].nunique())

    @property
    def baseline_row(self) -> pd.Series:
        """The baseline cell's row: its replicate is the one the figures and the Friedman test show."""
        return self.table.set_index("cell").loc[self.baseline]

    def in_replicate(self, row: pd.Series) -> str:
        """` (replicate r)` for a row of an experiment with replicates, else nothing."""
        return f" (replicate {int(row['replicate'])})" if self.replicates > 1 else ""


def match_cell(cell_ids: pd.Series, prefix: str, source: str, option: str = "--baseline") -> str:
    """The one cell id starting with `prefix`; a ConfigError naming `source` (where the prefix came from) and the `option` that
    names a cell otherwise."""
    matches = [c for c in cell_ids if c.startswith(prefix)]
    if len(matches) != 1:
        problem = "matches no finished cell" if not matches else f"is ambiguous ({', '.join(matches)})"
        raise ConfigError(f"{source} {prefix!r} {problem}; cells: {', '.join(cell_ids)}; name one with {option}")
    return matches[0]


def choose_baseline(cells: pd.DataFrame, named: str | None, grid_named: str | None) -> Baseline:
    """The baseline, named before the data: `--baseline` (`named`), else the grid file's `report.baseline` (`grid_named`), else the
    first cell in grid-file order (tag `colorbench.order`), or a search's first finished trial; for runs without the order tag, the
    earliest-started cell, and `how` says so. Never a cell chosen by a test metric."""
    ids = cells[ROW]
    if named is not None:
        return Baseline(match_cell(ids, named, "--baseline"), "named with --baseline")
    if grid_named:
        return Baseline(match_cell(ids, grid_named, "the grid file's report.baseline"), "named in the grid file (report.baseline)")
    replicates = cells.apply(replicate, axis=1)
    cells = cells[replicates == replicates.min()]  # chosen in the first replicate; the other replicates compare with its configuration
    trial = cells.get(f"tags.{TAG_TRIAL}", pd.Series(np.nan, index=cells.index))
    if trial.notna().all():
        first = cells.loc[trial.astype(int).idxmin()]
        return Baseline(first[ROW], f"the search's first finished trial (trial {first[f'tags.{TAG_TRIAL}']})")
    order = cells.get(f"tags.{TAG_ORDER}", pd.Series(np.nan, index=cells.index))
    if order.notna().all():
        ranked = cells.assign(order=order.astype(int)).sort_values(["order", "start_time"])
        finished = "" if ranked["order"].iloc[0] == 0 else " that finished"
        return Baseline(ranked[ROW].iloc[0], f"the first cell in grid-file order{finished}")
    first = cells.sort_values("start_time")[ROW].iloc[0]
    return Baseline(first, "the earliest-started cell: these runs do not record the grid file's order (tag colorbench.order), so the first cell in file order is unknown")


def split_key(cell: pd.Series) -> tuple[tuple[str, str], ...]:
    """What decides a cell's fold splits: cells with equal keys were trained on identical folds."""
    return tuple(sorted((k, str(v)) for k, v in cell.items() if k.startswith(SPLIT_PARAMS) and pd.notna(v)))


def sample(runs: Runs, cell: pd.Series, metric: str, images: Images | None) -> Sample:
    """What a cell brings to a comparison: its children's test metric by (fold, training repeat), their n_val / n_train, its split key, per-image values."""
    folds = runs.folds_of(cell)
    share = (folds["params.n_val"].astype(float) / folds["params.n_train"].astype(float)).mean()
    repeat = folds.get(f"tags.{tracking.TAG_REPEAT}", pd.Series(0, index=folds.index)).fillna(0).astype(int)
    children = folds.assign(repeat=repeat).set_index(["fold", "repeat"]).sort_index()[f"metrics.test_{metric}"]
    return Sample(children, float(share), split_key(cell), images)


def samples_of(runs: Runs, metric: str) -> tuple[dict[str, Sample], dict[str, Images | None]]:
    """Every cell's `Sample` and its per-image values, by row key."""
    by_id = runs.cells.set_index(ROW, drop=False)
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp:
        images = {cid: per_image(runs.folds_of(cell), metric, Path(tmp)) for cid, cell in by_id.iterrows()}
    return {cid: sample(runs, cell, metric, images[cid]) for cid, cell in by_id.iterrows()}, images


def significance(samples: dict[str, Sample], baselines: dict[str, str], metric: str, rope: float) -> pd.DataFrame:
    """Per cell, its comparison with its baseline `baselines[cell]` (colorbench.report.comparisons.compare), not yet settled."""
    rows = {cid: compare(samples[cid], samples[base], metric, rope) for cid, base in baselines.items() if cid != base}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=computed_columns())


def pair_table(samples: dict[str, Sample], cells: list[str], metric: str, rope: float, correction: str) -> pd.DataFrame:
    """--all-pairs: each cell of `cells` (in table order) against each one before it (`cell` - `versus`), every statistic of a
    comparison, settled as one report: p-values adjusted over the pairs within their families, a verdict per pair."""
    rows = [{"cell": a, "versus": b, **compare(samples[a], samples[b], metric, rope)} for i, b in enumerate(cells) for a in cells[i + 1 :]]
    return settle(pd.DataFrame(rows, columns=["cell", "versus", *computed_columns()]), None, correction, metric)


def fold_columns(runs: Runs, cell: pd.Series, metrics: list[str]) -> dict[str, float]:
    """scikit-learn style `split<i>_test_<m>` values of one cell."""
    by_split = runs.folds_of(cell).groupby("fold")  # training repeats of a split averaged
    return {f"split{f}_test_{m}": v for m in metrics for f, v in by_split[f"metrics.test_{m}"].mean().items()}


def cell_row(runs: Runs, cell: pd.Series, metrics: list[str]) -> dict[str, object]:
    """One table row: components, fold means and stds, best epoch, training time, per-fold values."""
    backbone, loss, splitter = components(cell)

    row: dict[str, object] = {"cell": cell[ROW], "backbone": backbone, "loss": loss, "splitter": splitter, "replicate": replicate(cell)}
    if pd.notna(cell.get(f"tags.{TAG_SAMPLED}")):
        row["sampled"] = cell[f"tags.{TAG_SAMPLED}"]
        row["objective"] = cell.get("metrics.objective")
    row["n_folds"] = cell["metrics.n_folds"]
    for key in [f"test_{m}" for m in metrics] + ["best_epoch", "train_seconds"]:
        row[f"{key}_mean"], row[f"{key}_std"] = cell.get(f"metrics.{key}_mean"), cell.get(f"metrics.{key}_std")
    row |= {f"test_{m}_{part}": cell.get(f"metrics.test_{m}_{part}", np.nan) for m in metrics for part in COMPONENTS}
    return row | fold_columns(runs, cell, metrics)


def replicate(run: pd.Series) -> int:
    """A run's replicate (tag colorbench.replicate; 0 for runs made before replicates existed)."""
    value = run.get(f"tags.{tracking.TAG_REPLICATE}")
    return 0 if value is None or pd.isna(value) else int(value)


def replicate_baselines(table: pd.DataFrame, base: str) -> dict[str, str]:
    """Each cell's baseline: the cell of its own replicate with the configuration (backbone, loss, splitter) of `base`, so that every
    comparison stays within a replicate (one data set, one test set); cells of a replicate without that configuration get none."""
    key = ["backbone", "loss", "splitter"]
    rows = table.set_index("cell")
    same = rows[(rows[key] == rows.loc[base, key]).all(axis=1)]
    in_replicate = {r: cid for cid, r in same["replicate"].items()} | {rows.loc[base, "replicate"]: base}
    return {cid: in_replicate[r] for cid, r in rows["replicate"].items() if r in in_replicate}


def one_replicate(runs: Runs, table: pd.DataFrame, base: str) -> tuple[Runs, pd.DataFrame]:
    """The runs and table rows of the baseline's replicate (all of them without replicates): what the figures and the Friedman test
    are drawn on, so that they never mix test sets."""
    cells = table[table["replicate"] == table.set_index("cell").loc[base, "replicate"]]
    return replace(runs, cells=runs.cells[runs.cells[ROW].isin(cells["cell"])]), cells


def gray_row(cells: pd.DataFrame, metrics: list[str]) -> dict[str, object]:
    """The plain-gray prediction (ab = 0) on the same test set, as logged on the cell runs."""
    row: dict[str, object] = {"cell": GRAY, "backbone": "-", "loss": "ab = 0", "splitter": "-"}
    return row | {f"test_{m}_mean": cells[f"metrics.gray_test_{m}"].iloc[0] for m in metrics if f"metrics.gray_test_{m}" in cells}


def build_table(
    runs: Runs, metric: str, baseline: str | None, correction: str = "holm", rope: float = 0.0, all_pairs: bool = False
) -> tuple[pd.DataFrame, Baseline, dict[str, str], int, Friedman | None, pd.DataFrame | None, pd.DataFrame | None]:
    """Cells in rank order within each replicate with their comparison to the baseline of their replicate (raw and adjusted p-values,
    verdicts), then the gray baseline row; also the baseline and how it was chosen, each cell's baseline (`replicate_baselines`), the
    test-set size, over the baseline's replicate the Friedman test and its rank matrix (images x cells) and, with `all_pairs`, the
    table of every pair of that replicate's cells (`pair_table`). `rope` is the metric's region of practical equivalence."""
    metrics = metric_names(runs.cells)
    if metric not in metrics:
        raise ConfigError(f"metric {metric!r} is not logged in this experiment; choose one of: {', '.join(metrics)}")
    base = choose_baseline(runs.cells, baseline, runs.named_baseline)
    table = pd.DataFrame([cell_row(runs, cell, metrics) for _, cell in runs.cells.iterrows()])
    cut = table.columns.get_loc("replicate") + 1
    table.insert(cut, "rank", badness(metric, table[f"test_{metric}_mean"]).groupby(table["replicate"]).rank(method="min").astype("Int64"))
    baselines = replicate_baselines(table, base.cell)
    samples, images = samples_of(runs, metric)
    compared = significance(samples, baselines, metric, rope)
    table = pd.concat([table.iloc[:, : cut + 1], compared.reindex(table["cell"]).set_axis(table.index), table.iloc[:, cut + 1 :]], axis=1)
    shown_runs, shown = one_replicate(runs, table, base.cell)
    matrix = rank_matrix({cid: values for cid, values in images.items() if cid in set(shown["cell"])}, metric)
    omnibus = friedman_test(matrix)
    table = settle(table, omnibus, correction, metric)
    table.insert(cut + 1, "baseline", table["cell"].isin(set(baselines.values())))
    table = table.sort_values(["replicate", "rank", "cell"], na_position="last")
    splits = {c: m for c in table.columns if (m := SPLIT_COLUMN.fullmatch(c))}
    ordered = sorted(splits, key=lambda c: (metrics.index(splits[c].group(2)), int(splits[c].group(1))))
    table = table[[c for c in table.columns if c not in splits] + ordered]
    table = pd.concat([table, pd.DataFrame([gray_row(shown_runs.cells, metrics)])], ignore_index=True)
    table[VERDICT] = table[VERDICT].astype(object).fillna(NOT_COMPARED)  # the baselines and the gray row
    n_images = len(images[base.cell][0]) if images[base.cell] else 0
    in_order = [c for c in table["cell"].iloc[:-1] if c in set(shown["cell"])]
    pairs = pair_table(samples, in_order, metric, rope, correction) if all_pairs else None
    table = table.astype({"n_folds": "Int64", "rank": "Int64", "n_splits": "Int64", "n_images": "Int64"})
    return table, base, baselines, n_images, omnibus, matrix, pairs


def split_columns(table: pd.DataFrame, metric: str) -> list[str]:
    """The per-fold columns of one metric, by fold index."""
    return [c for c in table.columns if (m := SPLIT_COLUMN.fullmatch(c)) and m.group(2) == metric]


COMPONENTS = {"sd_split": "split", "sd_seed": "seed", "se_images": "images"}  # the variance components of a cell's test metric


def label(row: pd.Series, sep: str = " | ") -> str:
    """A cell's components joined by `sep`; a trial's sampled values."""
    if pd.notna(row.get("sampled")):
        return sep.join(row["sampled"].split(" "))
    return sep.join((row["backbone"], row["loss"], row["splitter"]))
