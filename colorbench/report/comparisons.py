"""Each cell against the baseline, and all cells at once: the numbers behind a report's verdicts (see colorbench.stats).

Pure: the report reads the runs and hands over each cell's per-child and per-image values; nothing here touches MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from colorbench.stats import adjust, bootstrap_ci, corrected_ttest, friedman, prob_outperform

P_TTEST, P_WILCOXON = "p_ttest_corrected", "p_wilcoxon_images"
P_COLUMNS = (P_TTEST, P_WILCOXON)
ADJUSTED = "p_adj_"  # prefix of every adjusted p-value column
CHILDREN_COLUMNS = ("n_children", P_TTEST, "p_better_children", "p_better_children_ci_low", "p_better_children_ci_high")
IMAGE_COLUMNS = ("n_images", "diff_mean", "diff_ci_low", "diff_ci_high", P_WILCOXON, "p_better_images", "p_better_images_ci_low", "p_better_images_ci_high")
COLUMNS = CHILDREN_COLUMNS + IMAGE_COLUMNS  # what `compare` returns, in this order
Bad = Callable[[np.ndarray], np.ndarray]  # metric values -> badness (lower is better)
Images = tuple[list[str], np.ndarray]  # test image names, per-image metric averaged over a cell's children


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


def compare(cell: Sample, base: Sample, bad: Bad, seed: int = 0) -> dict[str, float]:
    """Against the baseline: over paired children (same splits) the corrected t-test and P(cell better); over test images the mean
    difference (cell - baseline) with its paired bootstrap 95% CI, the Wilcoxon test and P(cell better); each with its N."""
    row: dict[str, float] = {"n_children": 0, **dict.fromkeys(CHILDREN_COLUMNS[1:], np.nan)}
    paired = cell.split_key == base.split_key and list(cell.children.index) == list(base.children.index) and len(cell.children) >= 2
    if paired:
        c, b = cell.children.to_numpy(float), base.children.to_numpy(float)
        row["n_children"] = len(c)
        row[P_TTEST] = corrected_p(c - b, (cell.val_over_train + base.val_over_train) / 2)
        row["p_better_children"], row["p_better_children_ci_low"], row["p_better_children_ci_high"] = prob_outperform(bad(c), bad(b), seed)
    return row | compare_images(cell.images, base.images, bad, seed)


def corrected_p(d: np.ndarray, val_over_train: float) -> float:
    """The corrected resampled t-test's p; 1 when the children do not differ at all (no evidence of a difference)."""
    if np.all(d == 0):
        return 1.0
    return corrected_ttest(d, val_over_train)[1]


def compare_images(cell: Images | None, base: Images | None, bad: Bad, seed: int = 0) -> dict[str, float]:
    """Over the shared test images: n_images, mean difference and its bootstrap CI, Wilcoxon p, P(cell better) with its CI."""
    row = {"n_images": 0, **dict.fromkeys(IMAGE_COLUMNS[1:], np.nan)}
    if cell is None or base is None or cell[0] != base[0]:
        return row
    c, b = cell[1], base[1]
    d = c - b
    row["n_images"] = len(d)
    row["diff_mean"] = float(d.mean())
    row["diff_ci_low"], row["diff_ci_high"] = bootstrap_ci(d, seed)
    row[P_WILCOXON] = float(wilcoxon(c, b).pvalue) if np.any(d != 0) else 1.0
    row["p_better_images"], row["p_better_images_ci_low"], row["p_better_images_ci_high"] = prob_outperform(bad(c), bad(b), seed)
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
    """Every p-value of a report as one family (the comparisons' P_COLUMNS and the Friedman p): `p_adj_<test>` columns beside the raw
    ones, and `omnibus.p_adj` set."""
    raw = np.concatenate([table[c].to_numpy(float) for c in P_COLUMNS] + [np.array([omnibus.p if omnibus else np.nan])])
    adjusted = adjust(raw, correction)
    n = len(table)
    out = table.copy()
    for i, column in enumerate(P_COLUMNS):
        out.insert(out.columns.get_loc(column) + 1, ADJUSTED + column.removeprefix("p_"), adjusted[i * n : (i + 1) * n])
    if omnibus:
        omnibus.p_adj = float(adjusted[-1])
    return out
