"""The statistics behind a verdict (colorbench.stats): each against an independent computation (hand-worked cases, baycomp,
statsmodels, scipy), and the calibration benchmark's smoke run."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import baycomp
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.power import TTestPower

from colorbench.stats import (
    badness,
    compare_splits,
    corrected_se,
    corrected_ttest,
    correlated_bayes,
    min_detectable_difference,
    prob_outperform,
    split_means,
    tost_images,
    variance_components,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]


def t2_cdf(t: float) -> float:
    """Student's t CDF on 2 degrees of freedom, in closed form: 1/2 + t / (2 sqrt(2 + t^2))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_split_means_average_the_repeats_of_each_split_once_however_many() -> None:
    labels, means = split_means(np.array([1.0, 2.0, 3.0, 10.0, 20.0]), np.array([5, 5, 5, 2, 2]))
    assert labels.tolist() == [2, 5] and means.tolist() == [15.0, 2.0]
    with pytest.raises(ValueError, match="3 values but 2 split labels"):
        split_means(np.ones(3), np.array([0, 1]))


def test_the_corrected_test_runs_over_splits_not_over_training_repeats() -> None:
    splits = np.repeat([0, 1, 2], 3)
    d = np.array([0.5, 1.0, 1.5, 1.5, 2.0, 2.5, 2.5, 3.0, 3.5])  # split means 1, 2, 3: mean 2, var 1, J = 3
    result = compare_splits(d, np.zeros(9), splits, val_over_train=0.5, rope=0.1)
    assert result.n_splits == 3 and result.diff_mean == pytest.approx(2.0)
    assert result.t == pytest.approx(2 / math.sqrt(1 / 3 + 0.5))  # hand: 2 / sqrt((1/J + n_val/n_train) var), J = splits
    assert result.p == pytest.approx(2 * (1 - t2_cdf(result.t)))  # two-sided p of Student's t on J - 1 = 2 df, closed form
    assert result.t != pytest.approx(corrected_ttest(d, 0.5)[0])  # the nine children as units would be another (wrong) test
    assert math.isnan(corrected_se(d[:1], 0.5))  # one split has no spread


def test_one_split_gets_no_test_across_splits_only_a_reason() -> None:
    result = compare_splits(np.array([1.0, 2.0, 3.0]), np.zeros(3), np.zeros(3), val_over_train=0.25, rope=0.1)
    assert result.n_splits == 1 and result.reason == "one split: the split's luck is not measured"
    assert all(math.isnan(getattr(result, f)) for f in ("t", "p", "p_worse", "p_equivalent", "p_better", "min_detectable", "p_better_splits"))
    with pytest.raises(ValueError, match="no verdict: one split"):
        verdict(0.001, 0.0, -1.0, n_splits=1)


def test_bayesian_correlated_test_matches_a_hand_worked_student_posterior() -> None:
    d = np.array([1.0, 2.0, 3.0])  # posterior of the mean: Student t, 2 df, location 2, scale sqrt((1/3 + 1/2) * 1)
    scale = math.sqrt(1 / 3 + 0.5)
    p_worse, p_equivalent, p_better = correlated_bayes(d, 0.5, rope=0.5)
    assert p_better == pytest.approx(t2_cdf((-0.5 - 2) / scale))  # badness below -rope: the cell is better
    assert p_worse == pytest.approx(1 - t2_cdf((0.5 - 2) / scale))
    assert p_better + p_equivalent + p_worse == pytest.approx(1.0)
    assert correlated_bayes(d, 0.5, rope=0.0)[1] == 0.0 and correlated_bayes(d, 0.5, rope=0.0)[0] == pytest.approx(1 - t2_cdf(-2 / scale))


@pytest.mark.parametrize(("folds", "runs"), [(3, 1), (5, 1), (3, 2)])
def test_bayesian_correlated_test_equals_baycomp_on_k_fold_and_r_by_k(folds: int, runs: int) -> None:
    rng = np.random.default_rng(folds * 10 + runs)
    psnr_cell, psnr_base = rng.normal(22.3, 0.2, folds * runs), rng.normal(22.2, 0.2, folds * runs)
    bad_cell, bad_base = badness(psnr_cell, "higher"), badness(psnr_base, "higher")
    ours = correlated_bayes(bad_cell - bad_base, val_over_train=1 / (folds - 1), rope=0.1)  # k-fold: n_val / n_train = 1 / (k - 1)
    left, rope, right = baycomp.CorrelatedTTest.probs(bad_base, bad_cell, rope=0.1, runs=runs)  # its difference is y - x
    assert ours == pytest.approx((right, rope, left))  # P(worse), P(equivalent), P(better)
    p_worse, _, p_better = ours
    assert (p_better > p_worse) == (psnr_cell.mean() > psnr_base.mean())  # oriented by PSNR's direction: higher is better


def test_minimum_detectable_difference_has_80_percent_power_by_statsmodels_and_by_the_noncentral_t() -> None:
    d, ratio = np.array([0.3, -0.1, 0.4, 0.2, -0.2]), 0.25  # J = 5 splits of 5-fold
    mdd = min_detectable_difference(d, ratio)
    sd, j = float(np.std(d, ddof=1)), len(d)
    effect = mdd / (sd * math.sqrt(1 + j * ratio))  # the corrected statistic is a one-sample t of this standardised effect
    assert TTestPower().power(effect_size=effect, nobs=j, alpha=0.05, alternative="two-sided") == pytest.approx(0.8)
    nc, crit = mdd / corrected_se(d, ratio), stats.t.ppf(0.975, j - 1)  # independently: the corrected t is noncentral t
    assert stats.nct.sf(crit, j - 1, nc) + stats.nct.cdf(-crit, j - 1, nc) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(min_detectable_difference(d[:1], ratio))


def test_probability_of_outperforming_over_splits_has_an_exact_interval() -> None:
    assert prob_outperform(np.ones(3), np.zeros(3), interval="exact") == pytest.approx((0.0, 0.0, 1 - 0.025 ** (1 / 3)))  # [0, 0.71]
    k, n = 2, 5
    cell, base = np.r_[np.zeros(k), np.ones(n - k)], np.full(n, 0.5)
    exact = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert prob_outperform(cell, base, interval="exact") == pytest.approx((k / n, exact.low, exact.high))
    with pytest.raises(ValueError, match="unknown interval 'wald'"):
        prob_outperform(cell, base, interval="wald")


def test_probability_of_outperforming_over_images_never_collapses_to_zero_width() -> None:
    p, low, high = prob_outperform(np.zeros(200), np.ones(200))  # every image agrees: the bootstrap would give [1, 1]
    assert (p, high) == (1.0, 1.0) and low == pytest.approx(0.025 ** (1 / 200)) and low < 1.0
    p, low, high = prob_outperform(np.zeros(4), np.zeros(4))  # all ties: half a win each
    assert p == 0.5 and 0.0 < low < 0.5 < high < 1.0


def test_variance_components_hand_worked_balanced_and_unbalanced() -> None:
    # balanced: split means 2, 5, 8; MS_within = 6 / 3 = 2; MS_between = 2 * 18 / 2 = 18; n0 = 2: var_split = (18 - 2) / 2 = 8
    parts = variance_components(np.array([1.0, 3.0, 4.0, 6.0, 7.0, 9.0]), np.repeat([0, 1, 2], 2), np.zeros(0))
    assert parts["sd_split"] == pytest.approx(math.sqrt(8)) and parts["sd_seed"] == pytest.approx(math.sqrt(2))
    # unbalanced (3, 2, 1 repeats): means 2, 7, 10, grand mean 5; SS_between = 27 + 8 + 25 = 60, MS = 30; SS_within = 2 + 2 = 4,
    # MS = 4/3; n0 = (6 - 14/6) / 2 = 11/6; var_split = (30 - 4/3) / (11/6) = 172/11
    parts = variance_components(np.array([1.0, 2.0, 3.0, 6.0, 8.0, 10.0]), np.array([0, 0, 0, 1, 1, 2]), np.zeros(0))
    assert parts["sd_split"] == pytest.approx(math.sqrt(172 / 11)) and parts["sd_seed"] == pytest.approx(math.sqrt(4 / 3))


def test_between_split_component_is_zero_when_seed_noise_explains_the_split_means() -> None:
    values, splits = np.array([0.0, 2.0, 0.2, 2.2, -0.1, 1.9]), np.repeat([0, 1, 2], 2)  # means 1, 1.2, 0.9 (SD 0.15), within SD 1.41
    parts = variance_components(values, splits, np.zeros(0))
    assert parts["sd_split"] == 0.0 and parts["sd_seed"] == pytest.approx(math.sqrt(2))  # MS_between 0.047 < MS_within 2: clipped
    one_each, one_split = variance_components(values, np.arange(6), np.zeros(0)), variance_components(values, np.zeros(6), np.zeros(0))
    assert math.isnan(one_each["sd_split"]) and math.isnan(one_each["sd_seed"])  # one child per split: not separable
    assert math.isnan(one_split["sd_split"]) and one_split["sd_seed"] == pytest.approx(np.std(values, ddof=1))


def test_variance_components_equal_statsmodels_mixedlm_reml_on_a_balanced_design() -> None:
    rng = np.random.default_rng(4)
    splits = np.repeat(np.arange(6), 4)
    values = 22 + np.repeat(rng.normal(0, 0.4, 6), 4) + rng.normal(0, 0.2, 24)
    parts = variance_components(values, splits, np.zeros(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm("value ~ 1", pd.DataFrame({"value": values, "split": splits}), groups="split").fit(reml=True)
    assert parts["sd_split"] ** 2 == pytest.approx(float(fit.cov_re.iloc[0, 0]), rel=1e-3)  # REML = ANOVA when balanced and > 0
    assert parts["sd_seed"] ** 2 == pytest.approx(fit.scale, rel=1e-3)


def test_badness_orients_every_metric_lower_is_better() -> None:
    values = np.array([0.8, 1.1, 1.0])
    assert badness(values, "lower").tolist() == [0.8, 1.1, 1.0]
    assert badness(values, "higher").tolist() == [-0.8, -1.1, -1.0]
    assert badness(values, "one") == pytest.approx([0.2, 0.1, 0.0])  # closest to 1 is best: 1.1 beats 0.8
    with pytest.raises(ValueError, match="better must be one of lower, higher, one, not 'up'"):
        badness(values, "up")


@pytest.mark.parametrize(
    ("p_adjusted", "p_equivalent", "diff_mean", "expected"),
    [
        (0.01, 0.10, -0.5, "better"),  # badness fell: the cell is better
        (0.01, 0.10, 0.5, "worse"),
        (0.01, 0.96, 0.02, "equivalent"),  # detected, but inside the ROPE: it does not matter
        (0.30, 0.95, 0.01, "equivalent"),
        (0.06, 0.94, -0.5, "undecided"),
        (float("nan"), 0.0, -0.5, "undecided"),
    ],
)
def test_verdict_from_the_split_level_tests(p_adjusted: float, p_equivalent: float, diff_mean: float, expected: str) -> None:
    assert verdict(p_adjusted, p_equivalent, diff_mean, n_splits=3) == expected


def test_tost_over_images_is_the_larger_of_two_one_sided_t_tests() -> None:
    rng = np.random.default_rng(2)
    cell, base = rng.normal(22.0, 1.0, 200), rng.normal(22.0, 1.0, 200)
    d = cell - base
    lower = stats.ttest_1samp(d, -0.3, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.3, alternative="less").pvalue
    assert tost_images(cell, base, 0.3) == pytest.approx(max(lower, upper))
    with pytest.raises(ValueError, match="rope must be > 0"):
        tost_images(cell, base, 0.0)


def test_calibration_quick_run_prints_every_design_and_is_calibrated() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "benchmarks/calibration.py", "--quick"], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rate = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"
    for design in ("hold-out", "hold-out x 3 seeds", "3-fold", "5-fold", "3-fold x 3 seeds", "repeated hold-out x 3", "2 x 3-fold (r x k)"):
        assert re.search(rf"^\| {re.escape(design)} \| .*{rate}", out, re.MULTILINE), design
    assert re.search(r"^\| hold-out x 3 seeds \| 1 \| 3 \| 0\.25 \| no test \(one split\) \| no test \(one split\) \| no test \(one split\) \| " + rate, out, re.MULTILINE)
    assert re.search(rf"^\| 3-fold \| 3 \| 1 \| 0\.50 \| {rate} \| {rate} \| {rate} \| {rate} \| {rate} \|$", out, re.MULTILINE)
    assert out.rstrip().endswith("calibrated: every verdict test on every design with a verdict")
