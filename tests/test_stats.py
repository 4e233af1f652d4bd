"""colorbench.stats on cases with known answers: hand-checked numbers and independent scipy/statsmodels references."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from colorbench.stats import (
    N_RESAMPLES,
    adjust,
    bootstrap_batch,
    bootstrap_ci,
    cd_diagram,
    corrected_ttest,
    friedman,
    kendall_tau,
    mean_ranks,
    nemenyi,
    prob_outperform,
    variance_components,
)


def test_corrected_ttest_matches_hand_numbers_and_the_plain_test_without_overlap() -> None:
    d = np.array([1.0, 2.0, 3.0])  # mean 2, var 1, J = 3
    t, p = corrected_ttest(d, val_over_train=0.5)
    assert t == pytest.approx(2 / math.sqrt(1 / 3 + 0.5))  # 2.19089
    assert p == pytest.approx(2 * stats.t.sf(2 / math.sqrt(1 / 3 + 0.5), df=2))
    t2 = 4 / (1 / 3 + 0.5)
    assert p == pytest.approx(1 - math.sqrt(t2 / (2 + t2)))  # hand formula: two-sided p of Student's t on 2 df is 1 - t / sqrt(2 + t^2)
    plain = stats.ttest_1samp(d, 0.0)  # n_val/n_train -> 0: the correction vanishes, the paired t-test remains
    assert corrected_ttest(d, 0.0) == pytest.approx((plain.statistic, plain.pvalue))
    assert corrected_ttest(d, 0.5)[1] > plain.pvalue  # the overlap makes it more conservative
    assert all(math.isnan(v) for v in corrected_ttest(np.array([1.0]), 0.5) + corrected_ttest(np.array([2.0, 2.0]), 0.5))


def test_bootstrap_ci_is_seeded_and_agrees_with_the_t_interval() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 400)
    low, high = bootstrap_ci(d, seed=0)
    assert (low, high) == bootstrap_ci(d, seed=0)  # seeded
    t_low, t_high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert low == pytest.approx(t_low, abs=0.01) and high == pytest.approx(t_high, abs=0.01)
    assert bootstrap_ci(np.array([0.5, 0.5, 0.5])) == (0.5, 0.5)


def traced_peak_mib(run: Callable[[], object]) -> float:
    """Peak of the memory Python and numpy allocate (tracemalloc) while `run` runs, in MiB."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_bootstraps_of_many_images_run_in_batches_and_equal_scipys_unbatched_result() -> None:
    values = np.random.default_rng(3).normal(size=2000)
    unbatched_mib = N_RESAMPLES * len(values) * 16 / 2**20  # one call: every resample's indices and values at once, 305 MiB
    assert bootstrap_batch(len(values)) < N_RESAMPLES
    assert traced_peak_mib(lambda: bootstrap_ci(values)) < unbatched_mib / 4
    assert traced_peak_mib(lambda: variance_components(np.array([1.0]), np.array([0]), values)) < unbatched_mib / 4
    whole = stats.bootstrap((values,), np.mean, n_resamples=N_RESAMPLES, method="BCa", random_state=np.random.default_rng(0))
    assert bootstrap_ci(values) == (whole.confidence_interval.low, whole.confidence_interval.high)
    whole = stats.bootstrap((values,), np.mean, n_resamples=N_RESAMPLES, method="percentile", random_state=np.random.default_rng(0))
    assert variance_components(np.array([1.0]), np.array([0]), values)["se_images"] == whole.standard_error


def test_probability_of_outperforming_counts_wins_and_half_ties() -> None:
    bad_cell, bad_base = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 3.0, 5.0])  # win, loss, tie, win
    p, low, high = prob_outperform(bad_cell, bad_base)
    assert p == pytest.approx(2.5 / 4)
    assert 0.0 <= low <= p <= high <= 1.0
    p, low, high = prob_outperform(np.zeros(5), np.ones(5))  # all pairs agree: the exact interval, not a collapsed bootstrap
    assert (p, high) == (1.0, 1.0) and low == pytest.approx(0.025 ** (1 / 5))  # Clopper-Pearson: 5 of 5 -> [0.478, 1]


def test_adjust_matches_hand_holm_and_bh_and_keeps_nans() -> None:
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005])
    # Holm over the 4 present: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, np.nan, 0.06, 0.02])
    # BH: p * m / rank = 0.02, 0.02, 0.04, 0.04, then the running minimum from the top
    np.testing.assert_allclose(adjust(p, "bh"), [0.02, 0.04, np.nan, 0.04, 0.02])
    np.testing.assert_allclose(adjust(p, "none"), p)
    with pytest.raises(ValueError, match="unknown correction 'bonf'"):
        adjust(p, "bonf")


def test_friedman_matches_the_hand_formula_and_ranks_lowest_first() -> None:
    bad = pd.DataFrame({"a": [1.0, 2.0, 1.0, 3.0], "b": [2.0, 3.0, 2.0, 4.0], "c": [3.0, 4.0, 5.0, 6.0]})  # every block ranks a < b < c
    statistic, p = friedman(bad)
    # 12 / (n k (k + 1)) * sum(R^2) - 3 n (k + 1) with n = 4, k = 3, rank sums 4, 8, 12: 56 - 48 = 8; p = chi2(2).sf(8) = exp(-4)
    assert statistic == pytest.approx(8.0) and p == pytest.approx(math.exp(-4))
    assert mean_ranks(bad).to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0}
    sig = nemenyi(bad)
    assert list(sig.index) == list(sig.columns) == ["a", "b", "c"] and sig.loc["a", "c"] < sig.loc["a", "b"]


def test_cd_diagram_draws_every_cell(tmp_path) -> None:
    rng = np.random.default_rng(0)
    bad = pd.DataFrame(rng.normal(size=(30, 4)) + np.arange(4), columns=["w", "x", "y", "z"])
    fig, ax = plt.subplots()
    cd_diagram(bad, ax)
    texts = {t.get_text() for t in ax.texts}
    assert all(any(name in text for text in texts) for name in bad.columns)
    fig.savefig(tmp_path / "cd.png")
    plt.close(fig)


def test_kendall_tau_hand_example() -> None:
    assert kendall_tau(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert math.isnan(kendall_tau(np.array([1.0]), np.array([2.0])))
