"""Statistics of a report, as pure functions over numpy arrays and pandas frames (scipy, statsmodels, scikit-posthocs).

Conventions: `d` are paired differences (cell - baseline); "bad" arrays are oriented so that lower is better.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scikit_posthocs
import statsmodels.api as sm
from matplotlib.axes import Axes
from scipy import stats
from statsmodels.stats.multitest import multipletests

CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "none": None}  # --correction -> statsmodels' method
N_RESAMPLES = 10_000
BOOTSTRAP_VALUES = 1 << 20  # resampled values held at once by a bootstrap: its memory is O(this), not O(resamples x n)
CONFIDENCE = 0.95


def corrected_ttest(d: np.ndarray, val_over_train: float) -> tuple[float, float]:
    """Corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004) of paired differences over J children.

    t = mean(d) / sqrt((1/J + n_val/n_train) var(d)), J - 1 degrees of freedom; returns (t, two-sided p), NaN for J < 2 or var(d) = 0.
    """
    d = np.asarray(d, dtype=float)
    j = len(d)
    var = float(np.var(d, ddof=1)) if j >= 2 else 0.0
    if var == 0.0:
        return float("nan"), float("nan")
    t = float(np.mean(d)) / math.sqrt((1 / j + val_over_train) * var)
    return t, float(2 * stats.t.sf(abs(t), j - 1))


def bootstrap_batch(n: int) -> int:
    """Resamples per vectorised call of scipy's bootstrap for a sample of n (its memory is O(batch x n); the result does not depend
    on it): 10,000 test images would otherwise take 10,000 x 10,000 values at once, 0.8 GB."""
    return max(1, BOOTSTRAP_VALUES // max(n, 1))


def bootstrap_ci(values: np.ndarray, seed: int = 0, method: str = "BCa") -> tuple[float, float]:
    """95% bootstrap confidence interval of the mean of `values` (scipy.stats.bootstrap, seeded, N_RESAMPLES resamples).

    Of paired differences, this is the paired bootstrap of the mean difference: each resample draws whole pairs."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        value = float(values[0]) if len(values) else float("nan")
        return value, value
    result = stats.bootstrap(
        (values,), np.mean, n_resamples=N_RESAMPLES, batch=bootstrap_batch(len(values)), confidence_level=CONFIDENCE, method=method,
        random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def prob_outperform(bad_cell: np.ndarray, bad_base: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """P(cell better than baseline) over paired items (Bouthillier et al. 2021), ties counting half, with its bootstrap 95% CI.

    Returns (p, ci_low, ci_high); the CI is the percentile bootstrap over the pairs."""
    wins = np.where(np.asarray(bad_cell) < np.asarray(bad_base), 1.0, np.where(np.asarray(bad_cell) == np.asarray(bad_base), 0.5, 0.0))
    if not len(wins):
        return float("nan"), float("nan"), float("nan")
    return (float(wins.mean()), *bootstrap_ci(wins, seed, method="percentile"))


def adjust(pvalues: np.ndarray | pd.Series, correction: str = "holm") -> np.ndarray:
    """Adjusted p-values (statsmodels' multipletests: holm, bh = Benjamini-Hochberg, none); NaNs stay NaN and are not counted."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}")
    p = np.asarray(pvalues, dtype=float)
    out = p.copy()
    present = ~np.isnan(p)
    if CORRECTIONS[correction] is not None and present.any():
        out[present] = multipletests(p[present], method=CORRECTIONS[correction])[1]
    return out


def friedman(bad: pd.DataFrame) -> tuple[float, float]:
    """Friedman test (scipy.stats.friedmanchisquare), rows = blocks (test images), columns = cells: (statistic, p)."""
    result = stats.friedmanchisquare(*(bad[c].to_numpy(float) for c in bad.columns))
    return float(result.statistic), float(result.pvalue)


def mean_ranks(bad: pd.DataFrame) -> pd.Series:
    """Each column's mean rank over the rows (1 = best, i.e. lowest; ties share the mean rank)."""
    return pd.Series(stats.rankdata(bad.to_numpy(float), axis=1).mean(axis=0), index=bad.columns)


def nemenyi(bad: pd.DataFrame) -> pd.DataFrame:
    """Nemenyi post-hoc p-values after a Friedman test (scikit-posthocs), cells x cells; family-wise by construction."""
    return scikit_posthocs.posthoc_nemenyi_friedman(bad.to_numpy(float)).set_axis(bad.columns, axis=0).set_axis(bad.columns, axis=1)


def cd_diagram(bad: pd.DataFrame, ax: Axes, alpha: float = 0.05) -> None:
    """Critical-difference diagram (Demsar 2006) of the columns' mean ranks with Nemenyi crossbars, by scikit-posthocs."""
    scikit_posthocs.critical_difference_diagram(mean_ranks(bad), nemenyi(bad), ax=ax, alpha=alpha)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b rank agreement of x and y (scipy.stats.kendalltau); NaN with fewer than 2 pairs."""
    if len(x) < 2:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def variance_components(values: np.ndarray, splits: np.ndarray, per_image: np.ndarray, seed: int = 0) -> dict[str, float]:
    """One test metric of a cell's children (`values`, with each child's split in `splits`) and its per-image values averaged over
    the children: `sd_split` (SD of the per-split means, NaN with one split), `sd_seed` (pooled within-split SD over training seeds:
    the root residual mean square of a one-way ANOVA by split, statsmodels' OLS; NaN with one child per split) and `se_images`
    (bootstrap standard error of the mean over test images, scipy.stats.bootstrap, seeded)."""
    frame = pd.DataFrame({"value": np.asarray(values, dtype=float), "split": np.asarray(splits)})
    means = frame.groupby("split")["value"].mean()
    sd_split = float(means.std(ddof=1)) if len(means) > 1 else float("nan")
    sd_seed = float("nan")
    if len(frame) > len(means):
        design = pd.get_dummies(frame["split"], dtype=float)
        sd_seed = math.sqrt(sm.OLS(frame["value"].to_numpy(), design.to_numpy()).fit().mse_resid)
    images = np.asarray(per_image, dtype=float)
    se_images = float("nan")
    if len(images) > 1:
        result = stats.bootstrap(
            (images,), np.mean, n_resamples=N_RESAMPLES, batch=bootstrap_batch(len(images)), method="percentile", random_state=np.random.default_rng(seed)
        )
        se_images = float(result.standard_error)
    return {"sd_split": sd_split, "sd_seed": sd_seed, "se_images": se_images}
