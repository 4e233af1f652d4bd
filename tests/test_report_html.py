"""report.html on a real tiny grid: self-contained, the ranking linked to the runs, the photo comparison sorted by the stored
per-image values and drawn from each cell's deployed model, the photos cached, the report logged on one report run and linked from
the experiment's description. The page in a real browser: tests/test_report_browser.py."""

from __future__ import annotations

import base64
import copy
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_GRID, run_grids_in_store
from mlflow.tracking import MlflowClient
from PIL import Image

from colorbench import tracking
from colorbench.cli import main
from colorbench.colorize import gray_image, load
from colorbench.errors import ConfigError
from colorbench.report import GRAY, Report, build_report
from colorbench.report.comparisons import STATISTICS

EXPERIMENT = "tiny-html"


class Page(HTMLParser):
    """Every start tag of a page with its attributes, and the text of each table cell."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def all(self, tag: str, **has: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and all(k in a and (v is None or a[k] == v) for k, v in has.items())]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> str:
    """Four real cells (2 backbones x holdout / 2-fold, one epoch at 32 px) on the bundled photos."""
    grid = copy.deepcopy(TINY_GRID) | {"experiment": EXPERIMENT}
    grid["train"]["epochs"] = 1
    grid["grid"]["backbone"] = ["resnet18-6", "resnet18-7"]
    return run_grids_in_store(tmp_path_factory.mktemp("html-store"), empty_store, grid)[0]


@pytest.fixture(scope="module")
def report(store: str, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return build_report(EXPERIMENT, tmp_path_factory.mktemp("html"), tracking_uri=store)


def cell_runs(uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`colorbench.role` = 'cell'")
    return runs.set_index("tags.colorbench.cell_id")


def children_per_image(uri: str, cell: str, tmp: Path) -> pd.DataFrame:
    """The cell's per-image test values, mean over its fold runs, read straight from their artifacts."""
    run_id = cell_runs(uri).loc[cell, "run_id"]
    folds = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`colorbench.role` = 'fold'")
    frames = [pd.read_csv(mlflow.artifacts.download_artifacts(run_id=r, artifact_path="test_per_image.csv", dst_path=str(tmp / r))) for r in folds["run_id"]]
    return pd.concat(frames).groupby(level=0).mean(numeric_only=True)


def png(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def photo_rows(page: Page) -> list[tuple[dict[str, str], list[dict[str, str]]]]:
    """Each row of the photo comparison (its attributes) with its images (gray, A, B, truth), in page order."""
    rows, current = [], None
    for tag, attrs in page.tags:
        if tag == "tr" and "data-scores" in attrs:
            current = (attrs, [])
            rows.append(current)
        elif tag == "tr":
            current = None
        elif tag == "img" and current is not None:
            current[1].append(attrs)
    return rows


def test_the_page_is_self_contained_and_ranks_every_cell_linked_to_its_run(report: Report, store: str) -> None:
    text = (report.out_dir / "report.html").read_text()
    page = Page(text)
    assert not page.all("link") and not [a for a in page.all("script") if "src" in a] and not page.all("iframe")
    assert all(a["src"].startswith("data:image/png;base64,") for a in page.all("img")) and len(page.all("img")) > 20
    assert "default-src 'none'" in page.all("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    cells = report.table.loc[report.table["cell"] != GRAY, "cell"].tolist()
    assert [a["data-cell"] for a in page.all("tr") if "data-cell" in a] == cells  # rank order
    runs, eid = cell_runs(store), mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    links = {a["href"] for a in page.all("a") if "/runs/" in a.get("href", "")}
    assert {f"http://127.0.0.1:5000/#/experiments/{eid}/runs/{runs.loc[c, 'run_id']}" for c in cells} <= links
    assert all(href.startswith(("#", "http://127.0.0.1:5000/#/experiments/")) for href in (a["href"] for a in page.all("a")))
    assert f"mlflow ui --backend-store-uri {store}" in text  # where the links lead, said
    headers = text[text.index('id="ranking-table"') : text.index("</thead>", text.index('id="ranking-table"'))]
    assert all(f">{s.header}<".replace("&", "&amp;") in headers for s in STATISTICS)  # every declared statistic is a column


def default_pair(report: Report) -> tuple[str, str]:
    """The comparison's cells by default: the top cell (the runner-up when the baseline is the top cell) against the baseline."""
    cells = report.table.loc[report.table["cell"] != GRAY, "cell"].tolist()
    return (cells[1] if cells[0] == report.baseline else cells[0]), report.baseline


def test_the_photo_comparison_is_sorted_by_the_stored_per_image_difference(report: Report, store: str, tmp_path: Path) -> None:
    table = report.table[report.table["cell"] != GRAY]
    a, b = default_pair(report)
    assert f"A <code>{a}</code>" in (report.out_dir / "report.html").read_text()
    page = Page((report.out_dir / "report.html").read_text())
    rows = photo_rows(page)
    values_a, values_b = children_per_image(store, a, tmp_path), children_per_image(store, b, tmp_path)
    advantage = (values_a["psnr"] - values_b["psnr"]).to_numpy()  # psnr: higher is better
    assert len(rows) == len(advantage) == report.n_images  # 6 test photos: every one shown
    indices = [int(attrs["data-index"]) for attrs, _ in rows]
    assert indices == list(np.argsort(-advantage, kind="stable"))
    for index, (attrs, _) in zip(indices, rows, strict=True):
        scores = json.loads(attrs["data-scores"])
        assert scores["psnr"] == pytest.approx([values_a["psnr"][index], values_b["psnr"][index], advantage[index]])
        assert scores["ab_rmse"][2] == pytest.approx(values_b["ab_rmse"][index] - values_a["ab_rmse"][index])  # lower is better
    assert advantage.mean() == pytest.approx(table.set_index("cell").loc[a, "diff_images"])  # the table's Δ over images for cell A


def test_the_photos_are_each_cells_deployed_model_on_the_test_photos_and_are_reused(report: Report, store: str, tmp_path: Path) -> None:
    pair = default_pair(report)
    runs = cell_runs(store)
    fold = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`colorbench.role` = 'fold'")["run_id"].iloc[0]
    with np.load(mlflow.artifacts.download_artifacts(run_id=fold, artifact_path="test_samples.npz", dst_path=str(tmp_path))) as npz:
        truths = npz["truth"]  # the first test images, as training stored them
    models = [load(runs.loc[c, "run_id"], "cpu") for c in pair]
    for attrs, images in photo_rows(Page((report.out_dir / "report.html").read_text())):
        gray, made_a, made_b, truth = (png(i["src"]) for i in images)
        np.testing.assert_array_equal(truth, truths[int(attrs["data-index"])])
        np.testing.assert_array_equal(gray, gray_image(truth))  # its lightness alone, what the models see
        own = [np.abs(made.astype(int) - model.colorize(truth)) for model, made in zip(models, (made_a, made_b), strict=True)]
        other = [np.abs(made.astype(int) - model.colorize(truth)) for model, made in zip(models, (made_b, made_a), strict=True)]
        assert all(d.max() <= 1 for d in own)  # the same model on the same photo (a batch of other size may round a value the other way)
        assert all(d.mean() > 3 * o.mean() for d, o in zip(other, own, strict=True))  # and not the other cell's model
    cached = report.out_dir / "report_photos"
    assert {p.name for p in cached.iterdir()} >= {runs.loc[c, f"tags.{tracking.TAG_DEPLOYED}"] for c in pair}
    before = {p: p.stat().st_mtime_ns for p in cached.rglob("*.png")}
    build_report(EXPERIMENT, report.out_dir, tracking_uri=store)
    assert {p: p.stat().st_mtime_ns for p in cached.rglob("*.png")} == before  # reused, none made again


def test_the_report_is_logged_on_one_report_run_linked_from_the_experiment_description(report: Report, store: str, tmp_path: Path) -> None:
    client, eid = MlflowClient(store), mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    client.set_experiment_tag(eid, tracking.TAG_NOTE, client.get_experiment(eid).tags[tracking.TAG_NOTE] + "\n\nOur own notes.")
    again = build_report(EXPERIMENT, tmp_path / "again", tracking_uri=store)
    assert len(again.table) == len(report.table)  # the report run is no cell
    reports = client.search_runs([eid], "tags.`colorbench.role` = 'report'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    run_id = reports[0].info.run_id
    logged = {f.path for f in client.list_artifacts(run_id)}
    assert {"report.html", "summary.md", "table.csv", "table.md", "cd.png", "bar.png", "validation.csv"} <= logged
    assert Path(tracking.download(run_id, "report.html", tmp_path / "logged")).read_text() == (tmp_path / "again" / "report.html").read_text()
    note = client.get_experiment(eid).tags[tracking.TAG_NOTE]
    assert note.count(f"[report.html](/#/experiments/{eid}/runs/{run_id}/artifactPath/report.html)") == 1 and "Our own notes." in note
    assert again.published == f"http://127.0.0.1:5000/#/experiments/{eid}/runs/{run_id}/artifactPath/report.html"


def test_compare_names_two_cells_and_top_keeps_every_cell_in_the_tables(report: Report, store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cells = report.table.loc[report.table["cell"] != GRAY, "cell"].tolist()
    out = tmp_path / "compared"
    args = ["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", str(out), "--baseline", cells[2][:7], "--top", "1"]
    assert main([*args, "--compare", cells[3][:5], cells[0][:5]]) == 0
    assert "Logged on the experiment's report run: http://127.0.0.1:5000/#/experiments/" in capsys.readouterr().err
    text = (out / "report.html").read_text()
    rows = photo_rows(Page(text))
    assert f"A <code>{cells[3]}</code>" in text and f"B <code>{cells[0]}</code>" in text and len(rows) == 6
    assert f"--compare {cells[3]} {cells[0]}" in text and "--top 1" in text  # how it was made, reproducibly
    assert len(pd.read_csv(out / "table.csv")) == len(cells) + 1  # the tables keep every cell
    for name in ("bar.png", "folds.png", "cd.png"):
        with Image.open(out / name) as image:
            assert "top 1 of 4 cells and the baseline" in image.text["Title"]
    with pytest.raises(ConfigError, match="--compare .* names cell .* twice"):
        build_report(EXPERIMENT, tmp_path / "x", tracking_uri=store, compare=[cells[0][:6], cells[0][:5]])
    with pytest.raises(ConfigError, match="--compare 'zz' matches no finished cell; cells: .*; name one with --compare"):
        build_report(EXPERIMENT, tmp_path / "x", tracking_uri=store, compare=["zz", cells[0]])
    with pytest.raises(ConfigError, match="--top 0"):
        build_report(EXPERIMENT, tmp_path / "x", tracking_uri=store, top=0)


def test_photos_that_cannot_be_made_are_named_and_the_rest_is_written(store: str, tmp_path: Path) -> None:
    copy_db = tmp_path / "mlflow.db"
    shutil.copy(store.removeprefix("sqlite:///"), copy_db)
    uri = f"sqlite:///{copy_db}"
    runs = cell_runs(uri)
    for run_id in runs["run_id"]:
        MlflowClient(uri).set_tag(run_id, tracking.TAG_FINGERPRINT, "0123456789abcdef")  # as if the photos changed since training
    report = build_report(EXPERIMENT, tmp_path / "out", tracking_uri=uri)
    assert len(report.notices) == 1 and "changed since it was trained" in report.notices[0]
    text = (tmp_path / "out" / "report.html").read_text()
    assert "changed since it was trained" in text and 'id="photo-rows"' not in text and 'id="ranking-table"' in text


def test_a_read_only_store_gets_the_report_on_disk_and_says_it_was_not_logged(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow makes the "file:..." URI's folder as a relative path: keep it out of the checkout
    read_only = f"sqlite:///file:{store.removeprefix('sqlite:///')}?mode=ro&uri=true"
    report = build_report(EXPERIMENT, tmp_path / "out", tracking_uri=read_only)
    assert report.published == "" and [n for n in report.notices if "not logged to MLflow" in n and "readonly database" in n]
    assert 'id="photo-rows"' in (tmp_path / "out" / "report.html").read_text()


def test_run_links_lead_to_the_server_or_to_where_mlflow_ui_serves_a_local_store() -> None:
    assert tracking.ui_address("https://mlflow.example.org/") == "https://mlflow.example.org"
    assert tracking.ui_address("sqlite:///mlflow.db") == tracking.ui_address("postgresql://u@db/mlflow") == "http://127.0.0.1:5000"
    assert tracking.run_url("3", "abc", "http://h:5000") == "http://h:5000/#/experiments/3/runs/abc"
    assert tracking.run_url("3", "abc", "", artifact="report.html") == "/#/experiments/3/runs/abc/artifactPath/report.html"
