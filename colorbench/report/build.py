"""`colorbench report`: one experiment's cells as a ranked table with significance tests, figures and a summary."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from colorbench import tracking
from colorbench.errors import ConfigError
from colorbench.metrics import badness, direction
from colorbench.report import validation
from colorbench.report.figures import SAMPLE_COLUMNS, plot_bar, plot_cd, plot_folds, plot_samples, plot_val_loss, study_figures
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
) -> Report:
    """Read an experiment's runs and write table.csv, table.md, the figures and summary.md into `out_dir`.

    A search experiment has one row per finished trial and gets Optuna's figures too (`storage` overrides the study's storage).
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; use one of: {', '.join(CORRECTIONS)}")
    tracking.open_store(tracking_uri)
    runs = load_runs(experiment)
    table, base, baselines, n_images, omnibus, matrix = build_table(runs, metric, baseline, correction)
    out = Path(out_dir) if out_dir is not None else Path("results") / experiment
    out.mkdir(parents=True, exist_ok=True)
    figures = study_figures(runs, out, storage)
    report = Report(experiment, metric, base, table, out, runs.failed, n_images, runs.pruned, figures, correction, omnibus, baselines=baselines)
    if matrix is not None:
        plot_cd(matrix, table, out / "cd.png")
    kids = children(runs, table, metric)
    if validation.needed(kids):
        report.validation = validation.write(kids, metric, partial(badness, metric), direction(metric), out)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(report))
    shown_runs, cells = one_replicate(runs, table, base)  # the figures show the baseline's replicate
    gray = table[table["cell"] == GRAY].iloc[0]
    plot_bar(cells, gray, metric, out / "bar.png")
    plot_folds(cells, gray, metric, out / "folds.png")
    plot_val_loss(val_loss_curves(shown_runs), out / "val_loss.png")
    plot_samples(sample_predictions(shown_runs, cells["cell"].head(SAMPLE_COLUMNS)), cells.head(SAMPLE_COLUMNS), out / "samples.png")
    (out / "summary.md").write_text(summary(report))
    return report
