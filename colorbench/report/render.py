"""The report as text: table.md, summary.md and the terminal table's rows."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping

import mlflow
import pandas as pd

from colorbench.metrics import DECODING_MARK, decoded, headline_metrics
from colorbench.report import validation
from colorbench.report.comparisons import (
    ADJUSTED,
    P_TTEST,
    P_WILCOXON,
)
from colorbench.report.figures import FIGURES
from colorbench.report.table import COMPONENTS, GRAY, Report, badness, direction, label, split_columns

ALPHA = 0.05


def mean_std(row: pd.Series, key: str) -> str:
    """`mean ± std` (std only over several folds), `-` when missing."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if pd.notna(row.get("n_folds")) and row["n_folds"] > 1 else f"{mean:.3f}"


def components_text(values: Mapping[str, object], key: str) -> str:
    """The variance components of test metric `key` that exist (e.g. `split 0.120, seed 0.050, images 0.310`), `-` when none do."""
    parts = [(word, values.get(f"{key}_{part}")) for part, word in COMPONENTS.items()]
    shown = [f"{word} {value:.3f}" for word, value in parts if isinstance(value, float) and not math.isnan(value)]
    return ", ".join(shown) or "-"


def fmt_p(p: float) -> str:
    """A p-value for people: `-` when not computed."""
    if pd.isna(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_value(value: object) -> str:
    """A table cell: floats to 3 decimals, missing as empty."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(report: Report) -> str:
    """table.md: every test metric of the default decoding as mean ± std, rank, p-values, the chosen metric per fold."""
    metrics = [c[len("test_") : -len("_mean")] for c in report.table.columns if re.fullmatch(r"test_.+_mean", c)]
    metrics = [m for m in metrics if DECODING_MARK not in m]
    splits = split_columns(report.table, report.metric)
    trials = ["sampled", "objective"] if "sampled" in report.table else []
    header = ["cell", *trials, "backbone", "loss", "splitter", "rank", *COMPARISON_HEADER, *metrics, f"{report.metric} SDs / SE", "best epoch", "train s", *splits]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in report.table.iterrows():
        values = [cell_name(report, row), *(fmt_value(row.get(c)) for c in trials), row["backbone"], row["loss"], row["splitter"]]
        values += [fmt_value(row.get("rank")), *comparison_values(row), *(mean_std(row, f"test_{m}") for m in metrics)]
        values += [components_text(row, f"test_{report.metric}")]
        values += [mean_std(row, "best_epoch"), mean_std(row, "train_seconds"), *(fmt_value(row.get(c)) for c in splits)]
        lines.append("| " + " | ".join(values) + " |")
    ranking = (
        f"Ranked on test {report.metric} ({direction(report.metric)}); mean ± std over folds; * = baseline; `SDs / SE`: SD between splits, "
        "SD between training seeds, bootstrap SE over test images. "
    )
    return "\n".join(lines) + "\n\n" + ranking + tests_note(report) + failed_note(report) + decodings_table(report)


P_ADJ_TTEST, P_ADJ_WILCOXON = ADJUSTED + P_TTEST.removeprefix("p_"), ADJUSTED + P_WILCOXON.removeprefix("p_")
COMPARISON_HEADER = ("J", "p (t corr., children)", "p_adj (t)", "images", "Δ [95% CI] (images)", "p (W, images)", "p_adj (W)", "P(better) images", "P(better) children")


def comparison_values(row: pd.Series) -> list[str]:
    """A row's comparison with the baseline, as COMPARISON_HEADER's cells."""
    return [
        fmt_value(row.get("n_children")), fmt_p(row.get(P_TTEST)), fmt_p(row.get(P_ADJ_TTEST)), fmt_value(row.get("n_images")),
        fmt_ci(row, "diff_mean", "diff_ci"), fmt_p(row.get(P_WILCOXON)), fmt_p(row.get(P_ADJ_WILCOXON)),
        fmt_ci(row, "p_better_images", "p_better_images_ci"), fmt_ci(row, "p_better_children", "p_better_children_ci"),
    ]


def fmt_ci(row: pd.Series, key: str, ci: str) -> str:
    """`value [low, high]`, `-` when missing."""
    value = row.get(key)
    if value is None or pd.isna(value):
        return "-"
    return f"{value:+.3f} [{row[ci + '_low']:+.3f}, {row[ci + '_high']:+.3f}]" if key == "diff_mean" else f"{value:.2f} [{row[ci + '_low']:.2f}, {row[ci + '_high']:.2f}]"


DECODINGS = {"annealed mean (the loss's temperature)": "default", "mode (T -> 0)": "mode", "plain mean (T = 1)": "T1"}  # see losses.CrossEntropy


def decodings_table(report: Report) -> str:
    """For losses that decode several ways (the classification losses): the headline test metrics per decoding."""
    marker = f"test_{decoded('psnr', 'mode')}_mean"
    if marker not in report.table:
        return ""
    rows = report.table[report.table[marker].notna()]
    shown = headline_metrics()
    header = ["cell", "loss", "decoding", *shown]
    lines = ["\n## Test metrics per decoding\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in rows.iterrows():
        for name, decoding in DECODINGS.items():
            values = [row["cell"], row["loss"], name, *(mean_std(row, f"test_{decoded(m, decoding)}") for m in shown)]
            lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def cell_name(report: Report, row: pd.Series) -> str:
    """The cell id, starred when it is the baseline."""
    return row["cell"] + (" *" if row["cell"] == report.baseline else "")


def tests_note(report: Report) -> str:
    """Which tests and intervals the comparison columns hold, and how the p-values were adjusted."""
    if report.n_images:
        images = f"over the {report.n_images} test images' per-image {report.metric}, averaged over each cell's folds"
    else:
        images = f"over test images: not available, {report.metric} is not logged per image"
    family = int(report.table[[P_TTEST, P_WILCOXON]].notna().to_numpy().sum()) + (report.friedman is not None)
    adjusted = "not adjusted (--correction none)" if report.correction == "none" else f"adjusted by {CORRECTION_NAMES[report.correction]}"
    return (
        f"Against the baseline cell {report.baseline}: p (t corr., children) = corrected resampled t-test (Nadeau & Bengio 2003) over "
        "the J children trained on the same splits (same splitter and data seed, J >= 2), variance inflated by 1/J + n_val/n_train; "
        f"p (W, images) = Wilcoxon signed-rank test (scipy.stats.wilcoxon) {images}; Δ = mean difference (cell - baseline) over the "
        f"test images with its paired bootstrap 95% CI (scipy.stats.bootstrap, BCa, 10,000 resamples, seed 0); P(better) = share of "
        "images (children) on which the cell beats the baseline, ties half (Bouthillier et al. 2021), percentile bootstrap 95% CI. "
        f"p_adj: the report's {family} p-values (both tests and the Friedman test) {adjusted}; table.csv keeps the raw ones. "
        "`-`: not applicable.\n"
    )


CORRECTION_NAMES = {"holm": "Holm (family-wise error)", "bh": "Benjamini-Hochberg (false discovery rate)"}


def failed_note(report: Report) -> str:
    """The cells that failed, one line each, and how many search trials were pruned."""
    pruned = f"\n{report.pruned} search trial(s) were pruned (stopped early) and are not in the table.\n" if report.pruned else ""
    return "".join(f"\nFailed: {label}: {reason}" for label, reason in report.failed) + ("\n" if report.failed else "") + pruned


def rank_lines(report: Report) -> list[str]:
    """The ranking, best first, each with its number of children J."""
    cells = report.table[report.table["cell"] != GRAY]
    return [
        f"{fmt_value(row['rank'])}. `{row['cell']}` {label(row)}: {mean_std(row, f'test_{report.metric}')} (J = {fmt_value(row['n_folds'])})"
        for _, row in cells.iterrows()
    ]


def significance_lines(report: Report) -> list[str]:
    """For each non-baseline cell: better/worse than the baseline, and whether each test finds it significant."""
    table = report.table.set_index("cell")
    base = table.loc[report.baseline, f"test_{report.metric}_mean"]
    lines = []
    for cid, row in table.drop(index=[report.baseline, GRAY]).iterrows():
        value = row[f"test_{report.metric}_mean"]
        score, base_score = badness(report.metric, pd.Series([value, base]))
        verdict = "worse" if score > base_score else "better" if score < base_score else "equal"
        tests = []
        if pd.notna(row[P_WILCOXON]):
            tests.append(
                f"over {fmt_value(row['n_images'])} test images Δ = {fmt_ci(row, 'diff_mean', 'diff_ci')}, "
                f"P(better) = {fmt_ci(row, 'p_better_images', 'p_better_images_ci')}, Wilcoxon {p_words(row[P_WILCOXON], row[P_ADJ_WILCOXON])}"
            )
        if pd.notna(row[P_TTEST]):
            tests.append(
                f"over J = {fmt_value(row['n_children'])} paired children P(better) = {fmt_ci(row, 'p_better_children', 'p_better_children_ci')}, "
                f"corrected t-test {p_words(row[P_TTEST], row[P_ADJ_TTEST])}"
            )
        tested = "; ".join(tests) or "no test applies (other splits and no per-image values)"
        lines.append(f"- `{cid}` {label(row)}: {report.metric} {value:.3f} vs {base:.3f}, {verdict}; {tested}.")
    return lines


def p_words(raw: float, adjusted: float) -> str:
    """`p = raw, p_adj = adjusted (significant|not significant)`: the verdict is on the adjusted p."""
    return f"{p_is('p', raw)}, {p_is('p_adj', adjusted)} ({'significant' if adjusted < ALPHA else 'not significant'})"


def p_is(name: str, p: float) -> str:
    """`name = 0.012`, or `name < 0.001`."""
    shown = fmt_p(p)
    return f"{name} {shown.replace('<', '< ')}" if shown.startswith("<") else f"{name} = {shown}"


def friedman_lines(report: Report) -> list[str]:
    """The Friedman test across all cells and the critical-difference diagram."""
    f = report.friedman
    if f is None:
        return []
    verdict = "the cells differ" if f.p_adj < ALPHA else "no evidence that the cells differ"
    test = (
        f"Friedman test (scipy.stats.friedmanchisquare) over {f.n_cells} cells with the {f.n_images} test images as blocks: "
        f"chi² = {f.statistic:.1f}, {p_is('p', f.p)}, {p_is('p_adj', f.p_adj)} ({verdict}).\n"
    )
    figure = (
        f"![critical-difference diagram](cd.png)\n\n`cd.png`: each cell's mean rank over the test images on {report.metric} (1 = best); "
        "cells joined by a bar are not significantly different by the Nemenyi post-hoc test at 0.05 (scikit-posthocs; Demšar 2006).\n"
    )
    return ["## All cells at once: Friedman test and critical-difference diagram\n", test, figure]


def colourfulness_words(ratio: float) -> str:
    """What a colourfulness ratio (prediction / truth) means."""
    if ratio < 0.5:
        return "far less colourful than the truth (desaturated, the typical look of MSE-style averaging)"
    if ratio < 0.8:
        return "less colourful than the truth"
    return "about as colourful as the truth" if ratio <= 1.25 else "more colourful than the truth"


def gray_lines(report: Report) -> list[str]:
    """Each cell against the plain-gray prediction in PSNR and colourfulness ratio."""
    table = report.table.set_index("cell")
    gray_psnr, gray_ratio = table.loc[GRAY].get("test_psnr_mean"), table.loc[GRAY].get("test_colorfulness_ratio_mean")
    if gray_psnr is None or gray_ratio is None or pd.isna(gray_psnr):
        return ["- the gray baseline was not logged in this experiment."]
    lines = []
    for cid, row in table.drop(index=GRAY).iterrows():
        psnr, ratio = row["test_psnr_mean"], row["test_colorfulness_ratio_mean"]
        lines.append(
            f"- `{cid}` {label(row)}: PSNR {psnr:.2f} dB ({psnr - gray_psnr:+.2f} dB vs gray {gray_psnr:.2f}); "
            f"colourfulness ratio {ratio:.2f} (gray {gray_ratio:.2f}): {colourfulness_words(ratio)}."
        )
    return lines


def command(report: Report) -> str:
    """The command line that reproduces this report."""
    args = ["colorbench", "report", "--experiment", report.experiment, "--tracking-uri", mlflow.get_tracking_uri()]
    args += ["--out", str(report.out_dir), "--metric", report.metric, "--baseline", report.baseline, "--correction", report.correction]
    return shlex.join(args)


def summary(report: Report) -> str:
    """summary.md: ranking, significance, comparison with gray, figures, command."""
    parts = [
        f"# {report.experiment}: report on test {report.metric}\n",
        f"## Ranking on test {report.metric} ({direction(report.metric)}; mean ± std over the J children, {report.n_images} test images)\n",
        *rank_lines(report),
        f"\n## Differences from the baseline `{report.baseline}` (significant at adjusted p < {ALPHA})\n",
        *significance_lines(report),
        "\n" + tests_note(report),
        *friedman_lines(report),
        *(validation.summary_section(report.validation, report.metric, direction(report.metric)) if report.validation is not None else []),
        "## Against a plain gray image (ab = 0)\n",
        *gray_lines(report),
        "\nThe full table, with every metric and each fold: [table.md](table.md), [table.csv](table.csv).",
        failed_note(report),
        "## Figures\n",
        *(f"![{title}]({name})\n" for name, title in FIGURES.items()),
        *(f"![Optuna: {name}]({name})\n" for name in report.study_figures if name.endswith(".png")),
        f"Produced by:\n\n```\n{command(report)}\n```\n",
    ]
    return "\n".join(parts)


def terminal_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the compact terminal table."""
    metrics = [report.metric, *(m for m in headline_metrics() if m != report.metric)]
    described = ["sampled"] if "sampled" in report.table else ["backbone", "loss", "splitter"]  # a trial: its sampled values
    header = ["cell", *described, *metrics, f"{report.metric} SDs / SE", "p_adj (t)", "p (W, images)", "p_adj (W)", "rank"]
    rows = []
    for _, row in report.table.iterrows():
        names = [cell_name(report, row), *(fmt_value(row.get(c)) if c == "sampled" else row[c] for c in described)]
        tests = [fmt_p(row.get(P_ADJ_TTEST)), fmt_p(row.get(P_WILCOXON)), fmt_p(row.get(P_ADJ_WILCOXON)), fmt_value(row.get("rank"))]
        rows.append(names + [mean_std(row, f"test_{m}") for m in metrics] + [components_text(row, f"test_{report.metric}")] + tests)
    return header, rows
