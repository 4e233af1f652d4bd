"""The report as text: table.md, summary.md and the terminal table's rows."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping

import mlflow
import pandas as pd

from colorbench.metrics import DECODING_MARK, decoded, direction, headline_metrics, unit
from colorbench.report import validation
from colorbench.report.comparisons import FAMILIES, STATISTICS, UNITS, VERDICT, family_sizes, models_words, shown_in, undecided_words
from colorbench.report.figures import FIGURES
from colorbench.report.table import COMPONENTS, GRAY, Report, label, split_columns
from colorbench.report.text import fmt_value, markdown_rows, p_is


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


def markdown_table(report: Report) -> str:
    """table.md: every test metric of the default decoding as mean ± std, rank, p-values, the chosen metric per fold."""
    metrics = [c[len("test_") : -len("_mean")] for c in report.table.columns if re.fullmatch(r"test_.+_mean", c)]
    metrics = [m for m in metrics if DECODING_MARK not in m]
    splits = split_columns(report.table, report.metric)
    trials = ["sampled", "objective"] if "sampled" in report.table else []
    compared = shown_in("markdown")
    replicate = ["replicate"] if report.replicates > 1 else []
    header = ["cell", *trials, "backbone", "loss", "splitter", *replicate, "rank", *(s.header for s in compared), *metrics, f"{report.metric} SDs / SE",
              "best epoch", "train s", *splits]
    rows = []
    for _, row in report.table.iterrows():
        values = [cell_name(report, row), *(fmt_value(row.get(c)) for c in trials), row["backbone"], row["loss"], row["splitter"]]
        values += [fmt_value(row["replicate"]) for _ in replicate]
        values += [fmt_value(row.get("rank")), *(s.cell(row) for s in compared), *(mean_std(row, f"test_{m}") for m in metrics)]
        values += [components_text(row, f"test_{report.metric}")]
        values += [mean_std(row, "best_epoch"), mean_std(row, "train_seconds"), *(fmt_value(row.get(c)) for c in splits)]
        rows.append(values)
    ranking = (
        f"Ranked on test {report.metric} ({direction(report.metric)}); mean ± std over folds; * = baseline; `SDs / SE`: SD between splits, "
        "SD between training seeds, bootstrap SE over test images. "
    )
    return "\n".join(markdown_rows(header, rows)) + "\n\n" + ranking + tests_note(report) + failed_note(report) + decodings_table(report)


DECODINGS = {"annealed mean (the loss's temperature)": "default", "mode (T -> 0)": "mode", "plain mean (T = 1)": "T1"}  # see losses.CrossEntropy


def decodings_table(report: Report) -> str:
    """For losses that decode several ways (the classification losses): the headline test metrics per decoding."""
    marker = f"test_{decoded('psnr', 'mode')}_mean"
    if marker not in report.table:
        return ""
    rows = report.table[report.table[marker].notna()]
    shown = headline_metrics()
    header = ["cell", "loss", "decoding", *shown]
    values = [
        [row["cell"], row["loss"], name, *(mean_std(row, f"test_{decoded(m, decoding)}") for m in shown)]
        for _, row in rows.iterrows()
        for name, decoding in DECODINGS.items()
    ]
    return "\n".join(["\n## Test metrics per decoding\n", *markdown_rows(header, values)]) + "\n"


def cell_name(report: Report, row: pd.Series) -> str:
    """The cell id, starred when it is the baseline."""
    return row["cell"] + (" *" if row["cell"] in report.baselines.values() else "")


def rope_words(report: Report) -> str:
    """The ROPE of the report's metric in words."""
    if not report.rope > 0:
        return f"0 (no ROPE for {report.metric}: equivalence is not judged; give one with --rope {report.metric}=VALUE)"
    return f"{report.rope:g} {unit(report.metric)}".rstrip()


def tests_note(report: Report) -> str:
    """What the comparison columns hold (each statistic's note) and how the p-values were adjusted, family by family."""
    if report.n_images:
        images = f"over the {report.n_images} test images' per-image {report.metric}, averaged over each cell's children"
    else:
        images = f"over test images: not available, {report.metric} is not logged per image"
    sizes = family_sizes(report.table, report.friedman)
    adjusted = "not adjusted (--correction none)" if report.correction == "none" else f"adjusted by {CORRECTION_NAMES[report.correction]}"
    families = "; ".join(f"{family}: {FAMILIES[family]}, {n} p-values" for family, n in sizes.items())
    notes = "; ".join(s.note.format(images=images, rope=rope_words(report)) for s in STATISTICS if s.note)
    return (
        f"Against the baseline cell {report.baseline} ({report.baseline_how}){each_replicate(report)}: {notes}. "
        f"p_adj: {adjusted} within each family ({families}); table.csv keeps the raw p-values. `-`: not applicable.\n"
    )


def caption(correction: str) -> str:
    """The terminal table's caption: what its comparison columns are (each statistic's caption) and how p_adj was adjusted."""
    described = "; ".join(f"{s.header}: {s.caption}" for s in shown_in("terminal") if s.caption)
    return f"* baseline; {described}; p_adj: adjusted ({correction}); intervals, P(better), N and the verdicts in words: summary.md"


def each_replicate(report: Report) -> str:
    """How the baseline is chosen in each replicate, for an experiment with replicates."""
    if report.replicates < 2:
        return ""
    return f" (in each of the {report.replicates} replicates, the cell of that replicate with its configuration, starred; ranks are within a replicate)"


CORRECTION_NAMES = {"holm": "Holm (family-wise error)", "bh": "Benjamini-Hochberg (false discovery rate)"}


def failed_note(report: Report) -> str:
    """The cells that failed, one line each, and how many search trials were pruned."""
    pruned = f"\n{report.pruned} search trial(s) were pruned (stopped early) and are not in the table.\n" if report.pruned else ""
    return "".join(f"\nFailed: {label}: {reason}" for label, reason in report.failed) + ("\n" if report.failed else "") + pruned


def rank_lines(report: Report) -> list[str]:
    """The ranking, best first, each with its number of children (splits x training repeats)."""
    cells = report.table[report.table["cell"] != GRAY]
    return [
        f"{fmt_value(row['rank'])}. `{row['cell']}` {label(row)}{report.in_replicate(row)}: {mean_std(row, f'test_{report.metric}')} ({fmt_value(row['n_folds'])} children)"
        for _, row in cells.iterrows()
    ]


def verdict_words(row: pd.Series, report: Report) -> str:
    """A comparison's verdict first, in words: better / worse, equivalent within the ROPE, or undecided with why."""
    value = row[VERDICT]
    if value == "equivalent":
        return f"**equivalent** within ±{rope_words(report)}"
    if value == "undecided":
        return f"**undecided**: {undecided_words(row, report.metric)}"
    return f"**{value}**"


def significance_lines(report: Report) -> list[str]:
    """For each non-baseline cell, its verdict first, then the tests over splits that made it and the description over images."""
    table = report.table.set_index("cell")
    lines = []
    compared = [cid for cid, base in report.baselines.items() if cid != base]
    for cid, row in table[table.index.isin(compared)].iterrows():
        value, base = row[f"test_{report.metric}_mean"], table.loc[report.baselines[cid], f"test_{report.metric}_mean"]
        tests = [
            f"{lead.format(fmt_value(row[f'n_{name}']))}: {', '.join(s.phrase(row) for s in STATISTICS if s.unit == name and s.phrase)}"
            for name, lead in UNITS.items()
            if row[f"n_{name}"] > (1 if name == "splits" else 0)  # one split: no test across splits, its reason is the verdict's
        ]
        lines.append(f"- `{cid}` {label(row)}{report.in_replicate(row)}: {verdict_words(row, report)}. {report.metric} {value:.3f} vs {base:.3f}; " + "; ".join(tests) + ".")
    return lines


def friedman_lines(report: Report) -> list[str]:
    """The Friedman test across all cells and the critical-difference diagram."""
    f = report.friedman
    if f is None:
        return []
    test = (
        f"Friedman test (scipy.stats.friedmanchisquare) over {f.n_cells} cells{report.in_replicate(report.baseline_row)} with the {f.n_images} test images as blocks: "
        f"chi² = {f.statistic:.1f}, {p_is('p', f.p)}, {p_is('p_adj', f.p_adj)} ({models_words(f.p_adj)}). "
        "Like every test over images, it is about the trained models, not the configurations: it makes no verdict.\n"
    )
    figure = (
        f"![critical-difference diagram](cd.png)\n\n`cd.png`: each cell's mean rank over the test images on {report.metric} (1 = best); "
        "cells joined by a bar cannot be told apart on these images by the Nemenyi post-hoc test at 0.05 (scikit-posthocs; Demšar 2006).\n"
    )
    return ["## All cells at once, over the test images (descriptive): Friedman test and critical-difference diagram\n", test, figure]


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
    args += [f"--rope={report.metric}={report.rope:g}"] * (report.rope > 0) + ["--all-pairs"] * (report.pairs is not None)
    args += ["--top", str(report.top)] if report.top is not None else []
    args += ["--compare", *report.compare] if report.compare else []
    return shlex.join(args)


def summary(report: Report) -> str:
    """summary.md: the verdicts first, then the ranking, the pairs, the description over images, gray, figures, command."""
    parts = [
        f"# {report.experiment}: report on test {report.metric}\n",
        f"## Verdicts against the baseline `{report.baseline}` ({report.baseline_how})\n",
        (
            "A verdict is about the configurations: it comes only from the tests over the splits both cells were trained on (each "
            "split's training repeats averaged first), after adjustment, and from the equivalence analysis with the ROPE "
            f"±{rope_words(report)}. The tests over test images describe these trained models on these photos and make no verdict.\n"
        ),
        *significance_lines(report),
        "\n" + tests_note(report),
        f"## Ranking on test {report.metric} ({direction(report.metric)}; mean ± std over each cell's children, {report.n_images} test images; descriptive)\n",
        *rank_lines(report),
        "",
        *pairs_lines(report),
        *friedman_lines(report),
        *(validation.summary_section(report.validation, report.metric, direction(report.metric)) if report.validation is not None else []),
        "## Against a plain gray image (ab = 0)\n",
        *gray_lines(report),
        "\nThe full table, with every metric and each fold: [table.md](table.md), [table.csv](table.csv); as one page with the test photos side by side: [report.html](report.html).",
        failed_note(report),
        f"## Figures{report.in_replicate(report.baseline_row)}\n",
        *(f"![{title}]({name})\n" for name, title in FIGURES.items()),
        *(f"![Optuna: {name}]({name})\n" for name in report.study_figures if name.endswith(".png")),
        f"Produced by:\n\n```\n{command(report)}\n```\n",
    ]
    return "\n".join(parts)


def pairs_lines(report: Report) -> list[str]:
    """--all-pairs: the count of each verdict over the pairs, the heat-map and the table's files."""
    if report.pairs is None or report.pairs.empty:
        return []
    counts = report.pairs[VERDICT].value_counts()
    found = ", ".join(f"{n} {v}" for v, n in counts.items())
    return [
        f"## Every pair of cells ({len(report.pairs)} pairs; --all-pairs)\n",
        (
            f"Verdicts: {found}. Each pair is compared as a cell with the baseline is (`cell` - `versus`), its p-values adjusted over "
            "the pairs within their families. Table: [pairs.csv](pairs.csv).\n"
        ),
        "![pairwise verdicts](pairs.png)\n",
    ]


def terminal_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the compact terminal table."""
    metrics = [report.metric, *(m for m in headline_metrics() if m != report.metric)]
    described = ["sampled"] if "sampled" in report.table else ["backbone", "loss", "splitter"]  # a trial: its sampled values
    compared = shown_in("terminal")
    header = ["cell", *described, *metrics, f"{report.metric} SDs / SE", *(s.header for s in compared), "rank"]
    rows = []
    for _, row in report.table.iterrows():
        names = [cell_name(report, row), *(fmt_value(row.get(c)) if c == "sampled" else row[c] for c in described)]
        tests = [*(s.cell(row) for s in compared), fmt_value(row.get("rank"))]
        rows.append(names + [mean_std(row, f"test_{m}") for m in metrics] + [components_text(row, f"test_{report.metric}")] + tests)
    return header, rows
