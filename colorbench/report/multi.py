"""`colorbench report --experiment A --experiment B`: one table over several experiments.

Cells are matched by their config (the cell id hashes the resolved config, never the experiment name) and each row names the
experiment it came from. The baseline is the first experiment's (`table.choose_baseline`: named in its grid file, else its first cell
in file order; never chosen by a test metric). A row is tested against it only where both were scored on the same test set: the
same data fingerprint and the same test images; elsewhere the table says why not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from colorbench import tracking
from colorbench.errors import ConfigError
from colorbench.metrics import badness, rope
from colorbench.report.comparisons import NOT_COMPARED, STATISTICS, VERDICT, compare, computed_columns, settle, shown_in
from colorbench.report.html import run_links, write_multi
from colorbench.report.runs import FINGERPRINT, ROW, Runs, components, load_runs, metric_names, per_image
from colorbench.report.table import choose_baseline, sample
from colorbench.report.text import markdown_rows
from colorbench.stats import CORRECTIONS


@dataclass
class MultiReport:
    """A report over several experiments: the table (rank order) and where it was written."""

    experiments: list[str]
    metric: str
    table: pd.DataFrame
    out_dir: Path
    correction: str
    baseline_how: str = ""  # how the first experiment's baseline was chosen


def untested_reason(row: pd.Series, base: pd.Series, images: dict[int, tuple[list[str], np.ndarray] | None], i: int, b: int) -> str:
    """Why row `i` cannot be tested against the baseline row `b` (empty when it can): different data, or different test images. The
    fingerprint covers the test rows, so a metric not logged per test image (AuC) is still tested over the splits."""
    if row["fingerprint"] != base["fingerprint"]:
        return f"different test set: data fingerprint {row['fingerprint']} vs the baseline's {base['fingerprint']}"
    if images[i] is not None and images[b] is not None and images[i][0] != images[b][0]:
        return "different test images than the baseline's"
    return ""


def build_multi_report(
    experiments: list[str], out_dir: str | Path | None = None, metric: str = "psnr", tracking_uri: str | None = None, correction: str = "holm",
    ropes: Mapping[str, float] | None = None,
) -> MultiReport:
    """Rank every finished cell of `experiments` in one table, test each against the first experiment's baseline where the test set
    is shared (same data fingerprint and test images), settle the p-values and verdicts over the table; write table.csv, summary.md
    and report.html into `out_dir`."""
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; use one of: {', '.join(CORRECTIONS)}")
    if len(set(experiments)) != len(experiments):
        raise ConfigError(f"--experiment given twice: {experiments}")
    tracking.open_store(tracking_uri)
    loaded: dict[str, Runs] = {name: load_runs(name) for name in experiments}
    for name, runs in loaded.items():
        if metric not in metric_names(runs.cells):
            raise ConfigError(f"metric {metric!r} is not logged in experiment {name!r}; choose one of: {', '.join(metric_names(runs.cells))}")
    rows, samples, images = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp:
        for name, runs in loaded.items():
            for _, cell in runs.cells.iterrows():
                i = len(rows)
                images[i] = per_image(runs.folds_of(cell), metric, Path(tmp) / str(i))
                samples[i] = sample(runs, cell, metric, images[i])
                rows.append({
                    "experiment": name, "cell": cell[ROW], "config": cell[f"tags.{tracking.TAG_CELL}"], **dict(zip(("backbone", "loss", "splitter"), components(cell), strict=True)),
                    "fingerprint": cell.get(FINGERPRINT), "metric": metric, "n_folds": cell["metrics.n_folds"],
                    f"test_{metric}_mean": cell.get(f"metrics.test_{metric}_mean"), f"test_{metric}_std": cell.get(f"metrics.test_{metric}_std"),
                })  # fmt: skip
    table = pd.DataFrame(rows)
    table["experiments_with_config"] = table.groupby("config")["experiment"].transform("nunique")
    table.insert(3, "rank", badness(metric, table[f"test_{metric}_mean"]).rank(method="min").astype("Int64"))
    first = loaded[experiments[0]]
    base = choose_baseline(first.cells, None, first.named_baseline)
    b = int(table.index[(table["experiment"] == experiments[0]) & (table["cell"] == base.cell)][0])
    table["baseline"] = table.index == b
    table["not_tested"] = [untested_reason(row, table.loc[b], images, i, b) if i != b else "" for i, row in table.iterrows()]
    compared = {i: compare(samples[i], samples[b], metric, rope(metric, ropes)) for i, row in table.iterrows() if i != b and not row["not_tested"]}
    table = pd.concat([table, pd.DataFrame.from_dict(compared, orient="index").reindex(index=table.index, columns=computed_columns())], axis=1)
    table = settle(table, None, correction, metric).sort_values(["rank", "experiment"])
    table[VERDICT] = table[VERDICT].astype(object).fillna(NOT_COMPARED)
    out = Path(out_dir) if out_dir is not None else Path("results") / "+".join(experiments)
    out.mkdir(parents=True, exist_ok=True)
    report = MultiReport(experiments, metric, table, out, correction, f"{base.how} of {experiments[0]}")
    table.to_csv(out / "table.csv", index=False)
    (out / "summary.md").write_text(summary(report))
    write_multi(report, {(name, key): link for name, runs in loaded.items() for key, link in run_links(runs, mlflow.get_tracking_uri()).items()})
    return report


def terminal_rows(report: MultiReport) -> tuple[list[str], list[list[str]]]:
    """The table as text: experiment, cell, components, rank, metric, adjusted p-values, and why a row was not tested."""
    m = report.metric
    compared = shown_in("multi")
    header = ["experiment", "cell", "backbone", "loss", "splitter", "rank", f"test {m}", *(s.header for s in compared), "not tested because"]
    rows = []
    for _, row in report.table.iterrows():
        value = f"{row[f'test_{m}_mean']:.3f}" + (f" ± {row[f'test_{m}_std']:.3f}" if row["n_folds"] > 1 else "")
        tests = ["baseline"] * len(compared) if row["baseline"] else [s.cell(row) for s in compared]
        cell = row["cell"] + (f" (in {row['experiments_with_config']} experiments)" if row["experiments_with_config"] > 1 else "")
        rows.append([row["experiment"], cell, row["backbone"], row["loss"], row["splitter"], str(row["rank"]), value, *tests, row["not_tested"]])
    return header, rows


def summary(report: MultiReport) -> str:
    """summary.md: the table, the baseline, and which rows were left out of the tests and why."""
    header, rows = terminal_rows(report)
    lines = [f"# {' + '.join(report.experiments)}: test {report.metric} across experiments", ""]
    lines += markdown_rows(header, rows)
    base = report.table[report.table["baseline"]].iloc[0]
    untested = report.table[report.table["not_tested"] != ""]
    lines += [
        "",
        (f"Baseline: cell {base['cell']} of {base['experiment']} ({report.baseline_how}). Cells with the same id have the same "
        "resolved config in different experiments. Each row is tested against the baseline only on the same test set (same data "
        f"fingerprint and test images): {'; '.join(s.caption for s in STATISTICS if s.caption)}; "
        f"p-values adjusted over the table within each family ({report.correction}). The verdict comes from the tests over paired "
        "splits only; the tests over test images are about the trained models."),
    ]
    if len(untested):
        lines += ["", f"Left out of the tests ({len(untested)}):"]
        lines += [f"- {r['experiment']} / {r['cell']}: {r['not_tested']}" for _, r in untested.iterrows()]
    return "\n".join(lines) + "\n"
