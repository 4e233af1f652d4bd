"""The report on the validation schemes themselves: each splitter as an estimator of the test score and as a selector of configurations.

A configuration is a backbone x loss (the splitter left out). A cell's validation estimate is the mean over its children of the
validation metric at each child's best epoch; its test score is the mean of its children's test metric.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from colorbench.report.comparisons import Bad
from colorbench.stats import kendall_tau

COLUMNS = ("splitter", "n_configurations", "n_children", "bias", "abs_error", "spread", "kendall_tau", "regret")
PICKS_BEST = "picks_best"


def needed(children: pd.DataFrame) -> bool:
    """Whether an experiment gets this report: two or more splitters, or a splitter with more than one split."""
    return children["splitter"].nunique() >= 2 or bool((children.groupby("cell").size() > 1).any())


def scheme_row(children: pd.DataFrame, bad: Bad) -> dict[str, float]:
    """One splitter's numbers from its children (columns configuration, cell, draw, repeat, val, test)."""
    cells = children.groupby("configuration").agg(val=("val", "mean"), test=("test", "mean"), n=("val", "size"))
    error = cells["val"] - cells["test"]
    spread = children.groupby("configuration")["val"].std(ddof=1)  # NaN for a configuration with one child
    best = bad(cells["test"].to_numpy()).min()
    picked = bad(cells["test"].to_numpy())[np.argmin(bad(cells["val"].to_numpy()))]
    row = {
        "n_configurations": len(cells),
        "n_children": int(cells["n"].sum()),
        "bias": float(error.mean()),
        "abs_error": float(error.abs().mean()),
        "spread": float(spread.mean()) if spread.notna().any() else np.nan,
        "kendall_tau": kendall_tau(bad(cells["val"].to_numpy()), bad(cells["test"].to_numpy())),
        "regret": float(picked - best),
    }
    truth = cells.index[np.argmin(bad(cells["test"].to_numpy()))]
    repeats = children.groupby(["draw", "repeat", "configuration"])["val"].mean().unstack()  # one selection per (draw, training repeat)
    if len(repeats) > 1:
        picks = [row_vals.index[np.argmin(bad(row_vals.to_numpy()))] for _, row_vals in repeats.iterrows()]
        row[PICKS_BEST] = float(np.mean([p == truth for p in picks]))
    return row


def scheme_table(children: pd.DataFrame, bad: Bad) -> pd.DataFrame:
    """Per splitter: `COLUMNS`, plus `picks_best` where some splitter has repeats (NaN for those without)."""
    rows = [{"splitter": splitter, **scheme_row(group, bad)} for splitter, group in children.groupby("splitter")]
    table = pd.DataFrame(rows)
    columns = list(COLUMNS) + ([PICKS_BEST] if PICKS_BEST in table else [])
    return table[columns].astype({"n_configurations": int, "n_children": int})


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


def markdown(table: pd.DataFrame, metric: str, direction: str) -> str:
    """The table with the definitions of its columns."""
    def fmt(value: object) -> str:
        return "-" if pd.isna(value) else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + f"""

Per splitter, over the cells that used it (test {metric}, {direction}). A configuration is a backbone x loss; its validation
estimate is the mean over its children of validation {metric} at each child's best epoch (lowest validation loss).
- `bias`: mean of (validation estimate - test score); `abs_error`: mean of its absolute value.
- `spread`: standard deviation of the validation value across the splits and repeats of one configuration, averaged over the
  configurations (`-` with one split).
- `kendall_tau`: rank agreement between the configurations ranked by validation estimate and by test score (1 = same order).
- `regret`: test score of the configuration best on test minus that of the configuration the scheme picks by validation
  (0 = picks the best; in {metric}'s units, as a loss: how much is lost).
- `picks_best` (where repeats exist): share of (draw, training repeat) pairs, a draw being a redrawn split, in which picking by
  that pair's validation values alone picks the configuration best on test (`-` for a scheme without repeats).
"""


def write(children: pd.DataFrame, metric: str, bad: Bad, direction: str, out: Path) -> pd.DataFrame:
    """validation.csv, validation.md and val_vs_test.png into `out`; returns the table."""
    table = scheme_table(children, bad)
    table.to_csv(out / "validation.csv", index=False)
    (out / "validation.md").write_text(f"# Validation schemes: estimators and selectors\n\n{markdown(table, metric, direction)}\n![](val_vs_test.png)\n")
    plot_val_vs_test(children, metric, out / "val_vs_test.png")
    return table


def summary_section(table: pd.DataFrame, metric: str, direction: str) -> list[str]:
    """The section of summary.md."""
    return ["## Validation schemes (estimators and selectors)\n", markdown(table, metric, direction), "![validation vs test](val_vs_test.png)\n"]
