"""Each cell against the baseline, and all cells at once: the numbers behind a report's verdicts (see colorbench.stats).

`STATISTICS` declares every comparison statistic once: its columns, how it is computed and how each renderer (table.md,
summary.md, the terminal tables, table.csv, the cross-experiment table) shows it, so a new statistic is one entry.
Pure: the report reads the runs and hands over each cell's per-child and per-image values; nothing here touches MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from colorbench.report.text import fmt_ci, fmt_p, fmt_value, p_words
from colorbench.stats import adjust, bootstrap_ci, corrected_ttest, friedman, prob_outperform

P_TTEST, P_WILCOXON = "p_ttest_corrected", "p_wilcoxon_images"
ADJUSTED = "p_adj_"  # prefix of every adjusted p-value column
P_ADJ_TTEST, P_ADJ_WILCOXON = ADJUSTED + "ttest_corrected", ADJUSTED + "wilcoxon_images"
Bad = Callable[[np.ndarray], np.ndarray]  # metric values -> badness (lower is better)
Images = tuple[list[str], np.ndarray]  # test image names, per-image metric averaged over a cell's children
Row = Mapping[str, Any]  # one row of the report's table


@dataclass
class Sample:
    """What one cell brings to a comparison."""

    children: pd.Series  # test metric per child, indexed by (fold index, training repeat)
    val_over_train: float  # mean n_val / n_train of its children
    split_key: tuple  # cells with equal keys were trained on identical splits
    images: Images | None  # None when the metric is not logged per image


@dataclass
class Friedman:
    """The Friedman test over every cell with per-image values, test images as blocks."""

    statistic: float
    p: float
    n_cells: int
    n_images: int
    p_adj: float = float("nan")


@dataclass(frozen=True)
class Pair:
    """A cell and the baseline as the statistics see them: each unit's paired values (cell, baseline), None where the two cannot
    be compared over it (children: not trained on the same splits, or under 2; images: not logged per image, or other images)."""

    units: dict[str, tuple[np.ndarray, np.ndarray] | None]
    val_over_train: float  # the two cells' mean n_val / n_train
    bad: Bad
    seed: int


@dataclass(frozen=True)
class Statistic:
    """One statistic of a comparison with the baseline: its columns, how it is computed and how every renderer shows it.

    - `columns`: its columns in table.csv (the value first, then e.g. its interval's bounds); table.csv keeps every statistic's.
    - `unit`: what it is computed over, a key of `Pair.units` (`children`, `images`); the summary groups a unit's statistics.
    - `compute`: its columns' values from a `Pair` whose unit is there (else they are `missing`); None for an adjusted p-value,
      which `adjust_report` fills from the raw p-value column `adjusts`.
    - `header`, `cell`: its column title and its text in a row, in every table that shows it.
    - `shown`: those tables: `markdown` (table.md), `terminal` (the report's terminal table), `multi` (the cross-experiment
      table, on the terminal and in its summary.md).
    - `phrase`: its words in summary.md's sentence on a comparison; `note`: its definition under table.md and summary.md
      (`{images}` is filled with what the image-level tests run over); `caption`: what it is, in the terminal table's caption.
    """

    columns: tuple[str, ...]
    unit: str
    header: str
    cell: Callable[[Row], str]
    compute: Callable[[Pair], dict[str, float]] | None = None
    adjusts: str | None = None
    missing: float = np.nan
    shown: frozenset[str] = frozenset({"markdown"})
    phrase: Callable[[Row], str] | None = None
    note: str = ""
    caption: str = ""


def corrected_p(d: np.ndarray, val_over_train: float) -> float:
    """The corrected resampled t-test's p; 1 when the children do not differ at all (no evidence of a difference)."""
    if np.all(d == 0):
        return 1.0
    return corrected_ttest(d, val_over_train)[1]


def better_share(pair: Pair, unit: str) -> dict[str, float]:
    """P(cell better) over `unit` with its interval (`p_better_<unit>`, `_ci_low`, `_ci_high`)."""
    c, b = pair.units[unit]
    return dict(zip((f"p_better_{unit}", f"p_better_{unit}_ci_low", f"p_better_{unit}_ci_high"), prob_outperform(pair.bad(c), pair.bad(b), pair.seed), strict=True))


def mean_difference(pair: Pair) -> dict[str, float]:
    """Mean difference (cell - baseline) over the test images and its paired bootstrap 95% CI."""
    c, b = pair.units["images"]
    low, high = bootstrap_ci(c - b, pair.seed)
    return {"diff_mean": float((c - b).mean()), "diff_ci_low": low, "diff_ci_high": high}


def wilcoxon_p(pair: Pair) -> dict[str, float]:
    """The Wilcoxon signed-rank test's p over the test images; 1 when no image differs."""
    c, b = pair.units["images"]
    return {P_WILCOXON: float(wilcoxon(c, b).pvalue) if np.any(c != b) else 1.0}


STATISTICS: list[Statistic] = [
    Statistic(
        ("n_children",), "children", "J", lambda row: fmt_value(row.get("n_children")),
        compute=lambda pair: {"n_children": len(pair.units["children"][0])}, missing=0,
    ),
    Statistic(
        (P_TTEST,), "children", "p (t corr., children)", lambda row: fmt_p(row.get(P_TTEST)),
        compute=lambda pair: {P_TTEST: corrected_p(pair.units["children"][0] - pair.units["children"][1], pair.val_over_train)},
        phrase=lambda row: f"corrected t-test {p_words(row[P_TTEST], row[P_ADJ_TTEST])}",
        note="p (t corr., children) = corrected resampled t-test (Nadeau & Bengio 2003) over the J children trained on the same splits "
        "(same splitter and data seed, J >= 2), variance inflated by 1/J + n_val/n_train",
    ),
    Statistic(
        (P_ADJ_TTEST,), "children", "p_adj (t)", lambda row: fmt_p(row.get(P_ADJ_TTEST)), adjusts=P_TTEST,
        shown=frozenset({"markdown", "terminal", "multi"}), caption="corrected resampled t-test over paired children",
    ),
    Statistic(
        ("p_better_children", "p_better_children_ci_low", "p_better_children_ci_high"), "children", "P(better) children",
        lambda row: fmt_ci(row, "p_better_children", "p_better_children_ci"), compute=lambda pair: better_share(pair, "children"),
        phrase=lambda row: f"P(better) = {fmt_ci(row, 'p_better_children', 'p_better_children_ci')}",
    ),
    Statistic(
        ("n_images",), "images", "images", lambda row: fmt_value(row.get("n_images")),
        compute=lambda pair: {"n_images": len(pair.units["images"][0])}, missing=0,
    ),
    Statistic(
        ("diff_mean", "diff_ci_low", "diff_ci_high"), "images", "Δ [95% CI] (images)", lambda row: fmt_ci(row, "diff_mean", "diff_ci", "+.3f"),
        compute=mean_difference, phrase=lambda row: f"Δ = {fmt_ci(row, 'diff_mean', 'diff_ci', '+.3f')}",
        note="Δ = mean difference (cell - baseline) over the test images with its paired bootstrap 95% CI (scipy.stats.bootstrap, BCa, "
        "10,000 resamples, seed 0)",
    ),
    Statistic(
        (P_WILCOXON,), "images", "p (W, images)", lambda row: fmt_p(row.get(P_WILCOXON)), compute=wilcoxon_p,
        shown=frozenset({"markdown", "terminal"}), phrase=lambda row: f"Wilcoxon {p_words(row[P_WILCOXON], row[P_ADJ_WILCOXON])}",
        note="p (W, images) = Wilcoxon signed-rank test (scipy.stats.wilcoxon) {images}", caption="Wilcoxon signed-rank over test images",
    ),
    Statistic(
        (P_ADJ_WILCOXON,), "images", "p_adj (W)", lambda row: fmt_p(row.get(P_ADJ_WILCOXON)), adjusts=P_WILCOXON,
        shown=frozenset({"markdown", "terminal", "multi"}),
    ),
    Statistic(
        ("p_better_images", "p_better_images_ci_low", "p_better_images_ci_high"), "images", "P(better) images",
        lambda row: fmt_ci(row, "p_better_images", "p_better_images_ci"), compute=lambda pair: better_share(pair, "images"),
        phrase=lambda row: f"P(better) = {fmt_ci(row, 'p_better_images', 'p_better_images_ci')}",
        note="P(better) = share of images (children) on which the cell beats the baseline, ties half (Bouthillier et al. 2021), "
        "percentile bootstrap 95% CI",
    ),
]  # fmt: skip
UNITS = {"children": "over J = {} paired children", "images": "over {} test images"}  # a unit's lead in summary.md, with its count


def shown_in(table: str) -> list[Statistic]:
    """The statistics a table shows (`markdown`, `terminal`, `multi`), in declaration order."""
    return [s for s in STATISTICS if table in s.shown]


def computed_columns() -> list[str]:
    """The columns `compare` returns, in declaration order."""
    return [c for s in STATISTICS if s.compute is not None for c in s.columns]


def compare(cell: Sample, base: Sample, bad: Bad, seed: int = 0) -> dict[str, float]:
    """Against the baseline: every statistic of `STATISTICS` computed over its unit, over paired children (same splits, at least 2)
    and over the shared test images; a unit the two cells do not share leaves its statistics `missing`."""
    paired = cell.split_key == base.split_key and list(cell.children.index) == list(base.children.index) and len(cell.children) >= 2
    shared = cell.images is not None and base.images is not None and cell.images[0] == base.images[0]
    units = {
        "children": (cell.children.to_numpy(float), base.children.to_numpy(float)) if paired else None,
        "images": (cell.images[1], base.images[1]) if shared else None,
    }
    pair = Pair(units, (cell.val_over_train + base.val_over_train) / 2, bad, seed)
    row: dict[str, float] = {}
    for stat in STATISTICS:
        if stat.compute is not None:
            row |= stat.compute(pair) if units[stat.unit] is not None else dict.fromkeys(stat.columns, stat.missing)
    return row


def rank_matrix(images: dict[str, Images | None], bad: Bad) -> pd.DataFrame | None:
    """Badness per test image (rows) and cell (columns) for the cells logged per image on the same images; None under 3 cells."""
    found = {cid: v for cid, v in images.items() if v is not None}
    if len(found) < 3 or len({tuple(v[0]) for v in found.values()}) != 1:
        return None
    return pd.DataFrame({cid: bad(v[1]) for cid, v in found.items()})


def friedman_test(matrix: pd.DataFrame | None) -> Friedman | None:
    """The Friedman test over a rank matrix (None without one)."""
    if matrix is None:
        return None
    statistic, p = friedman(matrix)
    return Friedman(statistic, p, matrix.shape[1], matrix.shape[0])


def adjust_report(table: pd.DataFrame, omnibus: Friedman | None, correction: str) -> pd.DataFrame:
    """Every p-value of a report as one family (each raw column an adjusted statistic `adjusts`, and the Friedman p): the adjusted
    columns beside the raw ones, and `omnibus.p_adj` set."""
    adjusted_stats = [s for s in STATISTICS if s.adjusts is not None]
    raw = np.concatenate([table[s.adjusts].to_numpy(float) for s in adjusted_stats] + [np.array([omnibus.p if omnibus else np.nan])])
    adjusted = adjust(raw, correction)
    n = len(table)
    out = table.copy()
    for i, stat in enumerate(adjusted_stats):
        out.insert(out.columns.get_loc(stat.adjusts) + 1, stat.columns[0], adjusted[i * n : (i + 1) * n])
    if omnibus:
        omnibus.p_adj = float(adjusted[-1])
    return out


def raw_p_columns() -> list[str]:
    """The raw p-value columns of the comparisons (those an adjusted statistic adjusts)."""
    return [s.adjusts for s in STATISTICS if s.adjusts is not None]
