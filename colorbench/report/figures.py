"""The report's figures: bar chart, per-fold spread, validation loss, test samples, the critical-difference diagram, and for
a search experiment Optuna's figures of its study.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from colorbench.errors import ConfigError
from colorbench.metrics import better, direction, unit
from colorbench.plots import image_grid
from colorbench.report.runs import Runs
from colorbench.report.table import GRAY, label, split_columns
from colorbench.stats import cd_diagram
from colorbench.tracking import TAG_STORAGE, TAG_STUDY
from colorbench.ui import console

FIGURES = {"bar.png": "bar chart", "folds.png": "per-fold spread", "val_loss.png": "validation loss", "samples.png": "test samples"}
SAMPLE_COLUMNS = 8  # cells (best first) shown in samples.png
TOP, ALL_UP_TO = 10, 15  # cd.png, bar.png and folds.png draw every cell up to ALL_UP_TO cells, else the top TOP and the baseline


def shown_cells(cells: pd.DataFrame, baseline: str, top: int | None = None) -> tuple[pd.DataFrame, str]:
    """The cells (rows in rank order) a per-cell figure draws, and what its title says about them: every cell up to `ALL_UP_TO`,
    else the top `TOP`; a `top` given draws the top `top` whenever there are more. The baseline is always drawn."""
    k = top if top is not None else TOP if len(cells) > ALL_UP_TO else len(cells)
    if len(cells) <= k:
        return cells, ""
    shown = cells[(np.arange(len(cells)) < k) | (cells["cell"] == baseline).to_numpy()]
    return shown, f"top {k} of {len(cells)} cells" + (" and the baseline" if len(shown) > k else "") + "; every cell: table.md"


def titled(title: str, note: str) -> str:
    """A figure's title with the note on which cells it draws."""
    return f"{title}\n({note})" if note else title


def plot_bar(cells: pd.DataFrame, gray: pd.Series, metric: str, path: Path, note: str = "") -> None:
    """bar.png: the metric per cell with std error bars and the gray baseline dashed."""
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(cells)), 4.5))
    x = np.arange(len(cells))
    ax.bar(x, cells[f"test_{metric}_mean"], yerr=cells[f"test_{metric}_std"].fillna(0), capsize=4, color="tab:blue")
    add_gray_line(ax, gray, metric)
    finish(fig, ax, cells, titled(f"test {metric}, mean ± std over folds ({direction(metric)})", note), path)


def plot_folds(cells: pd.DataFrame, gray: pd.Series, metric: str, path: Path, note: str = "") -> None:
    """folds.png: every fold's value per cell (k-fold spread vs one hold-out value) and the fold mean."""
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(cells)), 4.5))
    for i, (_, row) in enumerate(cells.iterrows()):
        vals = row[split_columns(cells, metric)].dropna().to_numpy(float)
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)) * (len(vals) > 1), vals, color="tab:blue", zorder=3)
        ax.hlines(np.mean(vals), i - 0.25, i + 0.25, color="black", label="fold mean" if i == 0 else None)
    add_gray_line(ax, gray, metric)
    finish(fig, ax, cells, titled(f"test {metric} of each fold (dots) and their mean (line)", note), path)


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
    fig.savefig(path, dpi=100, metadata={"Title": title})
    plt.close(fig)


def plot_val_loss(curves: dict[str, pd.Series], path: Path) -> None:
    """val_loss.png: each cell's validation loss per epoch, mean over its folds, log scale (`runs.val_loss_curves`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(curve.index, curve.to_numpy(), marker=".", label=name)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss, mean over folds (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(samples: list[dict[str, np.ndarray]], cells: pd.DataFrame, path: Path) -> None:
    """samples.png: rows = test images; columns = gray input, each of `cells` (their `runs.test_samples`, first fold), truth."""
    from colorbench.images import gray_rgb  # torch, only once figures are drawn

    truth = samples[0]["truth"]
    rows = [[g, *(s["predicted"][i] for s in samples), t] for i, (g, t) in enumerate(zip(gray_rgb(truth), truth, strict=True))]
    titles = ["gray input", *(label(row, "\n") for _, row in cells.iterrows()), "truth"]
    image_grid(rows, titles, path, [str(n) for n in samples[0]["names"]])


def plot_cd(matrix: pd.DataFrame, cells: pd.DataFrame, path: Path, note: str = "") -> None:
    """cd.png: the critical-difference diagram of the cells' per-image ranks (colorbench.stats.cd_diagram): ranks and tests over
    every cell of `matrix`, the `cells` among them drawn."""
    names = {row["cell"]: f"{label(row)} [{row['cell']}]" for _, row in cells.iterrows() if row["cell"] in matrix}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(names)))
    cd_diagram(matrix.rename(columns=names), ax, shown=list(names.values()))
    ranked = f"mean rank among all {matrix.shape[1]} cells" if note else "mean rank"
    title = titled(f"{ranked} over the test images (1 = best); a bar joins cells the Nemenyi test cannot tell apart", note)
    ax.set_title(title, fontsize=9, pad=24)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Title": title})  # the labels reach beyond the axes
    plt.close(fig)


MARKS = {"better": "B", "worse": "W", "equivalent": "=", "undecided": "?"}  # a pair's verdict in its heat-map square, row against column
MIRROR = {"better": "worse", "worse": "better"}


def plot_pairs(pairs: pd.DataFrame, table: pd.DataFrame, metric: str, path: Path) -> None:
    """pairs.png: every pair of cells (`table.pair_table`) as a heat-map, row against column: the colour is how much better the row
    is over their paired splits (red: worse, blue: better; empty: not trained on the same splits), the mark its verdict (B better,
    W worse, = equivalent, ? undecided)."""
    cells = [c for c in table["cell"] if c != GRAY]
    index = {c: i for i, c in enumerate(cells)}
    gain = np.full((len(cells), len(cells)), np.nan)
    marks = np.full((len(cells), len(cells)), "", dtype=object)
    sign = 1.0 if better(metric) == "higher" else -1.0  # the tested difference oriented so that positive = the row is better
    for _, row in pairs.iterrows():
        a, b = index[row["cell"]], index[row["versus"]]
        gain[a, b], gain[b, a] = sign * row["diff_splits"], -sign * row["diff_splits"]
        marks[a, b], marks[b, a] = MARKS[row["verdict"]], MARKS[MIRROR.get(row["verdict"], row["verdict"])]
    size = 1.2 + 0.55 * len(cells)
    fig, ax = plt.subplots(figsize=(size + 2.5, size))
    limit = float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 1.0
    image = ax.imshow(gain, cmap="RdBu", vmin=-limit, vmax=limit)
    for (i, j), mark in np.ndenumerate(marks):
        ax.text(j, i, mark, ha="center", va="center", fontsize=9, fontweight="bold", color="dimgray")
    names = [f"{label(row)} [{row['cell'][:6]}]" for _, row in table[table["cell"] != GRAY].iterrows()]
    ax.set_xticks(range(len(cells)), [c[:6] for c in cells], rotation=90, fontsize=7)
    ax.set_yticks(range(len(cells)), names, fontsize=7)
    fig.colorbar(image, ax=ax, label=f"row better by ({unit(metric) or metric})", shrink=0.8)
    ax.set_title(f"{metric}, row vs column over paired splits\nB better, W worse, = equivalent, ? undecided", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def study_figures(runs: Runs, out: Path, storage: str | None) -> list[str]:
    """For a search experiment: Optuna's figures of its study (storage from --storage, else as tagged on the trials).

    The search (Optuna, the training stack) is imported only here, for a search experiment: a grid report needs neither."""

    study_tag = f"tags.{TAG_STUDY}"
    if study_tag not in runs.cells or runs.cells[study_tag].isna().all():
        return []
    import optuna

    from colorbench.search.figures import save_study_figures
    from colorbench.search.storage import open_storage

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
        from colorbench.search.pareto import write_pareto
        from colorbench.search.storage import objective_names

        trials = runs.cells.iloc[0]
        gray = {name: trials.get(f"metrics.gray_test_{name.removeprefix('val_')}") for name in objective_names(study)}
        figures += write_pareto(study, out, {k: float(v) for k, v in gray.items() if pd.notna(v)})
    return figures
