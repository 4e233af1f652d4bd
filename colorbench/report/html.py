"""report.html: a report as one self-contained page, from Jinja2 templates shipped in `templates/`.

The page inlines its style, its two small scripts (`sort.js`: sortable tables; `photos.js`: the photo comparison's ordering,
row filter and metric switch) and every image as a `data:` URI, and its Content-Security-Policy allows nothing else: it opens
from a file or from the MLflow artifact view and loads nothing from the network. The ranking table shows every comparison
statistic declared in `comparisons.STATISTICS`, so a new one appears here too.
"""

from __future__ import annotations

import base64
import datetime
import math
import shlex
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from PIL import Image

from colorbench import tracking
from colorbench.metrics import direction, headline_metrics
from colorbench.report.comparisons import STATISTICS, shown_in
from colorbench.report.figures import FIGURES
from colorbench.report.photos import EACH_END, Comparison, Photos, Strip
from colorbench.report.render import command, components_text, mean_std, tests_note
from colorbench.report.runs import ROW, Runs
from colorbench.report.table import GRAY, Report, label
from colorbench.report.text import fmt_value
from colorbench.version import __version__

if TYPE_CHECKING:
    from colorbench.report.multi import MultiReport

NAME = "report.html"
TEMPLATES = Environment(loader=PackageLoader("colorbench.report", "templates"), autoescape=True, undefined=StrictUndefined, trim_blocks=True)
TITLES = {"cd.png": "critical-difference diagram", **FIGURES, "val_vs_test.png": "validation estimate vs test score", "pareto.png": "Pareto front"}
PHOTO_WIDTH = (96, 160)  # displayed width of a test photo: smaller ones are enlarged a whole number of times (pixelated), larger shrunk
Cell = dict[str, Any]  # one table cell: text, sort (data-sort value; None: sorted by its text), href, num (right-aligned), badge, long
LONG = 40  # characters: a longer text statistic (a reason, a note) wraps


def static(name: str) -> Markup:
    """A file of `templates/` (style, script) to inline as is."""
    return Markup(files("colorbench.report").joinpath("templates", name).read_text())


def data_uri(path: Path) -> str:
    """A PNG as a `data:` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def sort_value(value: object) -> str | None:
    """A cell's sort key: a number as text, "" when missing (sorted last), None for text (sorted by what the cell shows)."""
    if isinstance(value, str):
        return None
    return "" if value is None or pd.isna(value) else f"{float(value):.12g}"


def text_cell(text: object, **extra: object) -> Cell:
    """A table cell sorted by its text."""
    return {"text": str(text), "sort": None, "href": None, "num": False, "badge": None, "long": False} | extra


def number_cell(text: object, value: object) -> Cell:
    """A table cell showing `text`, sorted by `value` (a number, or missing; text values sort as text, and a long one wraps)."""
    words = isinstance(value, str)
    return text_cell(text, sort=sort_value(value), num=not words, long=words and len(str(text)) > LONG)


def ui_note(uri: str) -> Markup:
    """Where the run links lead."""
    if tracking.ui_address(uri) != tracking.UI_ADDRESS:
        return Markup("Run links open the MLflow server {}.").format(tracking.ui_address(uri))
    return Markup("Run links open the MLflow UI at {}, where <code>mlflow ui --backend-store-uri {}</code> serves this store.").format(tracking.UI_ADDRESS, uri)


def run_links(runs: Runs, uri: str) -> dict[str, str]:
    """Each row key's MLflow run page."""
    address = tracking.ui_address(uri)
    return {row[ROW]: tracking.run_url(row["experiment_id"], row["run_id"], address) for _, row in runs.cells.iterrows()}


def ranking(report: Report, links: Mapping[str, str]) -> dict[str, Any]:
    """The ranking table: every cell in rank order with its metric, N, variance components, every comparison statistic and the
    other headline metrics; the gray baseline in the footer."""
    m = report.metric
    others = [h for h in headline_metrics() if h != m]
    columns = [("rank", "within the cell's replicate, when the experiment has several"), ("cell", "cell id (a search trial: trial-N)"), ("configuration", "")]
    columns += [(f"test {m}", "mean ± std over the cell's children"), ("N", "children: trained splits x training repeats")]
    columns += [(f"{m} SDs / SE", "SD between splits, SD between training seeds, bootstrap SE over test images")]
    columns += [(s.header, s.caption) for s in STATISTICS] + [(f"test {h}", "mean ± std over the children") for h in others]
    columns += [("best epoch", ""), ("train s", "training seconds per child")]
    rows = []
    for _, row in report.table[report.table["cell"] != GRAY].iterrows():
        base = row["cell"] in report.baselines.values()
        cells = [number_cell(fmt_value(row["rank"]), row["rank"]), text_cell(row["cell"], href=links.get(row["cell"]), badge="baseline" if base else None)]
        cells += [text_cell(label(row) + report.in_replicate(row)), number_cell(mean_std(row, f"test_{m}"), row.get(f"test_{m}_mean"))]
        cells += [number_cell(fmt_value(row["n_folds"]), row["n_folds"]), text_cell(components_text(row, f"test_{m}"))]
        cells += [number_cell(s.cell(row), row.get(s.columns[0])) for s in STATISTICS]
        cells += [number_cell(mean_std(row, f"test_{h}"), row.get(f"test_{h}_mean")) for h in others]
        cells += [number_cell(mean_std(row, key), row.get(f"{key}_mean")) for key in ("best_epoch", "train_seconds")]
        rows.append({"key": row["cell"], "baseline": base, "cells": cells})
    gray = report.table[report.table["cell"] == GRAY].iloc[0]
    blank = text_cell("")
    foot = [blank, text_cell(GRAY), text_cell(gray["loss"]), number_cell(fmt_value(gray.get(f"test_{m}_mean")), None)]
    foot += [blank] * (2 + len(STATISTICS)) + [number_cell(fmt_value(gray.get(f"test_{h}_mean")), None) for h in others] + [blank] * 2
    return {"id": "ranking-table", "columns": [{"title": t, "tip": tip} for t, tip in columns], "rows": rows, "foot": [{"cells": foot}]}


def figures(out: Path, names: list[str]) -> list[dict[str, str]]:
    """The figures among `names` that exist in `out`, each with its title (the one it was saved with, else its name's)."""
    shown = []
    for name in dict.fromkeys(names):
        path = out / name
        if path.is_file():
            with Image.open(path) as image:
                title = image.text.get("Title", TITLES.get(name, f"Optuna: {name}"))
            shown.append({"name": name, "title": title.replace("\n", " "), "src": data_uri(path)})
    return shown


def pareto_table(out: Path, runs: Runs, uri: str) -> dict[str, Any] | None:
    """The trials on a multi-objective search's front (from `pareto.csv`), each linked to its run; None for other experiments."""
    if not (out / "pareto.csv").is_file():
        return None
    table = pd.read_csv(out / "pareto.csv")
    front = table[table["pareto"]]
    objectives = [c for c in table.columns if c not in ("trial", "run_id", "pareto")]
    experiment_id, address = runs.cells["experiment_id"].iloc[0], tracking.ui_address(uri)
    rows = [
        {"key": f"trial-{r['trial']}", "baseline": False, "cells": [
            text_cell(f"trial-{r['trial']}", href=tracking.run_url(experiment_id, r["run_id"], address) if isinstance(r["run_id"], str) else None),
            *(number_cell(f"{r[o]:.4f}", r[o]) for o in objectives)]}
        for _, r in front.sort_values(objectives[0]).iterrows()
    ]  # fmt: skip
    return {"id": "pareto-table", "columns": [{"title": t, "tip": ""} for t in ("trial", *objectives)], "rows": rows, "foot": []}


def photo_size(photos: Photos) -> dict[str, Any]:
    """How wide the test photos are drawn, and whether they are enlarged (then pixelated, not blurred)."""
    first = photos.comparison.photos[0].images["truth"] if photos.comparison and photos.comparison.photos else None
    first = first or (photos.strip.images["truth"][0] if photos.strip and photos.strip.names else None)
    if first is None:
        return {"width": PHOTO_WIDTH[0], "pixelated": False}
    with Image.open(first) as image:
        width = image.width
    if width < PHOTO_WIDTH[0]:
        return {"width": width * math.ceil(PHOTO_WIDTH[0] / width), "pixelated": True}
    return {"width": min(width, PHOTO_WIDTH[1]), "pixelated": False}


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if math.isfinite(value) else None


def comparison_view(comparison: Comparison | None) -> dict[str, Any] | None:
    """The photo comparison with its images inlined and its values ready for photos.js."""
    if comparison is None:
        return None
    photos = [
        {"index": p.index, "name": p.name, "images": {k: data_uri(v) for k, v in p.images.items()}, "scores": {m: [finite(v) for v in vals] for m, vals in p.values.items()}}
        for p in comparison.photos
    ]
    metrics = list(comparison.photos[0].values) if comparison.photos else []
    return {"a": comparison.a, "b": comparison.b, "photos": photos, "metrics": metrics, "n_test": comparison.n_test, "each_end": min(EACH_END, max(1, math.ceil(len(photos) / 2)))}


def strip_view(strip: Strip | None) -> dict[str, Any] | None:
    """The strip with its images inlined."""
    if strip is None or not strip.cells:
        return None
    return {"cells": strip.cells, "names": strip.names, "images": {k: [data_uri(p) for p in v] for k, v in strip.images.items()}}


def page(template: str, title: str, command_line: str, uri: str, **context: Any) -> str:
    """A page of `template` with what every page has: style, sorting script, version, date, how it was made."""
    made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return TEMPLATES.get_template(template).render(
        title=title, command=command_line, ui_note=ui_note(uri), version=__version__, made=made, css=static("report.css"), sort_js=static("sort.js"), **context
    )


def write_report(report: Report, runs: Runs, photos: Photos, figure_names: list[str]) -> Path:
    """report.html of one experiment into its report's folder; returns its path."""
    uri = mlflow.get_tracking_uri()
    links = run_links(runs, uri)
    cells = report.table[report.table["cell"] != GRAY].set_index("cell")
    html = page(
        "report.html.j2", f"{report.experiment}: report on test {report.metric}", command(report), uri,
        metric=report.metric, direction=direction(report.metric), n_images=report.n_images, baseline=report.baseline, baseline_how=report.baseline_how,
        correction=report.correction, links=links, labels={c: label(r) for c, r in cells.iterrows()},
        ranks={c: fmt_value(r["rank"]) for c, r in cells.iterrows()}, ranking=ranking(report, links), tests_note=tests_note(report),
        failed=[f"{name}: {reason}" for name, reason in report.failed], pruned=report.pruned, problems=photos.problems,
        comparison=comparison_view(photos.comparison), strip=strip_view(photos.strip), size=photo_size(photos),
        figures=figures(report.out_dir, figure_names), pareto=pareto_table(report.out_dir, runs, uri), photos_js=static("photos.js"),
    )  # fmt: skip
    path = report.out_dir / NAME
    path.write_text(html)
    return path


def write_multi(report: MultiReport, links: Mapping[tuple[str, str], str]) -> Path:
    """report.html of a report across experiments into its folder; returns its path."""
    m, uri = report.metric, mlflow.get_tracking_uri()
    compared = shown_in("multi")
    columns = ["experiment", "cell", "configuration", "rank", f"test {m}", "N", *(s.header for s in compared), "not tested because"]
    rows = []
    for _, row in report.table.iterrows():
        key = (row["experiment"], row["cell"])
        cells = [text_cell(row["experiment"]), text_cell(row["cell"], href=links.get(key), badge="baseline" if row["baseline"] else None)]
        cells += [text_cell(label(row)), number_cell(fmt_value(row["rank"]), row["rank"]), number_cell(mean_std(row, f"test_{m}"), row[f"test_{m}_mean"])]
        cells += [number_cell(fmt_value(row["n_folds"]), row["n_folds"]), *(number_cell(s.cell(row), row.get(s.columns[0])) for s in compared)]
        rows.append({"key": "/".join(key), "baseline": bool(row["baseline"]), "cells": [*cells, text_cell(row["not_tested"], long=True)]})
    table = {"id": "ranking-table", "columns": [{"title": t, "tip": ""} for t in columns], "rows": rows, "foot": []}
    args = ["colorbench", "report", *(a for e in report.experiments for a in ("--experiment", e)), "--tracking-uri", uri]
    args += ["--out", str(report.out_dir), "--metric", m, "--correction", report.correction]
    note = (
        "Cells with the same id have the same resolved config in different experiments. Each row is tested against the baseline (the "
        "best row) only where both were scored on the same test set (same data fingerprint and test images); the last column says why not."
    )
    html = page(
        "multi.html.j2", f"{' + '.join(report.experiments)}: test {m} across experiments", shlex.join(args), uri,
        experiments=report.experiments, metric=m, direction=direction(m), correction=report.correction, ranking=table, tests_note=note,
    )  # fmt: skip
    path = report.out_dir / NAME
    path.write_text(html)
    return path
