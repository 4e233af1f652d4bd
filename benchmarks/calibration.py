"""Calibration of a report's verdict tests on simulated experiments (issue #25): no training, numpy and scipy only.

Every design the report supports is simulated `--reps` times as one cell against its baseline, under a true null (the two
configurations are equally good on this data set), under an effect (the cell better by `--effect` dB of PSNR) and at the edge
of the region of practical equivalence. For each test it prints the rate at which it claims a difference, with a Monte-Carlo
95 % interval (Wilson), and checks that no verdict-making test exceeds alpha = 0.05 beyond Monte-Carlo error on a design that
gets a verdict (the lower end of the interval <= 0.05). Exit status 1 when one does.

Generating model (test PSNR, dB). Configuration c trained on split j with training repeat r scores, on test image i,

    mu_c + image_i + luck_j + luck_cj + seed_cjr + noise_cjri

- image_i (how hard the photo is) and luck_j (the split's luck that both configurations share) cancel in every paired test,
  so they are not drawn; the simulation draws the differences cell - baseline of the other terms.
- luck_cj: how configuration c fares with split j's training set, SD `sd_split`. A share `additive` of its variance adds up over
  the training photos (each photo of the pool brings its own amount), so two splits' lucks are correlated as their training sets
  overlap (the splits are drawn for real: k-fold partitions, random hold-outs); the rest is particular to each training set.
  Under the null the configurations are equally good on this data set: the photos' amounts sum to zero over the pool.
  The last table drops that condition (a new pool per experiment, split-dominated scenario): its question is about data sets,
  which a verdict does not answer (replicates do); it shows why.
- seed_cjr: training randomness on a fixed split, SD `sd_seed`. noise_cjri: a trained model's own error on one photo, SD `sd_image`.

Scenarios: `measured` takes the SDs of results/bsds-validation-64/table.csv (seed 0.06-0.49, median 0.25; split means of two
cells differ by 0.17-0.26 over splits, of which 3-seed averages explain all but ~0.1 per configuration; the per-image differences
of two 3-child cells have SD ~0.66, so ~0.8 per child); `split-dominated` is the case the old children-level test failed in.

Tests, each over one comparison (so Holm over a family of one leaves p as it is):
- t over splits: `colorbench.stats.corrected_ttest` over the J split means (`compare_splits`), p < 0.05.
- Bayes over splits: `correlated_bayes`, P(better) or P(worse) >= 0.95.
- verdict: `colorbench.stats.verdict`, `better` or `worse` (refused below MIN_SPLITS splits).
- for contrast, neither making a verdict: the old children-level test (`corrected_ttest` over the J x R children, training
  repeats counted as splits) and the Wilcoxon test over test images (per-image values averaged over the children), which sees
  the trained models and takes their luck (split and seed) for a difference between configurations.

    python benchmarks/calibration.py            # 4,000 experiments per design and condition, a few minutes on one core
    python benchmarks/calibration.py --quick    # 100: a smoke run of seconds
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from colorbench.report.text import markdown_rows
from colorbench.stats import ALPHA, EQUIVALENCE, MIN_SPLITS, compare_splits, corrected_ttest, verdict

N_POOL, N_TEST = 300, 200  # photos for training and validation; test photos (a BSDS500-sized data set)
CHUNK = 250  # experiments drawn at once
MDD_REPS = 200  # experiments whose minimum detectable difference gives the median
VERDICT_TESTS = ("t over splits", "Bayes over splits", "verdict")
CONTRAST_TESTS = ("t over children (old)", "Wilcoxon over images")
TESTS = VERDICT_TESTS + CONTRAST_TESTS


@dataclass(frozen=True)
class Design:
    """A splitter and its training repeats: `draws` partitions, each k-fold (`k` folds) or one hold-out (`k` = 0)."""

    name: str
    draws: int
    k: int
    repeats: int = 1
    val_fraction: float = 0.2

    def validation_sets(self, rng: np.random.Generator) -> np.ndarray:
        """A (J, N_POOL) 0/1 matrix: which pool photos each split validates on (the others train)."""
        rows = []
        for _ in range(self.draws):
            order = rng.permutation(N_POOL)
            rows += np.array_split(order, self.k) if self.k else [order[: round(self.val_fraction * N_POOL)]]
        mask = np.zeros((len(rows), N_POOL))
        for j, idx in enumerate(rows):
            mask[j, idx] = 1.0
        return mask


@dataclass(frozen=True)
class Scenario:
    """The SDs of one configuration's terms, dB of PSNR."""

    name: str
    sd_split: float
    sd_seed: float
    sd_image: float
    additive: float = 0.5  # share of the split luck's variance that adds up over the training photos (`--additive`)


DESIGNS = (
    Design("hold-out", 1, 0),
    Design("hold-out x 3 seeds", 1, 0, repeats=3),
    Design("3-fold", 1, 3),
    Design("5-fold", 1, 5),
    Design("3-fold x 3 seeds", 1, 3, repeats=3),
    Design("repeated hold-out x 3", 3, 0),
    Design("repeated hold-out x 5", 5, 0),
    Design("2 x 3-fold (r x k)", 2, 3),
    Design("5 x 2-fold (r x k)", 5, 2),
    Design("2-fold", 1, 2),
)
SCENARIOS = (Scenario("measured (64 px)", 0.1, 0.25, 0.8), Scenario("split-dominated", 0.3, 0.05, 0.8))


def simulate(design: Design, scenario: Scenario, effect: float, reps: int, rng: np.random.Generator, over_pools: bool) -> tuple:
    """`reps` experiments' badness differences (cell - baseline, -PSNR): per child (reps, J, R), per test image averaged over the
    children (reps, N_TEST); with each child's split label and the splits' mean n_val / n_train."""
    mask = design.validation_sets(rng)
    n_val = mask.sum(1)
    n_train = N_POOL - n_val
    # SD of a split's training-set mean of iid N(0, 1) photo amounts: over pools, or with the amounts centred on the pool
    additive_sd = 1 / np.sqrt(n_train) if over_pools else np.sqrt(n_val * (1 - n_val / N_POOL)) / n_train
    j, r = len(mask), design.repeats
    sd = {k: math.sqrt(2) * v for k, v in vars(scenario).items() if k.startswith("sd_")}  # a difference of two configurations
    children, images = [], []
    for start in range(0, reps, CHUNK):
        m = min(CHUNK, reps - start)
        photo = rng.normal(size=(m, N_POOL))
        if not over_pools:
            photo -= photo.mean(1, keepdims=True)
        additive = (photo.sum(1, keepdims=True) - photo @ mask.T) / n_train / additive_sd
        luck = sd["sd_split"] * (math.sqrt(scenario.additive) * additive + math.sqrt(1 - scenario.additive) * rng.normal(size=(m, j)))
        model = luck[:, :, None] + sd["sd_seed"] * rng.normal(size=(m, j, r))  # each trained model's shift on every photo
        noise = sd["sd_image"] * rng.normal(size=(m, j, r, N_TEST))
        children.append(effect + model + noise.mean(-1))
        images.append(effect + model.mean((1, 2))[:, None] + noise.mean((1, 2)))
    return np.concatenate(children), np.concatenate(images), np.repeat(np.arange(j), r), float(np.mean(n_val / n_train))


def claims(children: np.ndarray, images: np.ndarray, splits: np.ndarray, val_over_train: float, rope: float) -> tuple[dict[str, np.ndarray], str | None]:
    """Per test, each experiment's claim: -1 cell better, +1 worse, 0 none, NaN no test; and `equivalent` (1 where the verdict says so);
    with the reason `compare_splits` gives for having no test across splits (None when it has them)."""
    reps, reason = len(children), None
    out = {name: np.full(reps, np.nan) for name in (*TESTS, "equivalent")}
    wilcoxon = stats.wilcoxon(images, axis=1)
    out["Wilcoxon over images"] = np.where(wilcoxon.pvalue < ALPHA, np.sign(images.mean(1)), 0.0)
    for i in range(reps):
        d = children[i].ravel()
        p_children = corrected_ttest(d, val_over_train)[1]
        if not math.isnan(p_children):
            out["t over children (old)"][i] = np.sign(d.mean()) if p_children < ALPHA else 0.0
        c = compare_splits(d, np.zeros_like(d), splits, val_over_train, rope)
        reason = c.reason
        if reason:
            continue
        out["t over splits"][i] = np.sign(c.diff_mean) if c.p < ALPHA else 0.0
        out["Bayes over splits"][i] = -1.0 if c.p_better >= EQUIVALENCE else 1.0 if c.p_worse >= EQUIVALENCE else 0.0
        said = verdict(c.p, c.p_equivalent, c.diff_mean, c.n_splits)
        out["verdict"][i] = {"better": -1.0, "worse": 1.0}.get(said, 0.0)
        out["equivalent"][i] = float(said == "equivalent")
    return out, reason


def rate(hits: np.ndarray) -> tuple[float, float, float]:
    """Share of experiments with a hit, and its Wilson 95 % interval; NaN without a test."""
    if np.isnan(hits).all():
        return float("nan"), float("nan"), float("nan")
    low, high = proportion_confint(int(hits.sum()), len(hits), alpha=0.05, method="wilson")
    return float(hits.mean()), float(low), float(high)


def cell(value: tuple[float, float, float], missing: str) -> str:
    return missing if math.isnan(value[0]) else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]"


def run_scenario(scenario: Scenario, reps: int, effect: float, rope: float, seed: int, over_pools: bool) -> list[str]:
    """Markdown tables of one scenario, and the names of the verdict tests that fail their calibration."""
    null_rows, power_rows, failures = [], [], []
    for number, design in enumerate(DESIGNS):
        rng = np.random.default_rng([seed, number, int(over_pools), *map(ord, scenario.name)])
        children, images, splits, vot = simulate(design, scenario, 0.0, reps, rng, over_pools)
        null, reason = claims(children, images, splits, vot, rope)
        j = len(set(splits))
        missing = {t: "no test" for t in TESTS} | ({t: f"no test ({reason.split(':')[0]})" for t in VERDICT_TESTS} if reason else {})
        fpr = {t: rate(np.abs(null[t])) for t in TESTS}
        at_zero = rate(null["equivalent"])
        false_equivalent = rate(claims(*simulate(design, scenario, rope, reps, rng, over_pools)[:2], splits, vot, rope)[0]["equivalent"])
        for name, value in [*((t, fpr[t]) for t in VERDICT_TESTS), ("equivalent at the ROPE's edge", false_equivalent)]:
            if not over_pools and not math.isnan(value[0]) and value[1] > ALPHA:
                failures.append(f"FAIL {scenario.name} / {design.name}: {name} {cell(value, '')}")
        null_rows.append([design.name, str(j), str(design.repeats), f"{vot:.2f}", *(cell(fpr[t], missing[t]) for t in TESTS)])
        if over_pools:
            continue
        children, images, splits, vot = simulate(design, scenario, -effect, reps, rng, over_pools)
        better = claims(children, images, splits, vot, rope)[0]
        power = {t: rate(np.where(np.isnan(better[t]), np.nan, better[t] == -1)) for t in TESTS}
        mdd = np.median([compare_splits(c.ravel(), np.zeros(c.size), splits, vot, rope).min_detectable for c in children[:MDD_REPS]])
        mdd_cell = "-" if math.isnan(mdd) else f"{mdd:.2f}"
        power_rows.append([design.name, *(cell(power[t], missing[t]) for t in TESTS), mdd_cell, cell(at_zero, "-"), cell(false_equivalent, "-")])
    question = "over data sets (a new pool per experiment)" if over_pools else "on this data set"
    sds = f"split {scenario.sd_split} (additive share {scenario.additive}), seed {scenario.sd_seed}, image {scenario.sd_image} dB"
    lines = [
        f"#### {scenario.name}, {question}: SD per configuration: {sds}",
        "",
        f"Rate of claimed differences under the null (true difference 0), {reps} experiments per design, 95 % Monte-Carlo interval:",
        "",
        *markdown_rows(["design", "J splits", "R repeats", "n_val/n_train", *TESTS], null_rows),
        "",
    ]
    if not over_pools:
        lines += [
            f"Power (cell better by {effect} dB: the share that says so), median minimum detectable difference (dB, 80 % power) and the",
            f"verdict `equivalent` (ROPE {rope} dB): its rate at a true difference of 0, and at the ROPE's edge ({rope} dB, a false claim):",
            "",
            *markdown_rows(["design", *TESTS, "min. detectable", "equivalent at 0", "equivalent at the edge"], power_rows),
            "",
        ]
    return lines + failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=4000, help="simulated experiments per design and condition")
    parser.add_argument("--quick", action="store_true", help="100 experiments: a smoke run")
    parser.add_argument("--effect", type=float, default=0.3, help="true difference for the power, dB")
    parser.add_argument("--rope", type=float, default=0.1, help="region of practical equivalence, dB")
    parser.add_argument("--additive", type=float, default=0.5, help="share of the split luck's variance that adds up over the photos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reps = 100 if args.quick else args.reps
    lines = [f"Verdict tests: alpha {ALPHA}, equivalence P >= {EQUIVALENCE}, at least {MIN_SPLITS} splits; pool {N_POOL} photos, {N_TEST} test photos.", ""]
    scenarios = [replace(s, additive=args.additive) for s in SCENARIOS]
    for scenario in scenarios:
        lines += [*run_scenario(scenario, reps, args.effect, args.rope, args.seed, over_pools=False), ""]
    lines += run_scenario(scenarios[-1], reps, args.effect, args.rope, args.seed, over_pools=True)
    failures = [line for line in lines if line.startswith("FAIL")]
    lines += ["", f"NOT CALIBRATED: {len(failures)} case(s)" if failures else "calibrated: every verdict test on every design with a verdict"]
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
