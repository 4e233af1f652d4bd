"""`colorbench report`: one experiment's cells as a ranked table with significance tests, figures and a summary."""

from __future__ import annotations

import math
import re
import shlex
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import yaml
from matplotlib.ticker import MaxNLocator
from mlflow.tracking import MlflowClient

from colorbench import tracking, validation_report
from colorbench.comparisons import (
    ADJUSTED,
    COLUMNS,
    P_TTEST,
    P_WILCOXON,
    Friedman,
    Images,
    Sample,
    adjust_report,
    compare,
    friedman_test,
    rank_matrix,
)
from colorbench.errors import ConfigError
from colorbench.metrics import BETTER_WORDS, DECODING_MARK, METRICS, decoded, headline_metrics, metric_spec
from colorbench.plots import image_grid
from colorbench.registry import Registry
from colorbench.stats import CORRECTIONS, cd_diagram
from colorbench.tracking import TAG_SAMPLED, TAG_STATE, TAG_STORAGE, TAG_STUDY, TAG_TRIAL
from colorbench.ui import console

ALPHA = 0.05
GRAY = "gray baseline"
SPLIT_PARAMS = ("params.seed", "params.test_fraction", "params.data.", "params.test_data", "params.splitter.")  # decide the folds
FIGURES = {"bar.png": "bar chart", "folds.png": "per-fold spread", "val_loss.png": "validation loss", "samples.png": "test samples"}
SPLIT_COLUMN = re.compile(r"split(\d+)_test_(.+)")  # scikit-learn style per-fold column: fold index, metric
SAMPLE_COLUMNS = 8  # cells (best first) shown in samples.png


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
    validation: pd.DataFrame | None = None  # the validation schemes' table (validation_report), when the experiment has one
    baselines: dict[str, str] = field(default_factory=dict)  # each cell's baseline: the baseline configuration's cell in its replicate

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


ROW = "row"  # a run's row key: the cell id of a grid cell, `trial-N` of a search trial


@dataclass
class Runs:
    """An experiment's finished cell or trial runs (one per row) and their finished fold runs."""

    cells: pd.DataFrame
    folds: pd.DataFrame
    failed: list[tuple[str, str]]
    pruned: int = 0

    def folds_of(self, cell: pd.Series) -> pd.DataFrame:
        """The fold runs of one cell run, by fold index."""
        children = self.folds[self.folds["tags.mlflow.parentRunId"] == cell["run_id"]]
        return children.assign(fold=children[f"tags.{tracking.TAG_FOLD}"].astype(int)).sort_values("fold")


def open_store(tracking_uri: str | None) -> None:
    """Point MLflow at the store (a missing SQLite file is an error, not a new empty store)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no MLflow store at {db}; run `colorbench run` first or pass --tracking-uri")
    mlflow.set_tracking_uri(uri)


def experiment_id(name: str) -> str:
    """The id of experiment `name`; a ConfigError listing the existing experiments otherwise."""
    found = mlflow.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        existing = ", ".join(sorted(e.name for e in mlflow.search_experiments())) or "none"
        raise ConfigError(f"no MLflow experiment {name!r} in {mlflow.get_tracking_uri()}; existing experiments: {existing}")
    return found.experiment_id


def load_runs(name: str) -> Runs:
    """Finished cell runs (latest per cell) or search-trial runs, their finished folds, what failed, how many trials were pruned."""

    df = mlflow.search_runs([experiment_id(name)], max_results=50000)  # newest first
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
    return Runs(cells.reset_index(drop=True), folds, failed, pruned)


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


def better(metric: str) -> str:
    """`higher`, `lower` or `one`, from the metric table (a decoding such as `psnr.mode` reads as its metric)."""
    spec = metric_spec(metric)
    if spec is None:
        raise ConfigError(f"metric {metric!r} is not in the metric table (colorbench.metrics.METRICS), so its direction is unknown; rank on another")
    return spec.better


def badness(metric: str, values: pd.Series) -> pd.Series:
    """Lower is better: the value for lower-is-better metrics, the distance from 1 for closest-to-1 ones, minus it otherwise."""
    return {"lower": values, "one": (values - 1).abs()}.get(better(metric), -values)


def resolve_baseline(cell_ids: pd.Series, ranks: pd.Series, baseline: str | None) -> str:
    """The baseline cell id: a unique prefix of one, or the top-ranked cell."""
    if baseline is None:
        return cell_ids[ranks.idxmin()]
    matches = [c for c in cell_ids if c.startswith(baseline)]
    if len(matches) != 1:
        problem = "matches no cell" if not matches else f"is ambiguous ({', '.join(matches)})"
        raise ConfigError(f"--baseline {baseline!r} {problem}; cells: {', '.join(cell_ids)}")
    return matches[0]


def split_key(cell: pd.Series) -> tuple[tuple[str, str], ...]:
    """What decides a cell's fold splits: cells with equal keys were trained on identical folds."""
    return tuple(sorted((k, str(v)) for k, v in cell.items() if k.startswith(SPLIT_PARAMS) and pd.notna(v)))


def per_image(folds: pd.DataFrame, metric: str, tmp: Path) -> Images | None:
    """Test image names and the per-image `metric` averaged over folds; None when it is not logged per image."""
    frames = [pd.read_csv(tracking.download(run_id, "test_per_image.csv", tmp / run_id)) for run_id in folds["run_id"]]
    if metric not in frames[0].columns:
        return None
    return frames[0]["image"].tolist(), np.mean([f[metric].to_numpy(float) for f in frames], axis=0)


def sample(runs: Runs, cell: pd.Series, metric: str, images: Images | None) -> Sample:
    """What a cell brings to a comparison: its children's test metric by (fold, training repeat), their n_val / n_train, its split key, per-image values."""
    folds = runs.folds_of(cell)
    share = (folds["params.n_val"].astype(float) / folds["params.n_train"].astype(float)).mean()
    repeat = folds.get(f"tags.{tracking.TAG_REPEAT}", pd.Series(0, index=folds.index)).fillna(0).astype(int)
    children = folds.assign(repeat=repeat).set_index(["fold", "repeat"]).sort_index()[f"metrics.test_{metric}"]  # J = splits x repeats
    return Sample(children, float(share), split_key(cell), images)


def significance(runs: Runs, baselines: dict[str, str], metric: str) -> tuple[pd.DataFrame, dict[str, Images | None]]:
    """Per cell, its comparison with its baseline `baselines[cell]` (colorbench.comparisons.compare); and every cell's per-image values."""
    by_id = runs.cells.set_index(ROW, drop=False)
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp:
        images = {cid: per_image(runs.folds_of(cell), metric, Path(tmp)) for cid, cell in by_id.iterrows()}
    samples = {cid: sample(runs, cell, metric, images[cid]) for cid, cell in by_id.iterrows()}
    rows = {cid: compare(samples[cid], samples[base], bad_values(metric)) for cid, base in baselines.items() if cid != base}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=COLUMNS), images


def bad_values(metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """`badness` of `metric` on arrays."""
    return lambda values: badness(metric, pd.Series(values, dtype=float)).to_numpy()


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
    runs: Runs, metric: str, baseline: str | None, correction: str = "holm"
) -> tuple[pd.DataFrame, str, dict[str, str], int, Friedman | None, pd.DataFrame | None]:
    """Cells in rank order within each replicate with their comparison to the baseline of their replicate (raw and adjusted p-values),
    then the gray baseline row; also the baseline id (the one named, else the best cell of the first replicate), each cell's baseline
    (`replicate_baselines`), the test-set size, and over the baseline's replicate the Friedman test and its rank matrix (images x
    cells)."""
    metrics = metric_names(runs.cells)
    if metric not in metrics:
        raise ConfigError(f"metric {metric!r} is not logged in this experiment; choose one of: {', '.join(metrics)}")
    table = pd.DataFrame([cell_row(runs, cell, metrics) for _, cell in runs.cells.iterrows()])
    cut = table.columns.get_loc("replicate") + 1
    table.insert(cut, "rank", badness(metric, table[f"test_{metric}_mean"]).groupby(table["replicate"]).rank(method="min").astype("Int64"))
    base = resolve_baseline(table["cell"], table["rank"].where(table["replicate"] == table["replicate"].min()), baseline)
    baselines = replicate_baselines(table, base)
    compared, images = significance(runs, baselines, metric)
    table = pd.concat([table.iloc[:, : cut + 1], compared.reindex(table["cell"]).set_axis(table.index), table.iloc[:, cut + 1 :]], axis=1)
    shown_runs, shown = one_replicate(runs, table, base)
    matrix = rank_matrix({cid: values for cid, values in images.items() if cid in set(shown["cell"])}, bad_values(metric))
    omnibus = friedman_test(matrix)
    table = adjust_report(table, omnibus, correction)
    table.insert(cut + 1, "baseline", table["cell"].isin(set(baselines.values())))
    table = table.sort_values(["replicate", "rank", "cell"], na_position="last")
    splits = {c: m for c in table.columns if (m := SPLIT_COLUMN.fullmatch(c))}
    ordered = sorted(splits, key=lambda c: (metrics.index(splits[c].group(2)), int(splits[c].group(1))))
    table = table[[c for c in table.columns if c not in splits] + ordered]
    table = pd.concat([table, pd.DataFrame([gray_row(shown_runs.cells, metrics)])], ignore_index=True)
    n_images = len(images[base][0]) if images[base] else 0
    return table.astype({"n_folds": "Int64", "rank": "Int64", "n_children": "Int64", "n_images": "Int64"}), base, baselines, n_images, omnibus, matrix


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
    return kids.assign(val=validation_report.validation_values(kids, metric))


def split_columns(table: pd.DataFrame, metric: str) -> list[str]:
    """The per-fold columns of one metric, by fold index."""
    return [c for c in table.columns if (m := SPLIT_COLUMN.fullmatch(c)) and m.group(2) == metric]


def mean_std(row: pd.Series, key: str) -> str:
    """`mean ± std` (std only over several folds), `-` when missing."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if pd.notna(row.get("n_folds")) and row["n_folds"] > 1 else f"{mean:.3f}"


COMPONENTS = {"sd_split": "split", "sd_seed": "seed", "se_images": "images"}  # the variance components of a cell's test metric


def components_text(values: Mapping[str, object], key: str) -> str:
    """The variance components of test metric `key` that exist (e.g. `split 0.120, seed 0.050, images 0.310`), `-` when none do."""
    parts = [(word, values.get(f"{key}_{part}")) for part, word in COMPONENTS.items()]
    shown = [f"{word} {value:.3f}" for word, value in parts if isinstance(value, float) and not math.isnan(value)]
    return ", ".join(shown) or "-"


def fmt_p(p: float) -> str:
    """A p-value for people: `-` when not computed."""
    if pd.isna(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_value(value: object) -> str:
    """A table cell: floats to 3 decimals, missing as empty."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(report: Report) -> str:
    """table.md: every test metric of the default decoding as mean ± std, rank, p-values, the chosen metric per fold."""
    metrics = [c[len("test_") : -len("_mean")] for c in report.table.columns if re.fullmatch(r"test_.+_mean", c)]
    metrics = [m for m in metrics if DECODING_MARK not in m]
    splits = split_columns(report.table, report.metric)
    trials = ["sampled", "objective"] if "sampled" in report.table else []
    header = ["cell", *trials, "backbone", "loss", "splitter", "rank", *COMPARISON_HEADER, *metrics, f"{report.metric} SDs / SE", "best epoch", "train s", *splits]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in report.table.iterrows():
        values = [cell_name(report, row), *(fmt_value(row.get(c)) for c in trials), row["backbone"], row["loss"], row["splitter"]]
        values += [fmt_value(row.get("rank")), *comparison_values(row), *(mean_std(row, f"test_{m}") for m in metrics)]
        values += [components_text(row, f"test_{report.metric}")]
        values += [mean_std(row, "best_epoch"), mean_std(row, "train_seconds"), *(fmt_value(row.get(c)) for c in splits)]
        lines.append("| " + " | ".join(values) + " |")
    ranking = (
        f"Ranked on test {report.metric} ({direction(report.metric)}); mean ± std over folds; * = baseline; `SDs / SE`: SD between splits, "
        "SD between training seeds, bootstrap SE over test images. "
    )
    return "\n".join(lines) + "\n\n" + ranking + tests_note(report) + failed_note(report) + decodings_table(report)


P_ADJ_TTEST, P_ADJ_WILCOXON = ADJUSTED + P_TTEST.removeprefix("p_"), ADJUSTED + P_WILCOXON.removeprefix("p_")
COMPARISON_HEADER = ("J", "p (t corr., children)", "p_adj (t)", "images", "Δ [95% CI] (images)", "p (W, images)", "p_adj (W)", "P(better) images", "P(better) children")


def comparison_values(row: pd.Series) -> list[str]:
    """A row's comparison with the baseline, as COMPARISON_HEADER's cells."""
    return [
        fmt_value(row.get("n_children")), fmt_p(row.get(P_TTEST)), fmt_p(row.get(P_ADJ_TTEST)), fmt_value(row.get("n_images")),
        fmt_ci(row, "diff_mean", "diff_ci"), fmt_p(row.get(P_WILCOXON)), fmt_p(row.get(P_ADJ_WILCOXON)),
        fmt_ci(row, "p_better_images", "p_better_images_ci"), fmt_ci(row, "p_better_children", "p_better_children_ci"),
    ]


def fmt_ci(row: pd.Series, key: str, ci: str) -> str:
    """`value [low, high]`, `-` when missing."""
    value = row.get(key)
    if value is None or pd.isna(value):
        return "-"
    return f"{value:+.3f} [{row[ci + '_low']:+.3f}, {row[ci + '_high']:+.3f}]" if key == "diff_mean" else f"{value:.2f} [{row[ci + '_low']:.2f}, {row[ci + '_high']:.2f}]"


DECODINGS = {"annealed mean (the loss's temperature)": "default", "mode (T -> 0)": "mode", "plain mean (T = 1)": "T1"}  # see losses.CrossEntropy


def decodings_table(report: Report) -> str:
    """For losses that decode several ways (the classification losses): the headline test metrics per decoding."""
    marker = f"test_{decoded('psnr', 'mode')}_mean"
    if marker not in report.table:
        return ""
    rows = report.table[report.table[marker].notna()]
    shown = headline_metrics()
    header = ["cell", "loss", "decoding", *shown]
    lines = ["\n## Test metrics per decoding\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in rows.iterrows():
        for name, decoding in DECODINGS.items():
            values = [row["cell"], row["loss"], name, *(mean_std(row, f"test_{decoded(m, decoding)}") for m in shown)]
            lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def cell_name(report: Report, row: pd.Series) -> str:
    """The cell id, starred when it is the baseline."""
    return row["cell"] + (" *" if row["cell"] in report.baselines.values() else "")


def tests_note(report: Report) -> str:
    """Which tests and intervals the comparison columns hold, and how the p-values were adjusted."""
    if report.n_images:
        images = f"over the {report.n_images} test images' per-image {report.metric}, averaged over each cell's folds"
    else:
        images = f"over test images: not available, {report.metric} is not logged per image"
    family = int(report.table[[P_TTEST, P_WILCOXON]].notna().to_numpy().sum()) + (report.friedman is not None)
    adjusted = "not adjusted (--correction none)" if report.correction == "none" else f"adjusted by {CORRECTION_NAMES[report.correction]}"
    return (
        f"Against the baseline cell {report.baseline}{each_replicate(report)}: p (t corr., children) = corrected resampled t-test (Nadeau & Bengio 2003) over "
        "the J children trained on the same splits (same splitter and data seed, J >= 2), variance inflated by 1/J + n_val/n_train; "
        f"p (W, images) = Wilcoxon signed-rank test (scipy.stats.wilcoxon) {images}; Δ = mean difference (cell - baseline) over the "
        f"test images with its paired bootstrap 95% CI (scipy.stats.bootstrap, BCa, 10,000 resamples, seed 0); P(better) = share of "
        "images (children) on which the cell beats the baseline, ties half (Bouthillier et al. 2021), percentile bootstrap 95% CI. "
        f"p_adj: the report's {family} p-values (both tests and the Friedman test) {adjusted}; table.csv keeps the raw ones. "
        "`-`: not applicable.\n"
    )


def each_replicate(report: Report) -> str:
    """How the baseline is chosen in each replicate, for an experiment with replicates."""
    if report.replicates < 2:
        return ""
    return f" (in each of the {report.replicates} replicates, the cell of that replicate with its configuration, starred; ranks are within a replicate)"


CORRECTION_NAMES = {"holm": "Holm (family-wise error)", "bh": "Benjamini-Hochberg (false discovery rate)"}


def failed_note(report: Report) -> str:
    """The cells that failed, one line each, and how many search trials were pruned."""
    pruned = f"\n{report.pruned} search trial(s) were pruned (stopped early) and are not in the table.\n" if report.pruned else ""
    return "".join(f"\nFailed: {label}: {reason}" for label, reason in report.failed) + ("\n" if report.failed else "") + pruned


def direction(metric: str) -> str:
    """How to read a metric in words."""
    return BETTER_WORDS[better(metric)]


def label(row: pd.Series, sep: str = " | ") -> str:
    """A cell's components joined by `sep`; a trial's sampled values."""
    if pd.notna(row.get("sampled")):
        return sep.join(row["sampled"].split(" "))
    return sep.join((row["backbone"], row["loss"], row["splitter"]))


def plot_bar(cells: pd.DataFrame, gray: pd.Series, metric: str, path: Path) -> None:
    """bar.png: the metric per cell with std error bars and the gray baseline dashed."""
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(cells)), 4.5))
    x = np.arange(len(cells))
    ax.bar(x, cells[f"test_{metric}_mean"], yerr=cells[f"test_{metric}_std"].fillna(0), capsize=4, color="tab:blue")
    add_gray_line(ax, gray, metric)
    finish(fig, ax, cells, f"test {metric}, mean ± std over folds ({direction(metric)})", path)


def plot_folds(cells: pd.DataFrame, gray: pd.Series, metric: str, path: Path) -> None:
    """folds.png: every fold's value per cell (k-fold spread vs one hold-out value) and the fold mean."""
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(cells)), 4.5))
    for i, (_, row) in enumerate(cells.iterrows()):
        vals = row[split_columns(cells, metric)].dropna().to_numpy(float)
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)) * (len(vals) > 1), vals, color="tab:blue", zorder=3)
        ax.hlines(np.mean(vals), i - 0.25, i + 0.25, color="black", label="fold mean" if i == 0 else None)
    add_gray_line(ax, gray, metric)
    finish(fig, ax, cells, f"test {metric} of each fold (dots) and their mean (line)", path)


def add_gray_line(ax: plt.Axes, gray: pd.Series, metric: str) -> None:
    """The gray baseline as a dashed horizontal line, when it has this metric."""
    value = gray.get(f"test_{metric}_mean")
    if value is not None and pd.notna(value):
        ax.axhline(value, color="gray", linestyle="--", label=GRAY)


def finish(fig: plt.Figure, ax: plt.Axes, cells: pd.DataFrame, title: str, path: Path) -> None:
    """Cell labels on x, title, legend, save, close."""
    ax.set_xticks(np.arange(len(cells)), [label(row, "\n") for _, row in cells.iterrows()], fontsize=8)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_val_loss(runs: Runs, path: Path) -> None:
    """val_loss.png: each cell's validation loss per epoch, mean over its folds, log scale."""
    client = MlflowClient()
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, cell in runs.cells.iterrows():
        history = pd.DataFrame(
            [(m.step, m.value) for run_id in runs.folds_of(cell)["run_id"] for m in client.get_metric_history(run_id, "val_loss")],
            columns=["epoch", "val_loss"],
        )
        curve = history.groupby("epoch")["val_loss"].mean()
        ax.plot(curve.index, curve.to_numpy(), marker=".", label=" | ".join(components(cell)))
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss, mean over folds (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(runs: Runs, cells: pd.DataFrame, path: Path) -> None:
    """samples.png: rows = test images; columns = gray input, each of the best SAMPLE_COLUMNS cells (first fold), truth."""
    from colorbench.data import gray_rgb  # torch, only once figures are drawn

    by_id = runs.cells.set_index(ROW)
    cells = cells.head(SAMPLE_COLUMNS)
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp:
        samples = []
        for cid in cells["cell"]:
            run_id = runs.folds_of(by_id.loc[cid])["run_id"].iloc[0]
            with np.load(tracking.download(run_id, "test_samples.npz", Path(tmp) / run_id)) as npz:
                samples.append({k: npz[k] for k in ("truth", "predicted", "names")})
    truth = samples[0]["truth"]
    rows = [[g, *(s["predicted"][i] for s in samples), t] for i, (g, t) in enumerate(zip(gray_rgb(truth), truth, strict=True))]
    titles = ["gray input", *(label(row, "\n") for _, row in cells.iterrows()), "truth"]
    image_grid(rows, titles, path, [str(n) for n in samples[0]["names"]])


def rank_lines(report: Report) -> list[str]:
    """The ranking, best first, each with its number of children J."""
    cells = report.table[report.table["cell"] != GRAY]
    return [
        f"{fmt_value(row['rank'])}. `{row['cell']}` {label(row)}{report.in_replicate(row)}: {mean_std(row, f'test_{report.metric}')} (J = {fmt_value(row['n_folds'])})"
        for _, row in cells.iterrows()
    ]


def significance_lines(report: Report) -> list[str]:
    """For each non-baseline cell: better/worse than the baseline, and whether each test finds it significant."""
    table = report.table.set_index("cell")
    lines = []
    compared = [cid for cid, base in report.baselines.items() if cid != base]
    for cid, row in table[table.index.isin(compared)].iterrows():
        value, base = row[f"test_{report.metric}_mean"], table.loc[report.baselines[cid], f"test_{report.metric}_mean"]
        score, base_score = badness(report.metric, pd.Series([value, base]))
        verdict = "worse" if score > base_score else "better" if score < base_score else "equal"
        tests = []
        if pd.notna(row[P_WILCOXON]):
            tests.append(
                f"over {fmt_value(row['n_images'])} test images Δ = {fmt_ci(row, 'diff_mean', 'diff_ci')}, "
                f"P(better) = {fmt_ci(row, 'p_better_images', 'p_better_images_ci')}, Wilcoxon {p_words(row[P_WILCOXON], row[P_ADJ_WILCOXON])}"
            )
        if pd.notna(row[P_TTEST]):
            tests.append(
                f"over J = {fmt_value(row['n_children'])} paired children P(better) = {fmt_ci(row, 'p_better_children', 'p_better_children_ci')}, "
                f"corrected t-test {p_words(row[P_TTEST], row[P_ADJ_TTEST])}"
            )
        tested = "; ".join(tests) or "no test applies (other splits and no per-image values)"
        lines.append(f"- `{cid}` {label(row)}{report.in_replicate(row)}: {report.metric} {value:.3f} vs {base:.3f}, {verdict}; {tested}.")
    return lines


def p_words(raw: float, adjusted: float) -> str:
    """`p = raw, p_adj = adjusted (significant|not significant)`: the verdict is on the adjusted p."""
    return f"{p_is('p', raw)}, {p_is('p_adj', adjusted)} ({'significant' if adjusted < ALPHA else 'not significant'})"


def p_is(name: str, p: float) -> str:
    """`name = 0.012`, or `name < 0.001`."""
    shown = fmt_p(p)
    return f"{name} {shown.replace('<', '< ')}" if shown.startswith("<") else f"{name} = {shown}"


def friedman_lines(report: Report) -> list[str]:
    """The Friedman test across all cells and the critical-difference diagram."""
    f = report.friedman
    if f is None:
        return []
    verdict = "the cells differ" if f.p_adj < ALPHA else "no evidence that the cells differ"
    test = (
        f"Friedman test (scipy.stats.friedmanchisquare) over {f.n_cells} cells{report.in_replicate(report.baseline_row)} with the {f.n_images} test images as blocks: "
        f"chi² = {f.statistic:.1f}, {p_is('p', f.p)}, {p_is('p_adj', f.p_adj)} ({verdict}).\n"
    )
    figure = (
        f"![critical-difference diagram](cd.png)\n\n`cd.png`: each cell's mean rank over the test images on {report.metric} (1 = best); "
        "cells joined by a bar are not significantly different by the Nemenyi post-hoc test at 0.05 (scikit-posthocs; Demšar 2006).\n"
    )
    return ["## All cells at once: Friedman test and critical-difference diagram\n", test, figure]


def plot_cd(matrix: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """cd.png: the critical-difference diagram of the cells' per-image ranks (colorbench.stats.cd_diagram)."""
    names = {row["cell"]: f"{label(row)} [{row['cell']}]" for _, row in table.iterrows() if row["cell"] in matrix}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * matrix.shape[1]))
    cd_diagram(matrix.rename(columns=names), ax)
    ax.set_title("mean rank over the test images (1 = best); a bar joins cells the Nemenyi test cannot tell apart", fontsize=9, pad=24)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the labels reach beyond the axes
    plt.close(fig)


def colourfulness_words(ratio: float) -> str:
    """What a colourfulness ratio (prediction / truth) means."""
    if ratio < 0.5:
        return "far less colourful than the truth (desaturated, the typical look of MSE-style averaging)"
    if ratio < 0.8:
        return "less colourful than the truth"
    return "about as colourful as the truth" if ratio <= 1.25 else "more colourful than the truth"


def gray_lines(report: Report) -> list[str]:
    """Each cell against the plain-gray prediction in PSNR and colourfulness ratio."""
    table = report.table.set_index("cell")
    gray_psnr, gray_ratio = table.loc[GRAY].get("test_psnr_mean"), table.loc[GRAY].get("test_colorfulness_ratio_mean")
    if gray_psnr is None or gray_ratio is None or pd.isna(gray_psnr):
        return ["- the gray baseline was not logged in this experiment."]
    lines = []
    for cid, row in table.drop(index=GRAY).iterrows():
        psnr, ratio = row["test_psnr_mean"], row["test_colorfulness_ratio_mean"]
        lines.append(
            f"- `{cid}` {label(row)}: PSNR {psnr:.2f} dB ({psnr - gray_psnr:+.2f} dB vs gray {gray_psnr:.2f}); "
            f"colourfulness ratio {ratio:.2f} (gray {gray_ratio:.2f}): {colourfulness_words(ratio)}."
        )
    return lines


def command(report: Report) -> str:
    """The command line that reproduces this report."""
    args = ["colorbench", "report", "--experiment", report.experiment, "--tracking-uri", mlflow.get_tracking_uri()]
    args += ["--out", str(report.out_dir), "--metric", report.metric, "--baseline", report.baseline, "--correction", report.correction]
    return shlex.join(args)


def summary(report: Report) -> str:
    """summary.md: ranking, significance, comparison with gray, figures, command."""
    parts = [
        f"# {report.experiment}: report on test {report.metric}\n",
        f"## Ranking on test {report.metric} ({direction(report.metric)}; mean ± std over the J children, {report.n_images} test images)\n",
        *rank_lines(report),
        f"\n## Differences from the baseline `{report.baseline}` (significant at adjusted p < {ALPHA})\n",
        *significance_lines(report),
        "\n" + tests_note(report),
        *friedman_lines(report),
        *(validation_report.summary_section(report.validation, report.metric, direction(report.metric)) if report.validation is not None else []),
        "## Against a plain gray image (ab = 0)\n",
        *gray_lines(report),
        "\nThe full table, with every metric and each fold: [table.md](table.md), [table.csv](table.csv).",
        failed_note(report),
        f"## Figures{report.in_replicate(report.baseline_row)}\n",
        *(f"![{title}]({name})\n" for name, title in FIGURES.items()),
        *(f"![Optuna: {name}]({name})\n" for name in report.study_figures if name.endswith(".png")),
        f"Produced by:\n\n```\n{command(report)}\n```\n",
    ]
    return "\n".join(parts)


def terminal_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the compact terminal table."""
    metrics = [report.metric, *(m for m in headline_metrics() if m != report.metric)]
    described = ["sampled"] if "sampled" in report.table else ["backbone", "loss", "splitter"]  # a trial: its sampled values
    header = ["cell", *described, *metrics, f"{report.metric} SDs / SE", "p_adj (t)", "p (W, images)", "p_adj (W)", "rank"]
    rows = []
    for _, row in report.table.iterrows():
        names = [cell_name(report, row), *(fmt_value(row.get(c)) if c == "sampled" else row[c] for c in described)]
        tests = [fmt_p(row.get(P_ADJ_TTEST)), fmt_p(row.get(P_WILCOXON)), fmt_p(row.get(P_ADJ_WILCOXON)), fmt_value(row.get("rank"))]
        rows.append(names + [mean_std(row, f"test_{m}") for m in metrics] + [components_text(row, f"test_{report.metric}")] + tests)
    return header, rows


def study_figures(runs: Runs, out: Path, storage: str | None) -> list[str]:
    """For a search experiment: Optuna's figures of its study (storage from --storage, else as tagged on the trials).

    The search (Optuna, the training stack) is imported only here, for a search experiment: a grid report needs neither."""

    study_tag = f"tags.{TAG_STUDY}"
    if study_tag not in runs.cells or runs.cells[study_tag].isna().all():
        return []
    import optuna

    from colorbench.studies import open_storage, save_study_figures

    name = runs.cells[study_tag].dropna().iloc[0]
    storage = storage or runs.cells[f"tags.{TAG_STORAGE}"].dropna().iloc[0]
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except (ConfigError, KeyError) as err:
        console.print(f"[yellow]no Optuna figures[/]: cannot load study {name!r} from {storage} ({err}); pass --storage", highlight=False)
        return []
    written, _ = save_study_figures(study, out)
    figures = [path.name for path in written]
    if len(study.directions) > 1:
        from colorbench.pareto import objective_names, write_pareto

        trials = runs.cells.iloc[0]
        gray = {name: trials.get(f"metrics.gray_test_{name.removeprefix('val_')}") for name in objective_names(study)}
        figures += write_pareto(study, out, {k: float(v) for k, v in gray.items() if pd.notna(v)})
    return figures


def build_report(
    experiment: str,
    out_dir: str | Path | None = None,
    metric: str = "psnr",
    baseline: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    correction: str = "holm",
) -> Report:
    """Read an experiment's runs and write table.csv, table.md, the figures and summary.md into `out_dir`.

    A search experiment has one row per finished trial and gets Optuna's figures too (`storage` overrides the study's storage).
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; use one of: {', '.join(CORRECTIONS)}")
    open_store(tracking_uri)
    runs = load_runs(experiment)
    table, base, baselines, n_images, omnibus, matrix = build_table(runs, metric, baseline, correction)
    out = Path(out_dir) if out_dir is not None else Path("results") / experiment
    out.mkdir(parents=True, exist_ok=True)
    figures = study_figures(runs, out, storage)
    report = Report(experiment, metric, base, table, out, runs.failed, n_images, runs.pruned, figures, correction, omnibus, baselines=baselines)
    if matrix is not None:
        plot_cd(matrix, table, out / "cd.png")
    kids = children(runs, table, metric)
    if validation_report.needed(kids):
        report.validation = validation_report.write(kids, metric, bad_values(metric), direction(metric), out)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(report))
    shown_runs, cells = one_replicate(runs, table, base)
    gray = table[table["cell"] == GRAY].iloc[0]
    plot_bar(cells, gray, metric, out / "bar.png")
    plot_folds(cells, gray, metric, out / "folds.png")
    plot_val_loss(shown_runs, out / "val_loss.png")
    plot_samples(shown_runs, cells, out / "samples.png")
    (out / "summary.md").write_text(summary(report))
    return report
