"""The report on the validation schemes themselves: each splitter as an estimator of the test score and as a selector of configurations,
in each replicate (an independent data set), then over the replicates with 95 % intervals.

A configuration is a backbone x loss (the splitter left out). A cell's validation estimate is the mean over its children of the
validation metric at each child's best epoch; its test score is the mean of its children's test metric. The truth, the same for every
scheme of a replicate: a configuration's test score averaged over its cells in that replicate, whatever their splitter.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from colorbench.report.comparisons import Bad
from colorbench.report.text import markdown_rows
from colorbench.stats import kendall_tau

COLUMNS = ("splitter", "n_configurations", "n_children", "bias", "abs_error", "spread", "kendall_tau", "regret", "picks_best")
INTERVALS = ("bias", "abs_error", "kendall_tau", "regret", "picks_best")  # the columns given a 95 % interval over the replicates
PROPORTION = "picks_best"  # 0 or 1 per replicate: a proportion over them (Wilson interval), the others a bootstrap of their mean
RESAMPLES = 10_000


def needed(children: pd.DataFrame) -> bool:
    """Whether an experiment gets this report: two or more splitters, or a splitter with more than one split."""
    return children["splitter"].nunique() >= 2 or bool((children.groupby("cell").size() > 1).any())


def truth(children: pd.DataFrame) -> pd.Series:
    """Per configuration, the mean over its cells (whatever their splitter) of the cell's test score: one replicate's children."""
    return children.groupby(["configuration", "cell"])["test"].mean().groupby(level="configuration").mean()


def scheme_row(children: pd.DataFrame, true: pd.Series, bad: Bad) -> dict[str, float]:
    """One splitter's numbers in one replicate, from its children (columns configuration, cell, draw, repeat, val, test) and the
    replicate's truth `true` (configuration -> test score)."""
    cells = children.groupby("configuration").agg(val=("val", "mean"), test=("test", "mean"), n=("val", "size"))
    error = cells["val"] - cells["test"]
    spread = children.groupby("configuration")["val"].std(ddof=1)  # NaN for a configuration with one child
    true_bad = pd.Series(bad(true.to_numpy()), index=true.index)
    picked, best = cells.index[np.argmin(bad(cells["val"].to_numpy()))], true_bad.idxmin()
    return {
        "n_configurations": len(cells),
        "n_children": int(cells["n"].sum()),
        "bias": float(error.mean()),
        "abs_error": float(error.abs().mean()),
        "spread": float(spread.mean()) if spread.notna().any() else np.nan,
        "kendall_tau": kendall_tau(bad(cells["val"].to_numpy()), true_bad[cells.index].to_numpy()),
        "regret": float(true_bad[picked] - true_bad[best]),
        PROPORTION: float(picked == best),
    }


def replicate_table(children: pd.DataFrame, bad: Bad) -> pd.DataFrame:
    """One row per (replicate, splitter): `COLUMNS`, each replicate judged against its own truth."""
    rows = []
    for replicate, group in children.groupby("replicate"):
        true = truth(group)
        rows += [{"replicate": replicate, "splitter": splitter, **scheme_row(sub, true, bad)} for splitter, sub in group.groupby("splitter")]
    return pd.DataFrame(rows)[["replicate", *COLUMNS]].astype({"replicate": int, "n_configurations": int, "n_children": int})


def bootstrap_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean over replicates (scipy.stats.bootstrap, seeded); NaN under 2 values."""
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return np.nan, np.nan
    ci = stats.bootstrap((values,), np.mean, n_resamples=RESAMPLES, method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def wilson_interval(hits: np.ndarray) -> tuple[float, float]:
    """95 % Wilson interval of the proportion of replicates with a hit (statsmodels' proportion_confint)."""
    low, high = proportion_confint(int(hits.sum()), len(hits), alpha=0.05, method="wilson")
    return float(low), float(high)


def aggregate(per_replicate: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per splitter: `n_replicates`, the mean over replicates of each column and `<col>_ci_low` / `<col>_ci_high` for
    `INTERVALS` (Wilson for `picks_best`, a seeded percentile bootstrap for the others)."""
    rows = []
    for splitter, group in per_replicate.groupby("splitter"):
        row: dict[str, object] = {"splitter": splitter, "n_replicates": len(group)}
        for column in COLUMNS[1:]:
            values = group[column].to_numpy(float)
            row[column] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
            if column in INTERVALS:
                row[f"{column}_ci_low"], row[f"{column}_ci_high"] = wilson_interval(values) if column == PROPORTION else bootstrap_interval(values, seed)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_replicates(per_replicate: pd.DataFrame, metric: str, path: Path) -> None:
    """validation_replicates.png: per splitter, the distribution over replicates of the estimate's absolute error and of the regret
    (a box and one dot per replicate)."""
    splitters = sorted(per_replicate["splitter"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.6 * len(splitters)), 4.5))
    jitter = np.random.default_rng(0)
    for ax, column, title in zip(axes, ("abs_error", "regret"), ("|validation estimate - test score|", "regret (truth's best - truth of the pick)"), strict=True):
        values = [per_replicate.loc[per_replicate["splitter"] == s, column].dropna().to_numpy() for s in splitters]
        ax.boxplot(values, showfliers=False)
        for i, vals in enumerate(values, 1):
            ax.scatter(i + jitter.uniform(-0.12, 0.12, len(vals)), vals, s=16, alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(splitters) + 1), splitters, fontsize=7, rotation=15)
        ax.set_title(f"{title}, {metric}", fontsize=9)
    fig.suptitle(f"one dot per replicate (N = {per_replicate['replicate'].nunique()} data sets)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_val_vs_test(children: pd.DataFrame, metric: str, path: Path) -> None:
    """val_vs_test.png: each cell's validation estimate against its test score, one colour per splitter, with y = x."""
    cells = children.groupby(["splitter", "cell"], sort=False).agg(val=("val", "mean"), test=("test", "mean")).reset_index()
    fig, ax = plt.subplots(figsize=(6, 5))
    for splitter, group in cells.groupby("splitter"):
        ax.scatter(group["val"], group["test"], label=splitter, s=40, alpha=0.8)
    values = np.concatenate([cells["val"].dropna(), cells["test"].dropna()])
    lo, hi = values.min(), values.max()
    pad = 0.05 * (hi - lo or 1)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", linestyle="--", label="y = x")
    ax.set_xlabel(f"validation {metric} (mean over the cell's children at their best epoch)")
    ax.set_ylabel(f"test {metric} (mean over the cell's children)")
    ax.set_title("validation estimate vs test score, one point per cell")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt(value: object) -> str:
    """A table cell: floats to 3 decimals, `-` when missing."""
    return "-" if pd.isna(value) else f"{value:.3f}" if isinstance(value, float) else str(value)


def with_interval(row: pd.Series, column: str) -> str:
    """`mean [low, high]`, or the mean alone when there is no interval."""
    low, high = row[f"{column}_ci_low"], row[f"{column}_ci_high"]
    return fmt(row[column]) + ("" if pd.isna(low) else f" [{low:.3f}, {high:.3f}]")


def answer(table: pd.DataFrame, metric: str) -> list[str]:
    """The question in words, one line per splitter: how often it picks the best configuration, its regret and its error."""
    lines = []
    for _, row in table.iterrows():
        n, hits = int(row["n_replicates"]), round(row[PROPORTION] * row["n_replicates"])
        lines.append(
            f"- **{row['splitter']}** picks the configuration best on test in {hits} of {n} data set{'s' if n > 1 else ''} "
            f"[{row['picks_best_ci_low']:.0%}, {row['picks_best_ci_high']:.0%}]; regret {with_interval(row, 'regret')}, "
            f"Kendall tau {with_interval(row, 'kendall_tau')}, |error| of its estimate {with_interval(row, 'abs_error')}, "
            f"bias {with_interval(row, 'bias')} ({metric})."
        )
    return lines


def markdown(table: pd.DataFrame, metric: str, direction: str) -> str:
    """The answer, the table with intervals, and the definitions of its columns."""
    counts = ("n_replicates", "n_configurations", "n_children")  # means over replicates of whole numbers: shown as 4, 12.5
    columns = ["splitter", *counts, *COLUMNS[3:]]

    def cell(row: pd.Series, column: str) -> str:
        return with_interval(row, column) if column in INTERVALS else f"{row[column]:g}" if column in counts else fmt(row[column])

    lines = markdown_rows(columns, ([cell(row, c) for c in columns] for _, row in table.iterrows()))
    n = int(table["n_replicates"].max())
    return "\n".join(answer(table, metric)) + "\n\n" + "\n".join(lines) + f"""

Each splitter judged in each of {n} replicate(s) (an independent data set: its own training pool, test set or subsample and splits;
`validation_replicates.csv` has one row per replicate and splitter), then averaged over the replicates (test {metric}, {direction}).
Brackets: 95 % intervals over the replicates, a percentile bootstrap of the mean (scipy.stats.bootstrap, 10,000 resamples, seed 0;
none with one replicate), Wilson for `picks_best` (statsmodels). They describe the spread over data sets drawn like these.
A configuration is a backbone x loss; its validation estimate under a splitter is the mean over the cell's children of validation
{metric} at each child's best epoch (lowest validation loss). The truth, one for every scheme of a replicate: a configuration's test
score averaged over its cells in that replicate, whatever their splitter.
- `bias`: mean over configurations of (validation estimate - the cell's test score); `abs_error`: mean of its absolute value.
- `spread`: standard deviation of the validation value across the splits and repeats of one configuration, averaged over the
  configurations (`-` with one split).
- `kendall_tau`: rank agreement between the configurations ranked by validation estimate and by the truth (1 = same order).
- `regret`: the truth's score of its best configuration minus that of the configuration the scheme picks by validation (0 = picks
  the best; in {metric}'s units, as a loss: how much is lost).
- `picks_best`: per replicate 1 if the configuration the scheme picks by validation is the truth's best, else 0; over replicates the
  share of data sets in which it does.
"""


def write(children: pd.DataFrame, metric: str, bad: Bad, direction: str, out: Path) -> pd.DataFrame:
    """validation_replicates.csv, validation.csv, validation.md, validation_replicates.png and val_vs_test.png into `out`; returns the
    table over the replicates."""
    per_replicate = replicate_table(children, bad)
    per_replicate.to_csv(out / "validation_replicates.csv", index=False)
    table = aggregate(per_replicate)
    table.to_csv(out / "validation.csv", index=False)
    figures = "![](validation_replicates.png)\n\n![](val_vs_test.png)\n"
    (out / "validation.md").write_text(f"# Validation schemes: estimators and selectors\n\n{markdown(table, metric, direction)}\n{figures}")
    plot_replicates(per_replicate, metric, out / "validation_replicates.png")
    plot_val_vs_test(children, metric, out / "val_vs_test.png")
    return table


def summary_section(table: pd.DataFrame, metric: str, direction: str) -> list[str]:
    """The section of summary.md."""
    figures = "![validation schemes over the replicates](validation_replicates.png)\n\n![validation vs test](val_vs_test.png)\n"
    return ["## Validation schemes (estimators and selectors)\n", markdown(table, metric, direction), figures]
