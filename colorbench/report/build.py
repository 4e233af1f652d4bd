"""`colorbench report`: one experiment's cells as a ranked table with significance tests, figures, a summary and report.html,
logged on the experiment's report run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from colorbench import tracking
from colorbench.errors import ConfigError
from colorbench.metrics import badness, direction, metric_spec, rope
from colorbench.report import html, validation
from colorbench.report.figures import (
    FIGURES,
    SAMPLE_COLUMNS,
    plot_bar,
    plot_cd,
    plot_folds,
    plot_pairs,
    plot_samples,
    plot_val_loss,
    shown_cells,
    study_figures,
)
from colorbench.report.photos import compared_cells, make_photos
from colorbench.report.publish import publish
from colorbench.report.render import markdown_table, summary
from colorbench.report.runs import children, load_runs, sample_predictions, val_loss_curves
from colorbench.report.table import GRAY, Report, build_table, one_replicate
from colorbench.stats import CORRECTIONS


def build_report(
    experiment: str,
    out_dir: str | Path | None = None,
    metric: str = "psnr",
    baseline: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    correction: str = "holm",
    ropes: Mapping[str, float] | None = None,
    all_pairs: bool = False,
    top: int | None = None,
    compare: Sequence[str] | None = None,
) -> Report:
    """Read an experiment's runs and write table.csv, table.md, the figures, summary.md and report.html into `out_dir`, and log them
    on the experiment's report run.

    The baseline is `baseline` (a cell id prefix), else the one the grid file names, else the first cell in file order
    (`table.choose_baseline`). `ropes` overrides metrics' regions of practical equivalence (`parse_ropes`); `all_pairs` also
    compares every pair of cells (pairs.csv, pairs.png). A search experiment has one row per finished trial and gets Optuna's
    figures too (`storage` overrides the study's storage). `top`: the cells drawn in cd.png, bar.png and folds.png
    (`figures.shown_cells`); `compare`: the two cells (id prefixes, in the baseline's replicate) of report.html's photo comparison
    (default: the top cell against the baseline).
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; use one of: {', '.join(CORRECTIONS)}")
    if top is not None and top < 1:
        raise ConfigError(f"--top {top}: the figures need at least one cell; give --top 1 or more")
    tracking.open_store(tracking_uri)
    runs = load_runs(experiment)
    width = rope(metric, ropes)
    table, base, baselines, n_images, omnibus, matrix, pairs = build_table(runs, metric, baseline, correction, width, all_pairs)
    shown_runs, cells = one_replicate(runs, table, base.cell)  # the figures and photos show the baseline's replicate
    pair = compared_cells(cells, base.cell, compare)
    out = Path(out_dir) if out_dir is not None else Path("results") / experiment
    out.mkdir(parents=True, exist_ok=True)
    report = Report(
        experiment, metric, base.cell, table, out, runs.failed, n_images, runs.pruned, study_figures(runs, out, storage), correction, omnibus,
        baseline_how=base.how, rope=width, pairs=pairs, baselines=baselines, top=top, compare=pair if compare else None,
    )  # fmt: skip
    shown, note = shown_cells(cells, base.cell, top)
    if matrix is not None:
        plot_cd(matrix, shown, out / "cd.png", note)
    if pairs is not None:
        pairs.to_csv(out / "pairs.csv", index=False)
        plot_pairs(pairs, table, metric, out / "pairs.png")
    kids = children(runs, table, metric)
    if validation.needed(kids):
        report.validation = validation.write(kids, metric, partial(badness, metric), direction(metric), out)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(report))
    gray = table[table["cell"] == GRAY].iloc[0]
    plot_bar(shown, gray, metric, out / "bar.png", note)
    plot_folds(shown, gray, metric, out / "folds.png", note)
    plot_val_loss(val_loss_curves(shown_runs), out / "val_loss.png")
    plot_samples(sample_predictions(shown_runs, cells["cell"].head(SAMPLE_COLUMNS)), cells.head(SAMPLE_COLUMNS), out / "samples.png")
    (out / "summary.md").write_text(summary(report))
    photos = make_photos(shown_runs, cells, pair, metric, out)
    images = ["cd.png"] * (matrix is not None) + list(FIGURES) + ["pairs.png"] * (pairs is not None)
    images += ["val_vs_test.png"] * (report.validation is not None) + [name for name in report.study_figures if name.endswith(".png")]
    html.write_report(report, runs, photos, images)
    written = [html.NAME, "summary.md", "table.md", "table.csv", *images, *(name for name in report.study_figures if name not in images)]
    written += (["pairs.csv"] if pairs is not None else []) + (["validation.md", "validation.csv"] if report.validation is not None else [])
    report.published, problem = publish(runs.cells["experiment_id"].iloc[0], [out / name for name in written], metric)
    report.notices = photos.problems + ([problem] if problem else [])
    return report


def parse_ropes(texts: Sequence[str]) -> dict[str, float]:
    """`--rope METRIC=VALUE` options as {metric: width}; a malformed one, an unknown metric or a width <= 0 is a one-line ConfigError."""
    ropes = {}
    for text in texts:
        name, sep, value = text.partition("=")
        try:
            width = float(value) if sep else None
        except ValueError:
            width = None
        if width is None:
            raise ConfigError(f"--rope {text!r}: write METRIC=VALUE, a width in the metric's units, e.g. --rope psnr=0.2")
        if metric_spec(name) is None:
            raise ConfigError(f"--rope {text!r}: {name!r} is not in the metric table; colorbench list names the metrics")
        if not width > 0:
            raise ConfigError(f"--rope {text!r}: the width must be > 0 (a difference in {name}'s units that does not matter in practice)")
        ropes[name] = width
    return ropes
