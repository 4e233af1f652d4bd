"""Statistics of a report, as pure functions over numpy arrays and pandas frames (scipy, statsmodels, scikit-posthocs, baycomp).

Conventions: `d` are paired differences (cell - baseline) of badness, "bad" arrays are oriented so that lower is better
(`badness`: closest-to-1 metrics are tested on |value - 1|). Units are nested: a split (one draw, one fold) holds training
repeats. A verdict is about configurations, so it rests on tests across splits: training repeats are averaged within each
split first (`split_means`), then the tests run over the J splits (`compare_splits`, `verdict`). Tests over test images
describe the trained models on those images and never make a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import scikit_posthocs
from baycomp.single import Posterior
from matplotlib.axes import Axes
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttost_paired

CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "none": None}  # --correction -> statsmodels' method
N_RESAMPLES = 10_000
BOOTSTRAP_VALUES = 1 << 20  # resampled values held at once by a bootstrap: its memory is O(this), not O(resamples x n)
CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided level of the split-level test behind a verdict
EQUIVALENCE = 0.95  # P(equivalent) that a verdict `equivalent` needs
POWER = 0.8  # the power at which `min_detectable_difference` is stated
MIN_SPLITS = 2  # fewer splits: no test across splits and no verdict (calibrated in benchmarks/calibration.py)
VERDICTS = ("better", "worse", "equivalent", "undecided")
ORIENT = {"lower": lambda v: v, "higher": np.negative, "one": lambda v: np.abs(v - 1)}  # a metric's `better` -> its badness


def badness(values: np.ndarray, better: str) -> np.ndarray:
    """`values` of a metric oriented so that lower is better: the value (`lower`), minus it (`higher`), or its distance from 1 (`one`:
    closest to 1 is best, e.g. colorfulness_ratio, so "better" means "closer to 1", not "different")."""
    if better not in ORIENT:
        raise ValueError(f"better must be one of {', '.join(ORIENT)}, not {better!r} (the metric's `better` in colorbench.metrics.METRICS)")
    return ORIENT[better](np.asarray(values, dtype=float))


def split_means(values: np.ndarray, splits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Children's `values` averaged over the training repeats within each split (a split = one (draw, fold); repeats of one split share
    its training set, so they are not independent splits): (the split labels, sorted; their means). Each split counts once, however
    many repeats it has."""
    values, splits = np.asarray(values, dtype=float), np.asarray(splits)
    if values.shape != splits.shape:
        raise ValueError(f"{len(values)} values but {len(splits)} split labels; give one split label per child")
    labels, inverse, counts = np.unique(splits, return_inverse=True, return_counts=True)
    return labels, np.bincount(inverse, weights=values) / counts


def corrected_se(d: np.ndarray, val_over_train: float) -> float:
    """Standard error of the mean of J paired split differences `d`, inflated for the splits' overlapping training sets:
    sqrt((1/J + n_val/n_train) var(d)) (Nadeau & Bengio 2003; for r redrawn k-fold partitions, J = r k: Bouckaert & Frank 2004).
    NaN for J < 2."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return float("nan")
    return math.sqrt((1 / len(d) + val_over_train) * float(np.var(d, ddof=1)))


def corrected_ttest(d: np.ndarray, val_over_train: float) -> tuple[float, float]:
    """Corrected resampled t-test of paired differences `d` over J splits, training repeats already averaged (`split_means`):
    t = mean(d) / corrected_se(d), J - 1 degrees of freedom; returns (t, two-sided p), NaN for J < 2 or var(d) = 0."""
    se = corrected_se(d, val_over_train)
    if not se > 0:
        return float("nan"), float("nan")
    t = float(np.mean(d)) / se
    return t, float(2 * stats.t.sf(abs(t), len(d) - 1))


def correlated_bayes(d: np.ndarray, val_over_train: float, rope: float) -> tuple[float, float, float]:
    """Bayesian correlated t-test (Corani & Benavoli 2015, baycomp) of badness differences `d` (cell - baseline) over J splits, with a
    region of practical equivalence [-rope, rope] in the metric's units: (P(worse), P(equivalent), P(better)); NaN for J < 2.

    The posterior of the mean difference is Student's t on J - 1 df, centred on mean(d), scaled by `corrected_se`. baycomp's
    `CorrelatedTTest(x, y, rope, runs)` builds the same posterior with 1/(k - 1) for n_val/n_train, which holds for k-fold only;
    so baycomp's `Posterior` is fed the corrected variance, which serves hold-out draws too."""
    if rope < 0:
        raise ValueError(f"rope must be >= 0 (a width in the metric's units), not {rope}")
    if len(d) < 2:
        return float("nan"), float("nan"), float("nan")
    probs = Posterior(float(np.mean(d)), corrected_se(d, val_over_train) ** 2, len(d) - 1, rope).probs()
    p_better, p_equivalent, p_worse = probs if rope > 0 else (probs[0], 0.0, probs[1])  # baycomp's left of the ROPE: lower badness
    return float(p_worse), float(p_equivalent), float(p_better)


def min_detectable_difference(d: np.ndarray, val_over_train: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference that the corrected t-test over these J splits detects with probability `power` at two-sided
    `alpha`, from the observed variance of `d`: statsmodels' `TTestPower` effect size for J observations (noncentrality
    es sqrt(J), J - 1 df) times sqrt(J) corrected_se(d), the SD that turns the corrected statistic into a one-sample t.
    NaN for J < 2 or var(d) = 0."""
    se = corrected_se(d, val_over_train)
    if not se > 0:
        return float("nan")
    return detectable_effect(len(d), alpha, power) * math.sqrt(len(d)) * se


@cache
def detectable_effect(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The standardised effect a two-sided one-sample t-test on n observations detects with probability `power` at `alpha`
    (statsmodels' TTestPower.solve_power; cached, as it depends on n alone in a report)."""
    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"))


def no_verdict_reason(n_splits: int) -> str | None:
    """Why a comparison over `n_splits` paired splits gets no test across splits and no verdict; None when it gets them."""
    if n_splits >= MIN_SPLITS:
        return None
    if n_splits == 1:
        return "one split: the split's luck is not measured"
    return "no paired splits: the cell and the baseline were not trained on the same splits"


def verdict(p_adjusted: float, p_equivalent: float, diff_mean: float, n_splits: int, alpha: float = ALPHA) -> str:
    """One comparison's verdict, from tests whose unit is the split (never from tests over images): `equivalent` when P(equivalent) >=
    EQUIVALENCE (`correlated_bayes`); else `better` or `worse` when the corrected t-test's adjusted p < `alpha`, by the sign of the mean
    badness difference `diff_mean` (cell - baseline; negative = better); else `undecided`. Equivalence comes first: a difference that
    the design detects but that lies within the ROPE does not matter. Fewer than MIN_SPLITS splits: ValueError (no calibrated test)."""
    reason = no_verdict_reason(n_splits)
    if reason:
        raise ValueError(f"no verdict: {reason}; train the cell and its baseline on the same {MIN_SPLITS} or more splits (k-fold, repeated hold-out or r x k)")
    if p_equivalent >= EQUIVALENCE:
        return "equivalent"
    if p_adjusted < alpha:
        return "better" if diff_mean < 0 else "worse"
    return "undecided"


@dataclass(frozen=True)
class SplitComparison:
    """A cell against the baseline across splits (`compare_splits`); the tests are NaN, with the `reason`, where there are none."""

    n_splits: int
    diff_mean: float  # mean over splits of the badness difference, cell - baseline (negative = cell better)
    t: float  # corrected resampled t-test
    p: float
    p_worse: float  # Bayesian correlated t-test with the ROPE
    p_equivalent: float
    p_better: float
    min_detectable: float  # smallest difference detected at 80 % power, alpha 0.05
    p_better_splits: float  # share of splits on which the cell is better, with its exact 95 % interval
    p_better_splits_ci_low: float
    p_better_splits_ci_high: float
    reason: str | None  # why there is no test across splits; None when there is


def compare_splits(bad_cell: np.ndarray, bad_base: np.ndarray, splits: np.ndarray, val_over_train: float, rope: float) -> SplitComparison:
    """Cell against baseline across splits, from the badness of paired children (same split and repeat at each position; `splits`
    holds each child's split label): training repeats are averaged within each split first, then every test runs over the J splits
    (`corrected_ttest`, `correlated_bayes`, `min_detectable_difference`, `prob_outperform` with its exact interval). `rope` and the
    result are in the metric's units; `val_over_train` is the splits' mean n_val / n_train."""
    _, cell = split_means(bad_cell, splits)
    _, base = split_means(bad_base, splits)
    d = cell - base
    reason = no_verdict_reason(len(d))
    if reason:
        nan = float("nan")
        return SplitComparison(len(d), float(np.mean(d)) if len(d) else nan, *[nan] * 9, reason=reason)
    return SplitComparison(
        len(d), float(np.mean(d)), *corrected_ttest(d, val_over_train), *correlated_bayes(d, val_over_train, rope),
        min_detectable_difference(d, val_over_train), *prob_outperform(cell, base, interval="exact"), reason=None,
    )  # fmt: skip


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


INTERVALS = ("bootstrap", "exact")


def prob_outperform(bad_cell: np.ndarray, bad_base: np.ndarray, seed: int = 0, interval: str = "bootstrap") -> tuple[float, float, float]:
    """P(cell better than baseline) over paired units (Bouthillier et al. 2021), ties counting half, with a 95% interval: (p, low, high).

    `exact`: Clopper-Pearson (statsmodels' proportion_confint, `beta`), for few units such as splits (0 wins of 3: [0, 0.71]).
    `bootstrap`: the percentile bootstrap over the pairs, for many units such as test images; when every pair agrees, it would have
    zero width, so the exact interval is given instead: no interval collapses while the number of units is finite."""
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}")
    bad_cell, bad_base = np.asarray(bad_cell, dtype=float), np.asarray(bad_base, dtype=float)
    wins = np.where(bad_cell < bad_base, 1.0, np.where(bad_cell == bad_base, 0.5, 0.0))
    if not len(wins):
        return float("nan"), float("nan"), float("nan")
    if interval == "bootstrap" and np.ptp(wins) > 0:
        return (float(wins.mean()), *bootstrap_ci(wins, seed, method="percentile"))
    low, high = proportion_confint(wins.sum(), len(wins), alpha=1 - CONFIDENCE, method="beta")
    return float(wins.mean()), float(low), float(high)


def tost_images(bad_cell: np.ndarray, bad_base: np.ndarray, rope: float) -> float:
    """Equivalence over paired test images: two one-sided t-tests (statsmodels' `ttost_paired`) of "the mean difference lies outside
    [-rope, rope]"; a small p says these trained models are equivalent on these images. Description only: it sees the trained
    models, not the configurations, and makes no verdict. (Chosen over baycomp's Bayesian signed-rank test, whose posterior takes
    50,000 Dirichlet draws, each over an n x n matrix of pairwise sums: seconds at 200 images, hours at 10,000.)"""
    if not rope > 0:
        raise ValueError(f"rope must be > 0 (a width in the metric's units), not {rope}")
    return float(ttost_paired(np.asarray(bad_cell, dtype=float), np.asarray(bad_base, dtype=float), -rope, rope)[0])


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


def cd_diagram(bad: pd.DataFrame, ax: Axes, alpha: float = 0.05, shown: list[str] | None = None) -> None:
    """Critical-difference diagram (Demsar 2006) of the columns' mean ranks with Nemenyi crossbars, by scikit-posthocs; ranks and
    tests are over every column, `shown` (default: all) are drawn. Ranks are labelled as plain numbers (`12.3`, never `1e+02`)."""
    shown = list(bad.columns) if shown is None else shown
    ranks, tests = mean_ranks(bad)[shown], nemenyi(bad).loc[shown, shown]
    scikit_posthocs.critical_difference_diagram(
        ranks, tests, ax=ax, alpha=alpha, label_fmt_left="{label} ({rank:.1f})", label_fmt_right="({rank:.1f}) {label}"
    )


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b rank agreement of x and y (scipy.stats.kendalltau); NaN with fewer than 2 pairs."""
    if len(x) < 2:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def variance_components(values: np.ndarray, splits: np.ndarray, per_image: np.ndarray, seed: int = 0) -> dict[str, float]:
    """One test metric of a cell's children (`values`, each child's split label in `splits`) and its per-image values averaged over the
    children, as a one-way random-effects model of split (method of moments on statsmodels' one-way ANOVA; unbalanced designs use
    the effective group size n0 = (N - sum n_i^2 / N) / (a - 1)):

    - `sd_split`: the between-split component sqrt(max(0, (MS_between - MS_within) / n0)): how much a configuration's score moves
      with the training set it gets. NaN with one split, and with one child per split (seed noise cannot be told apart then).
    - `sd_seed`: the within-split component sqrt(MS_within): how much it moves with the training seed alone. NaN with one child per split.
    - `se_images`: the bootstrap standard error of the mean over test images (scipy.stats.bootstrap, seeded): how much the score
      would move with another test set of this size.

    None is the standard error of a paired difference between two cells: in a pair the split's shared luck and the photos'
    difficulty cancel, so that one is `corrected_se` of the split-mean differences (and the paired bootstrap over images).

    Method of moments rather than statsmodels' MixedLM (REML): closed form, equal to REML on balanced designs whenever REML's
    estimate is inside the parameter space, and no convergence failures with the 2-5 splits of a typical cell."""
    frame = pd.DataFrame({"value": np.asarray(values, dtype=float), "split": np.asarray(splits)})
    sizes = frame.groupby("split").size().to_numpy()
    n, a = len(frame), len(sizes)
    sd_split = sd_seed = float("nan")
    if n > a:
        if a == 1:
            sd_seed = float(frame["value"].std(ddof=1))
        else:
            table = anova_lm(ols("value ~ C(split)", frame).fit())
            between, within = table.loc["C(split)", "mean_sq"], table.loc["Residual", "mean_sq"]
            n0 = (n - float((sizes**2).sum()) / n) / (a - 1)
            sd_split, sd_seed = math.sqrt(max(0.0, (between - within) / n0)), math.sqrt(within)
    images = np.asarray(per_image, dtype=float)
    se_images = float("nan")
    if len(images) > 1:
        result = stats.bootstrap(
            (images,), np.mean, n_resamples=N_RESAMPLES, batch=bootstrap_batch(len(images)), method="percentile", random_state=np.random.default_rng(seed)
        )
        se_images = float(result.standard_error)
    return {"sd_split": sd_split, "sd_seed": sd_seed, "se_images": se_images}
