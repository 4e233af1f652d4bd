"""Each cell against the baseline, and all cells at once: the numbers behind a report's verdicts (see colorbench.stats).

`STATISTICS` declares every comparison statistic once: its columns, how it is computed and how each renderer (table.md,
summary.md, the terminal tables, table.csv, the cross-experiment table) shows it, so a new statistic is one entry.
Two units, two kinds of statement:

- over **splits** (a split = one (draw, fold); training repeats averaged within it first): the tests whose unit includes the
  training randomness. Only they, after adjustment, and the equivalence analysis make a comparison's `verdict`.
- over **test images**: the trained models on these photos. Shown as description, worded as such, never a verdict.

Pure: the report reads the runs and hands over each cell's per-child and per-image values; nothing here touches MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from colorbench.metrics import badness, better, tested, unit
from colorbench.report.text import fmt_ci, fmt_p, fmt_value, p_is
from colorbench.stats import (
    ALPHA,
    EQUIVALENCE,
    SplitComparison,
    adjust,
    bootstrap_ci,
    compare_splits,
    friedman,
    prob_outperform,
    tost_images,
    verdict,
)

P_TTEST, P_WILCOXON, P_TOST = "p_ttest_corrected", "p_wilcoxon_images", "p_tost_images"
ADJUSTED = "p_adj_"  # prefix of every adjusted p-value column
P_ADJ_TTEST, P_ADJ_WILCOXON, P_ADJ_TOST = ADJUSTED + "ttest_corrected", ADJUSTED + "wilcoxon_images", ADJUSTED + "tost_images"
VERDICT, NOT_COMPARED = "verdict", "-"  # `-`: the baseline's and the gray row's verdict
FAMILIES = {
    "verdict": "the corrected t-tests over splits, one per comparison (they make the verdicts)",
    "description": "the image-level tests (Wilcoxon, TOST) and the Friedman test (they describe the trained models)",
}
Bad = Callable[[np.ndarray], np.ndarray]  # metric values -> badness (lower is better)
Images = tuple[list[str], np.ndarray]  # test image names, per-image metric averaged over a cell's children
Row = Mapping[str, Any]  # one row of the report's table


@dataclass
class Sample:
    """What one cell brings to a comparison."""

    children: pd.Series  # test metric per child, indexed by (fold index, training repeat); a fold index names one split
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
    """A cell and the baseline as the statistics see them: their comparison across paired splits (always there: with no paired
    split it holds the reason), and their paired per-image values as tested (`metrics.tested`; None where the two cannot be compared
    over images: not logged per image, or other images)."""

    splits: SplitComparison
    images: tuple[np.ndarray, np.ndarray] | None
    metric: str
    rope: float
    seed: int

    def bad(self, values: np.ndarray) -> np.ndarray:
        """Tested values -> badness (lower is better)."""
        return -values if better(self.metric) == "higher" else values


@dataclass(frozen=True)
class Statistic:
    """One statistic of a comparison with the baseline: its columns, how it is computed and how every renderer shows it.

    - `columns`: its columns in table.csv (the value first, then e.g. its interval's bounds); table.csv keeps every statistic's.
    - `unit`: what it is computed over, `splits` or `images` (an attribute of `Pair`); the summary groups a unit's statistics.
    - `compute`: its columns' values from a `Pair` whose unit is there (else they are `missing`). None for an adjusted p-value,
      which `settle` fills from the raw p-value column `adjusts` within its `family` (`FAMILIES`), and for the verdict, which
      `settle` derives from the adjusted row (`derive`, given the row and the metric).
    - `header`, `cell`: its column title and its text in a row, in every table that shows it.
    - `shown`: those tables: `markdown` (table.md), `terminal` (the report's terminal table), `multi` (the cross-experiment
      table, on the terminal and in its summary.md).
    - `phrase`: its words in summary.md's sentence on a comparison; `note`: its definition under table.md and summary.md
      (`{images}` is filled with what the image-level tests run over, `{rope}` with the ROPE); `caption`: what it is, in the
      terminal table's caption.
    """

    columns: tuple[str, ...]
    unit: str
    header: str
    cell: Callable[[Row], str]
    compute: Callable[[Pair], dict[str, float]] | None = None
    adjusts: str | None = None
    family: str = "description"
    derive: Callable[[Row, str], dict[str, object]] | None = None
    missing: float = np.nan
    shown: frozenset[str] = frozenset({"markdown"})
    phrase: Callable[[Row], str] | None = None
    note: str = ""
    caption: str = ""


def splits_diff(pair: Pair) -> dict[str, float]:
    """Mean over the paired splits of the difference cell - baseline in the metric's tested units (`metrics.tested`)."""
    return {"diff_splits": float(-pair.splits.diff_mean if better(pair.metric) == "higher" else pair.splits.diff_mean)}


def splits_p(pair: Pair) -> dict[str, float]:
    """The corrected t-test's p over the splits; 1 when the paired splits do not differ at all (no evidence of a difference)."""
    s = pair.splits
    return {P_TTEST: 1.0 if s.reason is None and s.diff_mean == 0 and math.isnan(s.p) else s.p}


def detectable(pair: Pair) -> dict[str, float]:
    """The smallest difference the design detects with 80 % power at alpha 0.05 (`stats.min_detectable_difference`); infinite
    where there is no test across splits (one split, or none paired): no difference is detectable then."""
    return {"mdd": math.inf if pair.splits.reason else pair.splits.min_detectable}


def better_share(pair: Pair) -> dict[str, float]:
    """P(cell better) over the test images with its percentile bootstrap interval (exact when every image agrees)."""
    c, b = pair.images
    return dict(zip(("p_better_images", "p_better_images_ci_low", "p_better_images_ci_high"), prob_outperform(pair.bad(c), pair.bad(b), pair.seed), strict=True))


def mean_difference(pair: Pair) -> dict[str, float]:
    """Mean difference (cell - baseline) over the test images, as tested, and its paired bootstrap 95% CI."""
    c, b = pair.images
    low, high = bootstrap_ci(c - b, pair.seed)
    return {"diff_images": float((c - b).mean()), "diff_images_ci_low": low, "diff_images_ci_high": high}


def wilcoxon_p(pair: Pair) -> dict[str, float]:
    """The Wilcoxon signed-rank test's p over the test images; 1 when no image differs."""
    c, b = pair.images
    return {P_WILCOXON: float(wilcoxon(c, b).pvalue) if np.any(c != b) else 1.0}


def tost_p(pair: Pair) -> dict[str, float]:
    """TOST over the test images with the ROPE (`stats.tost_images`); NaN without a ROPE, or when no image differs."""
    c, b = pair.images
    return {P_TOST: tost_images(c, b, pair.rope) if pair.rope > 0 and np.ptp(c - b) > 0 else np.nan}


def decide(row: Row, metric: str) -> dict[str, object]:
    """The verdict from the adjusted split-level test and the equivalence analysis (`stats.verdict`), or `undecided` with the reason
    when there is no test across splits (`verdict_note`)."""
    if row.get("verdict_note"):
        return {VERDICT: "undecided"}
    p_adj = row[P_ADJ_TTEST]
    diff_bad = -row["diff_splits"] if better(metric) == "higher" else row["diff_splits"]
    equivalent = row["prob_equivalent"] if pd.notna(row["prob_equivalent"]) else 0.0
    return {VERDICT: verdict(p_adj if pd.notna(p_adj) else 1.0, equivalent, diff_bad, int(row["n_splits"]))}


def verdict_cell(row: Row) -> str:
    """A row's verdict for a table: `-` for the baseline and the gray row."""
    value = row.get(VERDICT)
    return NOT_COMPARED if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def probs_cell(row: Row) -> str:
    """`P(worse) / P(equivalent) / P(better)`, `-` where not computed."""
    values = [row.get(f"prob_{k}") for k in ("worse", "equivalent", "better")]
    return "-" if any(v is None or pd.isna(v) for v in values) else " / ".join(f"{v:.2f}" for v in values)


STATISTICS: list[Statistic] = [
    Statistic(
        (VERDICT,), "splits", "verdict", verdict_cell, derive=decide, shown=frozenset({"markdown", "terminal", "multi"}),
        caption="better / worse / equivalent / undecided, from the tests over splits only",
        note="verdict = better or worse when the corrected t-test over the paired splits has p_adj < 0.05 (by the sign of Δ), "
        f"equivalent when the Bayesian correlated t-test puts P(equivalent) >= {EQUIVALENCE} inside the ROPE ±{{rope}} (checked first), "
        "else undecided; a comparison with one split, or none paired, gets no test across splits and is undecided with the reason",
    ),
    Statistic(
        ("verdict_note",), "splits", "why no test", lambda row: row["verdict_note"] if isinstance(row.get("verdict_note"), str) else "",
        compute=lambda pair: {"verdict_note": pair.splits.reason or ""},
    ),
    Statistic(
        ("n_splits",), "splits", "J splits", lambda row: fmt_value(row.get("n_splits")),
        compute=lambda pair: {"n_splits": pair.splits.n_splits}, missing=0,
    ),
    Statistic(
        ("diff_splits",), "splits", "Δ splits", lambda row: fmt_value(row.get("diff_splits")), compute=splits_diff,
        phrase=lambda row: f"Δ = {row['diff_splits']:+.3f}",
        note="Δ splits = mean over the J paired splits of cell - baseline (each split's training repeats averaged first)",
    ),
    Statistic(
        (P_TTEST,), "splits", "p (t corr., splits)", lambda row: fmt_p(row.get(P_TTEST)), compute=splits_p,
        phrase=lambda row: f"corrected t-test {p_is('p', row[P_TTEST])}, {p_is('p_adj', row[P_ADJ_TTEST])}",
        note="p (t corr., splits) = corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004 for r x k) over the J "
        "splits both cells were trained on (same splitter and data seed), variance inflated by 1/J + n_val/n_train, J - 1 df",
    ),
    Statistic(
        (P_ADJ_TTEST,), "splits", "p_adj (t)", lambda row: fmt_p(row.get(P_ADJ_TTEST)), adjusts=P_TTEST, family="verdict",
        shown=frozenset({"markdown", "terminal", "multi"}), caption="corrected resampled t-test over paired splits, adjusted",
    ),
    Statistic(
        ("prob_worse", "prob_equivalent", "prob_better"), "splits", "P(worse / equiv. / better)", probs_cell,
        compute=lambda pair: {"prob_worse": pair.splits.p_worse, "prob_equivalent": pair.splits.p_equivalent, "prob_better": pair.splits.p_better},
        phrase=lambda row: f"P(worse / equivalent / better) = {probs_cell(row)}",
        note="P(worse / equiv. / better) = posterior probabilities that the true mean difference lies below, inside or above the ROPE "
        "±{rope} (Bayesian correlated t-test, Corani & Benavoli 2015, baycomp, with the corrected variance)",
    ),
    Statistic(
        ("mdd",), "splits", "MDD", lambda row: fmt_value(row.get("mdd")), compute=detectable, missing=np.inf,
        shown=frozenset({"markdown", "terminal"}), caption="smallest difference the design detects (80 % power)",
        note="MDD = the smallest true difference the corrected t-test over these J splits detects with 80 % power at alpha 0.05, from "
        "the observed variance (statsmodels TTestPower); inf: no test across splits",
    ),
    Statistic(
        ("p_better_splits", "p_better_splits_ci_low", "p_better_splits_ci_high"), "splits", "P(better) splits",
        lambda row: fmt_ci(row, "p_better_splits", "p_better_splits_ci"),
        compute=lambda pair: {
            "p_better_splits": pair.splits.p_better_splits, "p_better_splits_ci_low": pair.splits.p_better_splits_ci_low,
            "p_better_splits_ci_high": pair.splits.p_better_splits_ci_high,
        },
        phrase=lambda row: f"P(better) over splits = {fmt_ci(row, 'p_better_splits', 'p_better_splits_ci')}",
        note="P(better) splits = share of the paired splits on which the cell beats the baseline, ties half (Bouthillier et al. 2021), "
        "exact (Clopper-Pearson) 95% CI",
    ),
    Statistic(
        ("n_images",), "images", "images", lambda row: fmt_value(row.get("n_images")),
        compute=lambda pair: {"n_images": len(pair.images[0])}, missing=0,
    ),
    Statistic(
        ("diff_images", "diff_images_ci_low", "diff_images_ci_high"), "images", "Δ [95% CI] (images)",
        lambda row: fmt_ci(row, "diff_images", "diff_images_ci", "+.3f"),
        compute=mean_difference, phrase=lambda row: f"Δ = {fmt_ci(row, 'diff_images', 'diff_images_ci', '+.3f')}",
        note="Δ [95% CI] (images) = mean difference (cell - baseline) over the test images with its paired bootstrap 95% CI "
        "(scipy.stats.bootstrap, BCa, 10,000 resamples, seed 0)",
    ),
    Statistic(
        (P_WILCOXON,), "images", "p (W, images)", lambda row: fmt_p(row.get(P_WILCOXON)), compute=wilcoxon_p, shown=frozenset({"markdown"}),
        phrase=lambda row: f"Wilcoxon {p_is('p', row[P_WILCOXON])}, {p_is('p_adj', row[P_ADJ_WILCOXON])} ({models_words(row[P_ADJ_WILCOXON])})",
        note="p (W, images) = Wilcoxon signed-rank test (scipy.stats.wilcoxon) {images}: whether these trained models differ on these "
        "test images, not whether the configurations do",
    ),
    Statistic(
        (P_ADJ_WILCOXON,), "images", "p_adj (W)", lambda row: fmt_p(row.get(P_ADJ_WILCOXON)), adjusts=P_WILCOXON,
        shown=frozenset({"markdown", "terminal", "multi"}), caption="Wilcoxon over test images, adjusted: about these trained models",
    ),
    Statistic(
        (P_TOST,), "images", "p (TOST, images)", lambda row: fmt_p(row.get(P_TOST)), compute=tost_p,
        note="p (TOST, images) = two one-sided t-tests (statsmodels ttost_paired) that the mean difference over the test images lies "
        "outside ±{rope}: small = these trained models are equivalent on these images (description, never a verdict)",
    ),
    Statistic((P_ADJ_TOST,), "images", "p_adj (TOST)", lambda row: fmt_p(row.get(P_ADJ_TOST)), adjusts=P_TOST),
    Statistic(
        ("p_better_images", "p_better_images_ci_low", "p_better_images_ci_high"), "images", "P(better) images",
        lambda row: fmt_ci(row, "p_better_images", "p_better_images_ci"), compute=better_share,
        phrase=lambda row: f"P(better) over images = {fmt_ci(row, 'p_better_images', 'p_better_images_ci')}",
        note="P(better) images = share of the test images on which the cell's models beat the baseline's, ties half, percentile "
        "bootstrap 95% CI (exact when every image agrees)",
    ),
]  # fmt: skip
UNITS = {
    "splits": "the configurations, over J = {} paired splits",
    "images": "descriptive, these trained models on these {} test images",
}  # a unit's lead in summary.md, with its count


def models_words(p_adj: float) -> str:
    """What an adjusted image-level p says, about the trained models only."""
    if pd.isna(p_adj):
        return "not tested"
    return "these trained models differ on these test images" if p_adj < ALPHA else "no difference detected between these trained models on these test images"


def shown_in(table: str) -> list[Statistic]:
    """The statistics a table shows (`markdown`, `terminal`, `multi`), in declaration order."""
    return [s for s in STATISTICS if table in s.shown]


def computed_columns() -> list[str]:
    """The columns `compare` and `settle` fill, in declaration order."""
    return [c for s in STATISTICS if s.adjusts is None for c in s.columns]


def paired_splits(cell: Sample, base: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two cells' children on the splits both were trained on (same split key, the splits they share), each cell's training
    repeats kept: (cell values, baseline values, split labels), each split's values in both arrays at equal positions, however many
    repeats each cell has (`compare_splits` averages them per split). Empty when they share no splits."""
    empty = np.zeros(0)
    if cell.split_key != base.split_key:
        return empty, empty, empty
    c, b = cell.children.groupby(level=0).mean(), base.children.groupby(level=0).mean()  # per-split means: repeats averaged per cell
    shared = c.index.intersection(b.index)
    return c[shared].to_numpy(float), b[shared].to_numpy(float), shared.to_numpy()


def compare(cell: Sample, base: Sample, metric: str, rope: float, seed: int = 0) -> dict[str, object]:
    """Against the baseline: every computed statistic of `STATISTICS`, over the paired splits (`stats.compare_splits`) and over the
    shared test images (images without a value, e.g. the colourfulness ratio of a nearly gray truth, left out); a unit the two
    cells do not share leaves its statistics `missing`. `rope` is in the metric's units."""
    c, b, labels = paired_splits(cell, base)
    splits = compare_splits(to_bad(metric, c), to_bad(metric, b), labels, (cell.val_over_train + base.val_over_train) / 2, rope)
    images = None
    if cell.images is not None and base.images is not None and cell.images[0] == base.images[0]:
        ci, bi = tested(metric, cell.images[1]), tested(metric, base.images[1])
        keep = ~(np.isnan(ci) | np.isnan(bi))
        images = (ci[keep], bi[keep]) if keep.sum() else None
    pair = Pair(splits, images, metric, rope, seed)
    row: dict[str, object] = {}
    for stat in STATISTICS:
        if stat.compute is not None:
            row |= stat.compute(pair) if getattr(pair, stat.unit) is not None else dict.fromkeys(stat.columns, stat.missing)
    return row


def to_bad(metric: str, values: np.ndarray) -> np.ndarray:
    """Metric values -> badness (lower is better), closest-to-1 metrics as their distance from 1."""
    return np.asarray(badness(metric, np.asarray(values, dtype=float)), dtype=float)


def rank_matrix(images: dict[str, Images | None], metric: str) -> pd.DataFrame | None:
    """Badness per test image (rows) and cell (columns) for the cells logged per image on the same images, images without a value
    left out; None under 3 cells."""
    found = {cid: v for cid, v in images.items() if v is not None}
    if len(found) < 3 or len({tuple(v[0]) for v in found.values()}) != 1:
        return None
    return pd.DataFrame({cid: to_bad(metric, v[1]) for cid, v in found.items()}).dropna()


def friedman_test(matrix: pd.DataFrame | None) -> Friedman | None:
    """The Friedman test over a rank matrix (None without one)."""
    if matrix is None:
        return None
    statistic, p = friedman(matrix)
    return Friedman(statistic, p, matrix.shape[1], matrix.shape[0])


def settle(table: pd.DataFrame, omnibus: Friedman | None, correction: str, metric: str) -> pd.DataFrame:
    """The comparisons made final: every p-value adjusted within its family (`FAMILIES`: the split-level tests, which make verdicts;
    the image-level tests and the Friedman test, which describe), the adjusted columns beside the raw ones and `omnibus.p_adj` set;
    then each compared row's verdict (`decide`). Rows without a comparison (the baseline) keep NaN and no verdict."""
    out = table.copy()
    n = len(out)
    for family in FAMILIES:
        members = [s for s in STATISTICS if s.adjusts is not None and s.family == family]
        extra = [omnibus.p if omnibus else np.nan] if family == "description" else []
        adjusted = adjust(np.concatenate([out[s.adjusts].to_numpy(float) for s in members] + [np.array(extra)]), correction)
        for i, stat in enumerate(members):
            out.insert(out.columns.get_loc(stat.adjusts) + 1, stat.columns[0], adjusted[i * n : (i + 1) * n])
        if extra and omnibus:
            omnibus.p_adj = float(adjusted[-1])
    compared = out["n_splits"].notna()
    for stat in (s for s in STATISTICS if s.derive is not None):
        derived = pd.DataFrame([stat.derive(row, metric) if compared[i] else {} for i, row in out.iterrows()], index=out.index)
        for column in stat.columns:
            out[column] = derived.get(column, np.nan)
    return out


def family_sizes(table: pd.DataFrame, omnibus: Friedman | None) -> dict[str, int]:
    """How many p-values each family of a report adjusts."""
    sizes = {}
    for family in FAMILIES:
        raw = [s.adjusts for s in STATISTICS if s.adjusts is not None and s.family == family]
        sizes[family] = int(table[raw].notna().to_numpy().sum()) + (family == "description" and omnibus is not None)
    return sizes


def raw_p_columns() -> list[str]:
    """The raw p-value columns of the comparisons (those an adjusted statistic adjusts)."""
    return [s.adjusts for s in STATISTICS if s.adjusts is not None]


def undecided_words(row: Row, metric: str) -> str:
    """Why a comparison is undecided, in words: no test across splits, or the smallest difference its design detects."""
    if row.get("verdict_note"):
        return f"{row['verdict_note']}; no test across splits"
    return f"this design cannot detect differences below {fmt_value(row['mdd'])} {unit(metric)}".rstrip()
