"""One table per extension point: a metric is one `METRICS` entry, a comparison statistic one `STATISTICS` entry, and every place
that lists, optimises, ranks or renders them reads that entry. Also: the package's import graph has no cycle."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grimp
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_GRID

from colorbench import cli
from colorbench.metrics import METRICS, Metric
from colorbench.report import build_multi_report, build_report, terminal_rows
from colorbench.report.comparisons import STATISTICS, Statistic
from colorbench.report.text import fmt_value
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.search.space import ObjectiveConfig, objective_choices

AB_MAX = Metric("ab_max", "lower", "largest per-pixel ab error of an image", per_image=lambda b: b.sq_err.flatten(1).amax(1).sqrt(), rope=1.0)
MEDIAN_DIFF = Statistic(
    ("median_diff",), "images", "median Δ (images)", lambda row: fmt_value(row.get("median_diff")),
    compute=lambda pair: {"median_diff": float(np.median(pair.images[0] - pair.images[1]))},
    shown=frozenset({"markdown", "terminal", "multi"}), phrase=lambda row: f"median Δ = {row['median_diff']:+.3f}",
)  # fmt: skip


@contextmanager
def registered(metric: Metric, statistic: Statistic) -> Iterator[None]:
    """`metric` in the metric table and `statistic` in the comparison table for the block, each one entry, gone after it."""
    METRICS.add(metric)
    STATISTICS.append(statistic)
    try:
        yield
    finally:
        METRICS.remove(metric.name)
        STATISTICS.remove(statistic)


def per_image(uri: str, experiment: str, metric: str, tmp_path: Path) -> dict[str, np.ndarray]:
    """Each cell's per-image `metric` from its (one) fold run's test_per_image.csv, read with MLflow directly."""
    mlflow.set_tracking_uri(uri)
    folds = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`colorbench.role` = 'fold'")
    out = {}
    for _, fold in folds.iterrows():
        path = mlflow.artifacts.download_artifacts(run_id=fold["run_id"], artifact_path="test_per_image.csv", dst_path=str(tmp_path / fold["run_id"]))
        out[fold["tags.colorbench.cell_id"]] = pd.read_csv(path)[metric].to_numpy(float)
    return out


def test_a_metric_and_a_comparison_statistic_are_one_entry_each(tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = copy.deepcopy(TINY_GRID) | {"experiment": "ext-a"}
    grid["train"]["epochs"] = 1
    grid["grid"] = {"backbone": ["resnet18-6", "resnet18-7"], "loss": ["mse"], "splitter": [{"name": "holdout", "val_fraction": 0.3}]}
    with registered(AB_MAX, MEDIAN_DIFF):
        assert cli.main(["list"]) == 0
        assert "ab_max" in capsys.readouterr().out  # listed with the other metrics
        assert "val_ab_max" in objective_choices() and ObjectiveConfig(metric="val_ab_max").direction == "minimize"  # a search objective
        run_grid(parse_experiment(grid), tracking_uri)
        run_grid(parse_experiment(grid | {"experiment": "ext-b", "grid": grid["grid"] | {"backbone": ["resnet18-6"]}}), tracking_uri)
        report = build_report("ext-a", tmp_path / "a", metric="ab_max", tracking_uri=tracking_uri)
        across = build_multi_report(["ext-a", "ext-b"], tmp_path / "ab", metric="ab_max", tracking_uri=tracking_uri)
        terminal = terminal_rows(report)
    values = per_image(tracking_uri, "ext-a", "ab_max", tmp_path)

    cells = report.table.set_index("cell").drop(index="gray baseline")
    assert list(cells.sort_values("rank")["test_ab_max_mean"]) == sorted(cells["test_ab_max_mean"])  # ranked lower-is-better
    other = cells.index[~cells["baseline"].astype(bool)][0]
    expected = float(np.median(values[other] - values[report.baseline]))
    assert pd.read_csv(tmp_path / "a" / "table.csv").set_index("cell").loc[other, "median_diff"] == pytest.approx(expected)  # CSV
    assert f"median Δ = {expected:+.3f}" in (tmp_path / "a" / "summary.md").read_text()  # summary.md
    assert "median Δ (images)" in (tmp_path / "a" / "table.md").read_text()  # table.md
    header, rows = terminal
    column = header.index("median Δ (images)")
    assert {row[0]: row[column] for row in rows}[other] == f"{expected:.3f}"  # the terminal table
    assert "median_diff" in across.table and "median Δ (images)" in (tmp_path / "ab" / "summary.md").read_text()  # across experiments
    assert across.table["median_diff"].notna().any()
    assert "ab_max" not in METRICS and MEDIAN_DIFF not in STATISTICS  # gone again


def test_the_import_graph_of_colorbench_has_no_cycle() -> None:
    """Every import of the package (TYPE_CHECKING blocks aside, imports inside functions included) as a graph: it has no circle,
    so any module can be imported first and the layers contract's picture is the whole truth."""
    graph = grimp.build_graph("colorbench", exclude_type_checking_imports=True)
    edges = [(module, imported) for module in graph.modules for imported in graph.find_modules_directly_imported_by(module)]
    assert len(edges) > 100  # the graph was read
    circles = [(a, *chain) for a, b in edges if (chain := graph.find_shortest_chain(importer=b, imported=a))]  # a -> b -> ... -> a
    assert circles == []
